"""Online GRPO from rankings: the reward model learned from them (listwise and Bradley-Terry), the reward function
`trl.GRPOTrainer` calls, `recipes/grpo.py --mode online`, and a learning test on the toy task."""

import math

import pytest
import torch
from _recipe_utils import REPO_ROOT, load_recipe
from datasets import Dataset
from torch.testing import assert_close
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardConfig, RewardTrainer

from trl_ext.ranked_grpo import (
    PlackettLuceRewardTrainer,
    RewardModelScorer,
    group_implicit_rewards,
    kendall_tau,
    layout_group_index,
    ranks_across_processes,
    ranks_within_groups,
)
from trl_ext.tokenization import encode_sequence
from trl_ext.toy.synthetic import ToyTask, quality

CPU = dict(use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none", save_strategy="no", seed=0)


@pytest.fixture(autouse=True)
def one_thread():
    # many tiny ops (generation with a 0.5M-parameter model): one thread beats two fighting over a shared CPU
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def reward_model(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# --- ranks within groups ---------------------------------------------------------------------------------------
def test_ranks_within_groups_by_hand():
    scores = torch.tensor([0.3, 9.0, -2.0, 0.3, 5.0, 1.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    # group a: 9.0 first, the two 0.3 share positions 2 and 3 (2.5 each), -2.0 last -> (4 - position) / 3;
    # group b: positions 1, 2 -> 1, 0
    assert_close(ranks_within_groups(scores, groups), torch.tensor([0.5, 1.0, 0.0, 0.5, 1.0, 0.0]))


def test_groups_follow_trl_layout_not_prompt_text():
    # two groups of the same prompt next to each other stay two groups of num_generations
    assert layout_group_index(8, 4).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="num_generations=4"):
        layout_group_index(6, 4)


def test_a_group_split_across_processes_is_ranked_whole():
    # 2 processes, per-device batch 2, num_generations 4: one group of 4 straddles the two processes. Ranked per
    # process, [7.18, 6.45] and [13.02, 11.35] would each become [1, 0].
    local = {0: torch.tensor([7.18, 6.45]), 1: torch.tensor([13.02, 11.35])}
    everything = torch.cat([local[0], local[1]])
    for rank, expected in ((0, [1 / 3, 0.0]), (1, [1.0, 2 / 3])):
        out = ranks_across_processes(local[rank], 4, gather=lambda t: everything, process_index=rank)
        assert_close(out, torch.tensor(expected))


def test_scorer_uses_the_trainers_group_size_not_prompt_runs(reward_model):
    model, tokenizer = reward_model
    scorer = RewardModelScorer(model, tokenizer, rank_within_group=True, num_generations=2)
    prompts = ["same prompt"] * 4  # two groups of 2 of one prompt: not one group of 4
    out = scorer(prompts, ["a", "bb", "ccc", "dddd"])
    assert sorted(out[:2]) == [0.0, 1.0] and sorted(out[2:]) == [0.0, 1.0]
    with pytest.raises(ValueError, match="group size"):
        RewardModelScorer(model, tokenizer, rank_within_group=True)(prompts, ["a", "b", "c", "d"])


def test_ranks_do_not_depend_on_the_reward_scale():
    scores = torch.tensor([0.1, -3.0, 2.0, 0.5])
    groups = torch.zeros(4, dtype=torch.long)
    assert_close(ranks_within_groups(scores, groups), ranks_within_groups(torch.exp(10 * scores), groups))


# --- the reward model sees what RewardTrainer trained on -------------------------------------------------------
@pytest.mark.parametrize("conversational", [False, True])
def test_reward_inputs_are_what_reward_trainer_trains_on(reward_model, tmp_path, conversational):
    model, tokenizer = reward_model
    pair = ToyTask(conversational=conversational).rows("pairs", 1)[0]
    trainer = RewardTrainer(model, args=RewardConfig(str(tmp_path), **CPU), train_dataset=Dataset.from_list([pair]),
                            processing_class=tokenizer)  # fmt: skip
    assert encode_sequence(tokenizer, pair["prompt"], pair["chosen"]) == trainer.train_dataset[0]["chosen_ids"]
    assert trainer.train_dataset[0]["chosen_ids"][-1] == tokenizer.eos_token_id  # the score is read at EOS

    batch = trainer.data_collator([trainer.train_dataset[0]])
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    scorer = RewardModelScorer(model, tokenizer)
    scores = scorer([pair["prompt"]] * 2, [pair["chosen"], pair["rejected"]])
    assert_close(torch.tensor(scores), expected, rtol=1e-5, atol=1e-5)


def test_scorer_ranks_within_each_group_of_completions(reward_model):
    model, tokenizer = reward_model
    scorer = RewardModelScorer(model, tokenizer, rank_within_group=True, num_generations=4)
    rewards = scorer(["p1"] * 4 + ["p2"] * 4, [" sun", " mud", " owl sea", " rot"] * 2)
    scores = scorer.scores(["p1"] * 4 + ["p2"] * 4, [" sun", " mud", " owl sea", " rot"] * 2)
    for group in (slice(0, 4), slice(4, 8)):  # each group's best gets 1, its worst 0, in the reward model's order
        assert sorted(rewards[group]) == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
        assert torch.equal(torch.tensor(rewards[group]).argsort(), scores[group].argsort())
    assert scorer.__name__ == "reward_model_ranks"


# --- the listwise reward model ---------------------------------------------------------------------------------
def test_plackett_luce_reward_loss_with_pairs_equals_reward_trainers(reward_model, tmp_path):
    model, tokenizer = reward_model
    torch.manual_seed(0)
    with torch.no_grad():
        model.score.weight.normal_()  # a head that scores something, so the loss is not log 2
    pairs = ToyTask(seed=2).rows("pairs", 6)
    ranked = [{"prompt": p["prompt"], "responses": [p["chosen"], p["rejected"]], "ranking": [1, 2]} for p in pairs]
    args = RewardConfig(str(tmp_path), center_rewards_coefficient=0.01, **CPU)
    bt = RewardTrainer(model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer)
    pl = PlackettLuceRewardTrainer(
        model, args=args, train_dataset=Dataset.from_list(ranked), processing_class=tokenizer
    )
    model.eval()
    with torch.no_grad():
        bt_loss = bt.compute_loss(model, bt.data_collator([bt.train_dataset[i] for i in range(6)]))
        pl_loss = pl.compute_loss(model, pl.data_collator([pl.train_dataset[i] for i in range(6)]))
    assert abs(bt_loss.item() - math.log(2)) > 1e-2
    assert_close(pl_loss, bt_loss, rtol=1e-6, atol=1e-6)


def test_plackett_luce_reward_model_leaves_out_responses_over_max_length(reward_model, tmp_path):
    model, tokenizer = reward_model
    rows = [{"prompt": "p", "responses": ["short", "x" * 50, "mid"], "ranking": [1, 2, 3]},
            {"prompt": "q", "responses": ["a", "y" * 50], "ranking": [1, 2]}]  # fmt: skip
    trainer = PlackettLuceRewardTrainer(model, args=RewardConfig(str(tmp_path), max_length=20, **CPU),
                                        train_dataset=Dataset.from_list(rows), processing_class=tokenizer)  # fmt: skip
    assert len(trainer.train_dataset) == 1 and trainer.train_dataset[0]["ranking"] == [1, 3]


# --- the recipe, online ----------------------------------------------------------------------------------------
def _online(tmp_path, *flags):
    return ["--config", "recipes/configs/grpo/tiny-cpu-online.yaml", "--output_dir", str(tmp_path / "out"),
            "--logging_steps", "1", *flags]  # fmt: skip


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--config", "recipes/configs/grpo/tiny-cpu.yaml", "--mode", "online"], "set num_generations"),
        (["--config", "recipes/configs/grpo/tiny-cpu-online.yaml", "--loss_type", "plackett_luce"], "offline only"),
        (["--config", "recipes/configs/grpo/tiny-cpu-online.yaml", "--mode", "sideways"], "mode must be one of"),
    ],
)
def test_online_recipe_refuses_what_it_cannot_run(tmp_path, monkeypatch, flags, match):
    monkeypatch.chdir(REPO_ROOT)
    with pytest.raises(ValueError, match=match):
        load_recipe("grpo").main([*flags, "--output_dir", str(tmp_path)])


@pytest.mark.slow
def test_online_recipe_trains_a_listwise_reward_model_then_grpo(tmp_path, monkeypatch, tiny_model_path):
    from trl_ext.ranked_grpo import plackett_luce_reward

    monkeypatch.chdir(REPO_ROOT)
    shared_calls = []
    scores = plackett_luce_reward.shared_prefix_scores
    monkeypatch.setattr(plackett_luce_reward, "shared_prefix_scores",
                        lambda *a, **k: shared_calls.append(1) or scores(*a, **k))  # fmt: skip
    out = load_recipe("grpo").main(_online(tmp_path, "--max_steps", "2", "--rank_within_group", "true",
                                           "--max_train_samples", "32", "--prefix_sharing", "true"))  # fmt: skip
    assert shared_calls  # the reward model trained with each group's prompt computed once
    assert (out / "adapter_model.safetensors").exists()
    assert (out / "reward_model" / "adapter_model.safetensors").exists()  # reusable with --reward_model_path
    card = (out / "README.md").read_text()
    assert "Group Relative Policy Optimization" in card and "tiny-cpu-online.yaml" in card
    assert "| num_generations | 4 |" in card


@pytest.mark.slow
def test_online_recipe_with_bradley_terry_then_reusing_the_reward_model(tmp_path, monkeypatch, tiny_model_path):
    monkeypatch.chdir(REPO_ROOT)
    recipe = load_recipe("grpo")
    first = recipe.main(_online(tmp_path, "--max_steps", "1", "--reward_loss", "bradley_terry",
                                "--max_train_samples", "16"))  # fmt: skip
    again = _online(tmp_path / "again", "--max_steps", "1", "--reward_model_path", str(first / "reward_model"))
    out = recipe.main(again)
    assert (out / "adapter_model.safetensors").exists() and not (out / "reward_model").exists()


# --- does it learn (slow): SFT warm start -> reward model from rankings -> online GRPO --------------------------
HELD_OUT = ToyTask(seed=0, conversational=True).rows("ranked", 32, split="test")


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory, tiny_model_path):
    """The tiny model after one epoch of SFT on every ranked response (mixed quality): samples are words, with a
    mean quality of about 0.55, room to improve."""
    from trl import SFTConfig, SFTTrainer

    out = tmp_path_factory.mktemp("sft")
    rows = [{"prompt": r["prompt"], "completion": response}
            for r in ToyTask(seed=0, conversational=True).rows("ranked", 512) for response in r["responses"]]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    args = SFTConfig(str(out), per_device_train_batch_size=16, learning_rate=2e-3, lr_scheduler_type="constant",
                     max_length=64, **CPU)  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    trainer = SFTTrainer(AutoModelForCausalLM.from_pretrained(tiny_model_path), args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer)  # fmt: skip
    trainer.train()
    torch.set_num_threads(threads)
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def _sample_quality(model, tokenizer, samples_per_prompt: int = 8) -> float:
    """Mean true quality of sampled completions of the held-out prompts (fixed seed). Several per prompt: with one,
    float noise between machines moved the SFT model's estimate from 0.60 to 0.69."""
    model.eval()
    ids = tokenizer.apply_chat_template([r["prompt"] for r in HELD_OUT], add_generation_prompt=True, return_dict=True)
    tokenizer.padding_side = "left"
    batch = tokenizer.pad({"input_ids": ids["input_ids"]}, return_tensors="pt")
    tokenizer.padding_side = "right"
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        out = model.generate(**batch, max_new_tokens=24, do_sample=True, num_return_sequences=samples_per_prompt,
                             pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return sum(map(quality, texts)) / len(texts)


def _heldout_tau(model, tokenizer) -> float:
    rewards = group_implicit_rewards(model, tokenizer, HELD_OUT)
    taus = [kendall_tau(r, [quality(m[0]["content"]) for m in row["responses"]]) for r, row in zip(rewards, HELD_OUT)]
    return sum(taus) / len(taus)


@pytest.mark.slow
def test_online_grpo_learns_from_a_reward_model_learned_from_rankings(sft_model, tmp_path, capsys):
    from peft import PeftModel

    data = ToyTask(seed=0, conversational=True).write_jsonl("ranked", 512, tmp_path / "ranked.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(sft_model)
    before = _sample_quality(AutoModelForCausalLM.from_pretrained(sft_model), tokenizer)
    out = load_recipe("grpo").main(
        ["--config", str(REPO_ROOT / "recipes/configs/grpo/tiny-cpu-online.yaml"), "--model_name_or_path",
         str(sft_model), "--dataset_path", str(data), "--output_dir", str(tmp_path / "out"), "--max_steps", "40"]
    )  # fmt: skip
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sft_model), str(out))
    after, tau = _sample_quality(policy, tokenizer), _heldout_tau(policy, tokenizer)
    with capsys.disabled():
        print(f"\nonline GRPO (Plackett-Luce reward model): held-out sample quality {before:.3f} -> {after:.3f}; "
              f"held-out Kendall tau of implicit rewards vs true quality 0 -> {tau:.3f}")  # fmt: skip
    # measured: quality 0.55 -> 0.86, tau 0 -> 0.56 (the adapter starts at zero: every implicit reward is 0)
    assert after > before + 0.15
    assert tau > 0.3


def test_reward_config_inherits_the_runs_settings_but_not_its_schedule(tmp_path):
    from trl_ext import RankedGRPOConfig
    from trl_ext.ranked_grpo import RankedRewardArguments, reward_config

    run = RankedGRPOConfig(str(tmp_path / "grpo"), mode="online", num_generations=4, per_device_train_batch_size=4,
                           gradient_accumulation_steps=3, optim="adamw_torch", lr_scheduler_type="cosine",
                           warmup_steps=7, max_steps=50, learning_rate=5e-6, logging_steps=3, **{**CPU, "seed": 11})  # fmt: skip
    reward = RankedRewardArguments(reward_learning_rate=2e-4, reward_num_train_epochs=2, reward_max_length=64)
    rm = reward_config(run, reward, str(tmp_path / "rm"))
    # the run's own settings carry over ...
    assert (rm.gradient_accumulation_steps, rm.optim, rm.lr_scheduler_type, rm.warmup_steps, rm.seed) == (
        3, run.optim, run.lr_scheduler_type, 7, 11,
    )  # fmt: skip
    assert (rm.use_cpu, rm.bf16, rm.gradient_checkpointing, rm.logging_steps) == (True, False, False, 3)
    # ... but not where and how long it trains, nor what it saves
    assert (rm.output_dir, rm.learning_rate, rm.num_train_epochs, rm.max_steps) == (str(tmp_path / "rm"), 2e-4, 2, -1)
    assert (rm.per_device_train_batch_size, rm.max_length, rm.save_strategy) == (4, 64, "no")
