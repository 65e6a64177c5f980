"""RankedGRPOTrainer: config, tokenization, batching, the DPO limit case, num_iterations, training and learning."""

import copy
import math

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from torch.testing import assert_close
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer, GRPOConfig

from trl_ext import RankedGRPOConfig, RankedGRPOTrainer
from trl_ext.ranked_grpo import DataCollatorForRankedGroups, group_advantages, kendall_tau, tokenize_ranked_row
from trl_ext.toy.synthetic import ToyTask, quality

CPU = dict(use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none", save_strategy="no")


def _args(tmp_path, **kw) -> RankedGRPOConfig:
    defaults = dict(per_device_train_batch_size=4, learning_rate=1e-3, max_steps=2, logging_steps=1, seed=0)
    return RankedGRPOConfig(str(tmp_path / "out"), **{**CPU, **defaults, **kw})


def _lora() -> LoraConfig:
    return LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules="all-linear")


@pytest.fixture
def tiny(tiny_model_path):
    return AutoModelForCausalLM.from_pretrained(tiny_model_path), AutoTokenizer.from_pretrained(tiny_model_path)


# --- config ----------------------------------------------------------------------------------------------------
def test_offline_config_skips_the_generation_checks_and_online_config_keeps_them(tmp_path):
    # offline: a batch of 3 prompts is fine (GRPOConfig would ask it to be divisible by num_generations)
    args = RankedGRPOConfig(str(tmp_path), per_device_train_batch_size=3, use_cpu=True, scale_rewards=False)
    assert args.num_generations is None and args.scale_rewards == "none"
    assert args.bf16 is True and args.gradient_checkpointing is True  # TRL's base-config defaults still applied
    assert args.beta == 0.04 and args.loss_type == "dapo" and args.learning_rate == GRPOConfig.learning_rate
    # online: the same class is a GRPOConfig with all of its checks
    assert issubclass(RankedGRPOConfig, GRPOConfig)
    with pytest.raises(ValueError, match="divisible by num_generations"):
        RankedGRPOConfig(str(tmp_path), mode="online", per_device_train_batch_size=3, num_generations=4, use_cpu=True)
    online = RankedGRPOConfig(str(tmp_path), mode="online", per_device_train_batch_size=4, num_generations=4,
                              use_cpu=True)  # fmt: skip
    assert online.generation_batch_size == 4
    # the mode alone decides: num_generations offline, or online without it, is an error that says so
    with pytest.raises(ValueError, match="num_generations is for mode online"):
        RankedGRPOConfig(str(tmp_path), num_generations=4, use_cpu=True)
    with pytest.raises(ValueError, match="set num_generations"):
        RankedGRPOConfig(str(tmp_path), mode="online", use_cpu=True)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(ratio_against="policy"), "ratio_against"),
        (dict(scale_rewards="rank"), "scale_rewards"),
        (dict(num_iterations=0), "num_iterations"),
        # the offline losses' checks live in the config (every reader of it refuses), not only in the trainer
        (dict(loss_type="cispo"), "loss_type"),
        (dict(loss_type="plackett_luce", beta=0.0), "beta > 0"),
        (dict(loss_type="dr_grpo", max_completion_length=None), "max_completion_length"),
    ],
)
def test_config_refuses_bad_values(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        RankedGRPOConfig(str(tmp_path), use_cpu=True, **kw)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(loss_type="cispo"), "loss_type"),
        (dict(rank_reward="stars"), "rank_reward"),
    ],
)
def test_trainer_refuses_bad_settings(tiny, tmp_path, kw, match):
    model, tokenizer = tiny
    data = Dataset.from_list(ToyTask().rows("ranked", 4))
    with pytest.raises(ValueError, match=match):
        RankedGRPOTrainer(model, args=_args(tmp_path, **kw), train_dataset=data, processing_class=tokenizer)


# --- data ------------------------------------------------------------------------------------------------------
def test_plain_text_groups_are_tokenized_like_dpo_pairs(tiny):
    _, tokenizer = tiny
    row = {"prompt": "sky: one two", "responses": [" sun sea", " mud", " owl"], "ranking": [1, 3, 2]}
    out = tokenize_ranked_row(row, 0, tokenizer=tokenizer)
    assert out["prompt_ids"] == tokenizer("sky: one two")["input_ids"]
    for response, ids in zip(row["responses"], out["completion_ids"]):
        assert ids == tokenizer(response)["input_ids"] + [tokenizer.eos_token_id]  # EOS appended, as DPOTrainer
    assert out["ranks"] == [1, 3, 2]
    truncated = tokenize_ranked_row(row, 0, tokenizer=tokenizer, max_prompt_length=3, max_completion_length=2)
    assert truncated["prompt_ids"] == out["prompt_ids"][-3:]
    assert [len(c) for c in truncated["completion_ids"]] == [2, 2, 2]


def test_chat_groups_go_through_the_chat_template(tiny):
    _, tokenizer = tiny
    prompt = [{"role": "user", "content": "hi"}]
    row = {"prompt": prompt, "responses": [[{"role": "assistant", "content": "sun"}],
                                           [{"role": "assistant", "content": "mud"}]], "ranking": [1, 2]}  # fmt: skip
    out = tokenize_ranked_row(row, 0, tokenizer=tokenizer)
    assert out["prompt_ids"] == tokenizer.apply_chat_template(prompt, add_generation_prompt=True)["input_ids"]
    assert tokenizer.decode(out["completion_ids"][0]) == "sun</s>"


@pytest.mark.parametrize(
    "row, match",
    [
        ({"prompt": "p", "responses": ["a"], "ranking": [1]}, "at least 2"),
        ({"prompt": "p", "responses": ["a", "b"], "ranking": [1]}, "one rank per response"),
        ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1]}, "integer ranks >= 1"),
    ],
)
def test_bad_rows_are_named(tiny, row, match):
    with pytest.raises(ValueError, match=f"row 3: .*{match}"):
        tokenize_ranked_row(row, 2, tokenizer=tiny[1])


def test_collator_flattens_groups_of_different_sizes():
    collator = DataCollatorForRankedGroups(pad_token_id=0)
    batch = collator(
        [
            {"prompt_ids": [1, 2], "completion_ids": [[3], [4, 5]], "ranks": [2, 1]},
            {"prompt_ids": [6], "completion_ids": [[7], [8], [9, 9, 9]], "ranks": [1, 1, 3]},
        ]
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [1, 2, 4, 5], [6, 7, 0, 0], [6, 8, 0, 0], [6, 9, 9, 9]]
    assert batch["completion_mask"].tolist()[1] == [0, 0, 1, 1] and batch["attention_mask"].tolist()[2] == [1, 1, 0, 0]
    assert batch["group_index"].tolist() == [0, 0, 1, 1, 1]
    # ties [1, 1, 3] share positions 1 and 2 (1.5 each): (3 - 1.5) / 2 = 0.75, equal rewards
    assert_close(batch["rewards"], torch.tensor([0.0, 1.0, 0.75, 0.75, 0.0]))


def test_a_score_column_replaces_the_ranks(tiny, tmp_path):
    model, tokenizer = tiny
    rows = ToyTask().rows("ranked", 4)
    for row in rows:
        row["stars"] = [float(10 * quality(r)) for r in row["responses"]]
    trainer = RankedGRPOTrainer(
        model, args=_args(tmp_path, rank_reward="stars"), train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer, peft_config=_lora(),
    )  # fmt: skip
    batch = trainer.data_collator([trainer.train_dataset[0]])
    assert_close(batch["rewards"], torch.tensor(rows[0]["stars"]))


def test_batch_scaling_uses_one_std_over_the_accumulated_batch(tiny, tmp_path):
    model, tokenizer = tiny
    data = Dataset.from_list(ToyTask(n_responses=3).rows("ranked", 8))
    args = _args(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2, scale_rewards="batch")
    trainer = RankedGRPOTrainer(model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=_lora())
    batches, _ = trainer.get_batch_samples(iter(trainer.get_train_dataloader()), 2, trainer.args.device)
    rewards = torch.cat([b["rewards"] for b in batches])
    for b in batches:
        expected = group_advantages(b["rewards"], b["group_index"], "batch", 1e-4, batch_std=rewards.std())
        assert_close(b["advantages"], expected)
    assert batches[0]["window_tokens"] == sum(b["completion_mask"][:, 1:].sum() for b in batches)


# --- the DPO limit case ----------------------------------------------------------------------------------------
def test_plackett_luce_with_pairs_equals_trls_dpo_trainer(tiny_model_path, tmp_path):
    """Same model, reference and rows: RankedGRPOTrainer(loss_type="plackett_luce") on ranked pairs gives
    TRL's DPOTrainer(loss_type="sigmoid") loss on the same pairs."""
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    policy = copy.deepcopy(reference)
    with torch.no_grad():  # move the policy away from the reference, so the loss is not just log 2
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    pairs = ToyTask(seed=3).rows("pairs", 6)
    ranked = [{"prompt": r["prompt"], "responses": [r["chosen"], r["rejected"]], "ranking": [1, 2]} for r in pairs]
    beta = 0.1

    dpo = DPOTrainer(
        copy.deepcopy(policy), ref_model=copy.deepcopy(reference), train_dataset=Dataset.from_list(pairs),
        args=DPOConfig(str(tmp_path / "dpo"), beta=beta, loss_type=["sigmoid"], max_length=None, **CPU),
        processing_class=tokenizer,
    )  # fmt: skip
    ours = RankedGRPOTrainer(
        copy.deepcopy(policy), ref_model=copy.deepcopy(reference), train_dataset=Dataset.from_list(ranked),
        args=_args(tmp_path, loss_type="plackett_luce", beta=beta, max_prompt_length=None, max_completion_length=None),
        processing_class=tokenizer,
    )  # fmt: skip
    dpo.model.eval(), ours.model.eval()
    with torch.no_grad():
        dpo_loss = dpo.compute_loss(dpo.model, dpo.data_collator([dpo.train_dataset[i] for i in range(6)]))
        our_loss = ours.compute_loss(ours.model, ours.data_collator([ours.train_dataset[i] for i in range(6)]))
    assert abs(dpo_loss.item() - math.log(2)) > 1e-3
    assert_close(our_loss, dpo_loss, rtol=0, atol=1e-6)


# --- training (the tiny-model training tier: `make test-slow`) -------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "plackett_luce"])
def test_training_logs_and_changes_the_adapter(tiny, tmp_path, loss_type):
    model, tokenizer = tiny
    rows = ToyTask(n_responses=4).rows("ranked", 6) + ToyTask(n_responses=2, seed=1).rows("ranked", 2)  # 2 sizes
    trainer = RankedGRPOTrainer(
        model, args=_args(tmp_path, loss_type=loss_type, max_completion_length=64),
        train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=_lora(),
    )  # fmt: skip
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    logs = trainer.state.log_history
    assert all(math.isfinite(log["loss"]) for log in logs if "loss" in log)
    assert any("implicit_reward/kendall_tau" in log for log in logs)
    if loss_type != "plackett_luce":
        assert any("kl" in log and log["kl"] >= 0 for log in logs)
    changed = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any("lora_B" in n for n in changed)


@pytest.mark.slow
def test_implicit_rewards_start_at_zero_with_peft(tiny, tmp_path):
    model, tokenizer = tiny
    data = Dataset.from_list(ToyTask().rows("ranked", 4))
    trainer = RankedGRPOTrainer(model, args=_args(tmp_path), train_dataset=data, processing_class=tokenizer,
                                peft_config=_lora())  # fmt: skip
    assert trainer.group_implicit_rewards(data) == [[0.0] * 4] * 4  # the reference is the base with the adapter off
    trainer.train()
    assert any(abs(v) > 0 for row in trainer.group_implicit_rewards(data) for v in row)


@pytest.mark.slow
def test_num_iterations_reuses_each_batch_against_the_policy_that_started_it(tiny, tmp_path):
    model, tokenizer = tiny
    data = Dataset.from_list(ToyTask().rows("ranked", 8))
    seen = []

    class Recording(RankedGRPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.model.training:
                old = self._window_cache[inputs["micro_step"]][0]
                with torch.no_grad():
                    current = self._per_token_logps(model, inputs)
                seen.append((self.state.global_step, inputs["input_ids"].clone(), old, current))
            return loss

    args = _args(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2, num_iterations=2,
                 max_steps=-1, num_train_epochs=1, ratio_against="old")  # fmt: skip
    trainer = Recording(model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=_lora())
    trainer.train()
    assert trainer.state.global_step == 4  # 8 rows / 4 per optimizer step = 2 batches, each used twice
    assert [s[0] for s in seen] == [0, 0, 1, 1, 2, 2, 3, 3]
    for first, second in [(0, 2), (1, 3), (4, 6), (5, 7)]:
        assert torch.equal(seen[first][1], seen[second][1])  # the same micro-batch on the second pass
        assert seen[second][2] is seen[first][2]  # ratio taken against the log-probs of the first pass
        assert not torch.allclose(seen[second][3], seen[second][2])  # ... and the policy has moved since
    assert not torch.equal(seen[0][1], seen[4][1])


@pytest.mark.slow
def test_ratio_against_the_reference_trains(tiny, tmp_path):
    model, tokenizer = tiny
    data = Dataset.from_list(ToyTask().rows("ranked", 8))
    args = _args(tmp_path, ratio_against="reference", epsilon=0.01, beta=0.01, advantage_epsilon=1e-2, max_steps=3)
    trainer = RankedGRPOTrainer(model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=_lora())
    trainer.train()
    assert any(log.get("clip_ratio/region_mean", 0) > 0 for log in trainer.state.log_history)  # the trust region acts


# --- learning --------------------------------------------------------------------------------------------------
def _heldout_tau(trainer, rows) -> float:
    """Mean Kendall tau, over held-out groups, between implicit rewards and the true quality of the responses."""
    rewards = trainer.group_implicit_rewards(Dataset.from_list(rows))
    taus = [kendall_tau(r, [quality(x) for x in row["responses"]]) for r, row in zip(rewards, rows)]
    return sum(taus) / len(taus)


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["dapo", "plackett_luce"])
def test_offline_grpo_learns_the_true_ranking_on_held_out_prompts(tiny, tmp_path, loss_type, capsys):
    model, tokenizer = tiny
    task = ToyTask(seed=0)
    train, test = task.rows("ranked", 96), task.rows("ranked", 32, split="test")
    args = _args(tmp_path, loss_type=loss_type, beta=0.1 if loss_type == "plackett_luce" else 0.04,
                 per_device_train_batch_size=8, max_steps=-1, num_train_epochs=1, learning_rate=2e-3,
                 max_completion_length=64, logging_steps=4)  # fmt: skip
    trainer = RankedGRPOTrainer(model, args=args, train_dataset=Dataset.from_list(train), processing_class=tokenizer,
                                peft_config=_lora())  # fmt: skip
    before = _heldout_tau(trainer, test)
    trainer.train()
    after = _heldout_tau(trainer, test)
    with capsys.disabled():
        print(
            f"\noffline {loss_type}: held-out Kendall tau of implicit rewards vs true quality {before:.3f} -> {after:.3f}"
        )
    # measured: 0 -> 0.58 (dapo), 0 -> 0.61 (plackett_luce)
    assert before == 0.0  # the adapter starts at zero: every implicit reward is 0, no order
    assert after > 0.3, (before, after)


def test_an_existing_adapter_is_its_own_reference(tiny, tmp_path):
    from peft import get_peft_model

    model, tokenizer = tiny
    model = get_peft_model(model, _lora())  # e.g. an SFT adapter
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    data = Dataset.from_list(ToyTask().rows("ranked", 2))
    trainer = RankedGRPOTrainer(model, args=_args(tmp_path), train_dataset=data, processing_class=tokenizer)
    assert set(trainer.model.peft_config) == {"default", "ref"}
    assert (
        trainer.group_implicit_rewards(data) == [[0.0] * 4] * 2
    )  # the reference is the adapter as it was, not the base


def test_a_reference_copy_runs_its_own_weights_even_after_an_earlier_trl_trainer(tiny, tmp_path):
    from trl.trainer.utils import add_fused_lm_head

    model, tokenizer = tiny
    add_fused_lm_head(model)  # what an earlier TRL trainer in the same process leaves on the model
    data = Dataset.from_list(ToyTask().rows("ranked", 4))
    trainer = RankedGRPOTrainer(model, args=_args(tmp_path), train_dataset=data, processing_class=tokenizer)
    x = torch.tensor([[5, 6, 7, 8]])
    before = trainer.ref_model(input_ids=x).logits
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1.0)
    assert torch.equal(trainer.ref_model(input_ids=x).logits, before)  # the policy moved, the reference did not


# --- the recipe ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_offline_recipe_on_its_tiny_config(tmp_path, monkeypatch, tiny_model_path):
    from _recipe_utils import REPO_ROOT, load_recipe

    monkeypatch.chdir(REPO_ROOT)  # the config names recipes/data/ranked.jsonl
    out = load_recipe("grpo").main(
        ["--config", "recipes/configs/grpo/tiny-cpu.yaml", "--output_dir", str(tmp_path / "out"), "--max_steps", "3",
         "--eval_fraction", "0.25", "--logging_steps", "1"]
    )  # fmt: skip
    assert (out / "adapter_model.safetensors").exists() and (out / "tokenizer.json").exists()
    card = (out / "README.md").read_text()
    assert "2402.03300" in card and "--max_steps 3" in card and "| loss_type | dapo |" in card
    assert "eval_implicit_reward/kendall_tau" in card  # the ranking metric reaches the card


# --- the per-token loss is TRL's ---------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_grpo_token_loss_reproduces_trls_grpo_trainer(tiny, tmp_path, loss_type):
    """Given the same log-probabilities, advantages and old/reference log-probabilities, `grpo_token_loss` +
    `aggregate_token_loss` give TRL 1.16's `GRPOTrainer._compute_loss` (clipping active, KL on)."""
    from trl import GRPOTrainer

    from trl_ext.ranked_grpo import aggregate_token_loss, grpo_token_loss

    model, tokenizer = tiny
    args = RankedGRPOConfig(str(tmp_path), mode="online", num_generations=2, per_device_train_batch_size=4, max_completion_length=6,
                            beta=0.04, epsilon=0.2, epsilon_high=0.28, loss_type=loss_type, **CPU)  # fmt: skip
    trainer = GRPOTrainer(model, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)], args=args,
                          train_dataset=Dataset.from_list([{"prompt": "p"}] * 4), processing_class=tokenizer)  # fmt: skip
    torch.manual_seed(0)
    prompt_ids, completion_ids = torch.randint(4, 200, (4, 3)), torch.randint(4, 200, (4, 6))
    completion_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 5 + [0], [1] * 2 + [0] * 4])
    trainer.model.eval()
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([prompt_ids, completion_ids], 1),
            torch.cat([torch.ones_like(prompt_ids), completion_mask], 1), 6,
        )  # fmt: skip
        old = logps + 0.3 * torch.randn_like(logps)  # ratios well outside [0.8, 1.28]: clipping acts
        ref = logps + 0.5 * torch.randn_like(logps)
        advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
        inputs = dict(prompt_ids=prompt_ids, prompt_mask=torch.ones_like(prompt_ids), completion_ids=completion_ids,
                      completion_mask=completion_mask, advantages=advantages, old_per_token_logps=old,
                      ref_per_token_logps=ref, num_items_in_batch=completion_mask.sum())  # fmt: skip
        trl_loss = trainer._compute_loss(trainer.model, inputs)
        out = grpo_token_loss(logps, old, advantages, completion_mask.float(), epsilon_low=0.2, epsilon_high=0.28,
                              ref_per_token_logps=ref, beta=0.04)  # fmt: skip
        ours = aggregate_token_loss(out.per_token_loss, completion_mask, loss_type, max_completion_length=6)
    assert out.ratio.lt(0.8).any() and out.ratio.gt(1.28).any()
    assert_close(ours, trl_loss)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_offline_recipe_two_process_cpu_run_with_reused_batches_and_batch_scaling(tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo): the cross-process reductions (`batch` std, `dapo` token count)
    and the repeated accumulated batches of `num_iterations` run; the main process writes the card."""
    import os
    import subprocess
    import sys

    from _recipe_utils import REPO_ROOT

    env = dict(os.environ)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "recipes/accelerate_configs/cpu_2proc.yaml",
        "recipes/grpo.py", "--config", "recipes/configs/grpo/tiny-cpu.yaml", "--output_dir", str(tmp_path / "out"),
        "--max_steps", "4", "--num_iterations", "2", "--scale_rewards", "batch", "--per_device_train_batch_size", "4",
        "--gradient_accumulation_steps", "2", "--eval_fraction", "0.1",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| num_processes | 2 |" in card and "| effective_batch_size | 16 |" in card
    assert "eval_implicit_reward/kendall_tau" in card
