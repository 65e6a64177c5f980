"""PPOTrainer on the tiny model: roles, rollouts, scoring, early stop, save/resume, and (slow) that it learns."""

import json

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from trl_ext.ppo import PPOConfig, PPOTrainer
from trl_ext.toy.synthetic import ToyTask, quality
from trl_ext.trainer_utils import reference_adapter

LOGGED = (
    "objective/scores",
    "objective/kl",
    "objective/entropy",
    "policy/clip_fraction",
    "policy/approx_kl",
    "loss/value",
    "loss/policy",
    "value/explained_variance",
    "ppo/kl_coef",
)


def quality_reward(prompts, completions, **kwargs):
    return [quality(c if isinstance(c, str) else c[0]["content"]) for c in completions]


def lowercase_reward(prompts, completions, **kwargs):
    # varies on the untrained tiny model's random bytes, so its updates are not all zero
    return [sum(ch.islower() for ch in c) / max(len(c), 1) for c in completions]


def config(tmp_path, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=4,
        num_mini_batches=2,
        num_ppo_epochs=2,
        max_completion_length=8,
        max_steps=4,
        logging_steps=1,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        seed=0,
    )
    kwargs.update(overrides)
    return PPOConfig(**kwargs)


def prompts(n=32, conversational=True):
    return Dataset.from_list(ToyTask(seed=0, conversational=conversational).rows("prompts", n))


def lora():
    return LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")


def test_config_defaults_and_validation(tmp_path):
    args = config(tmp_path, gradient_accumulation_steps=3)
    assert args.rollout_batch_size == 4 * 3 * 2
    assert (args.cliprange, args.vf_coef, args.gamma, args.lam, args.kl_estimator) == (0.2, 0.1, 1.0, 0.95, "k1")
    with pytest.raises(ValueError, match="kl_estimator"):
        config(tmp_path, kl_estimator="k9")
    with pytest.raises(ValueError, match="kl_target"):
        config(tmp_path, kl_target=0.0)


def test_trains_logs_and_shares_one_base(tmp_path, tiny_model_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    args = config(tmp_path, eval_strategy="steps", eval_steps=4, per_device_eval_batch_size=4)
    data = prompts(conversational=False)
    trainer = PPOTrainer(model, lowercase_reward, args=args, train_dataset=data, eval_dataset=data.select(range(8)),
                         peft_config=lora())  # fmt: skip
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any(n.startswith("value_head.") for n in before) and any("lora_" in n for n in before)
    trainer.train()
    logs = {k: v for entry in trainer.state.log_history for k, v in entry.items()}
    for key in LOGGED:
        assert key in logs, key
    assert "eval_objective/scores" in logs and "eval_loss" in logs  # evaluation generates on the eval prompts
    changed = [n for n, p in trainer.model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert any("lora_B" in n for n in changed)  # the policy adapter moved
    assert "value_head.summary.bias" in changed  # and the critic
    # 4 optimizer steps = 1 rollout of 8 prompts (2 epochs x 2 mini-batches of 4)
    assert trainer.state.global_step == 4 and trainer._step == 4
    # one base for policy, reference (adapter off) and critic: the extra roles cost an adapter and a linear head
    mem = trainer.weight_bytes_report
    assert mem["memory/reference_extra_bytes"] == 0
    assert mem["memory/critic_head_bytes"] == (128 + 1) * 4  # Linear(hidden=128 -> 1) in float32
    assert mem["memory/total_bytes"] == (
        mem["memory/base_bytes"] + mem["memory/policy_adapter_bytes"] + mem["memory/critic_head_bytes"]
    )
    separate = 3 * mem["memory/base_bytes"] + mem["memory/policy_adapter_bytes"] + mem["memory/critic_head_bytes"]
    assert mem["memory/four_separate_models_bytes"] == separate
    assert logs["memory/total_bytes"] == mem["memory/total_bytes"]


def test_rollout_shapes_rewards_and_reference(tmp_path, tiny_model_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    args = config(tmp_path, missing_eos_penalty=2.0, max_completion_length=4, whiten_advantages=False, lam=1.0,
                  gamma=0.5)  # fmt: skip
    trainer = PPOTrainer(model, lambda prompts, completions, **kw: [1.0] * len(prompts), args=args,
                         train_dataset=prompts(), peft_config=lora())  # fmt: skip
    rows = list(prompts(6))
    rollout = trainer._make_rollout(rows)
    mask = rollout["completion_mask"]
    assert mask.shape == rollout["old_logps"].shape == rollout["advantages"].shape == (6, mask.shape[1])
    ended = (rollout["input_ids"][:, -mask.shape[1] :] == trainer.processing_class.eos_token_id).any(1)
    # a fresh LoRA adapter (B = 0) is the base: the KL to the reference is exactly 0, the score is all that's left
    assert torch.equal(rollout["kl"], torch.zeros(6))
    assert torch.equal(rollout["scores"], torch.where(ended, 1.0, 1.0 - 2.0))
    # lam = 1, values 0 (zero-initialized head), KL 0: the score sits on the last real token only, so the advantage
    # of token t is score * gamma^(last - t); a score placed one token early or late changes every exponent
    last = mask.sum(1, keepdim=True) - 1  # (B, 1)
    steps_to_end = (last - torch.arange(mask.shape[1])[None, :]).clamp(min=0)
    assert torch.allclose(rollout["advantages"], rollout["scores"][:, None] * 0.5**steps_to_end * mask)
    assert torch.allclose(rollout["returns"], rollout["advantages"])  # returns = advantages + V, V = 0
    assert torch.equal(rollout["old_values"], torch.zeros_like(mask))


def test_existing_adapter_gets_a_frozen_ref_copy_and_full_models_a_reference_copy(tmp_path, tiny_model_path):
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path), lora())
    trainer = PPOTrainer(peft_model, quality_reward, args=config(tmp_path), train_dataset=prompts())
    assert reference_adapter(trainer.model) == "ref" and trainer.ref_model is None
    assert (
        trainer.weight_bytes_report["memory/reference_extra_bytes"]
        == trainer.weight_bytes_report["memory/policy_adapter_bytes"]
    )
    full = PPOTrainer(
        AutoModelForCausalLM.from_pretrained(tiny_model_path), quality_reward, args=config(tmp_path),
        train_dataset=prompts(),
    )  # fmt: skip
    assert full.ref_model is not None and not any(p.requires_grad for p in full.ref_model.parameters())
    full.train()
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    for (name, a), b in zip(full.ref_model.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), name  # the reference never moves


def test_reward_model_sees_what_reward_trainer_trained_on(tmp_path, tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    trainer = PPOTrainer(AutoModelForCausalLM.from_pretrained(tiny_model_path), rm, args=config(tmp_path),
                         train_dataset=prompts(), reward_processing_class=tok, peft_config=lora())  # fmt: skip
    chat = [[{"role": "user", "content": "apple: one two"}], [{"role": "user", "content": "river: red"}]]
    scores = trainer._score(chat, ["sun sky", "mud"], [[], []])
    # TRL's RewardTrainer: a conversation is prompt + [assistant completion] through the chat template
    for conversation, completion, score in zip(chat, ["sun sky", "mud"], scores):
        ids = tok.apply_chat_template(conversation + [{"role": "assistant", "content": completion}])["input_ids"]
        expected = rm(input_ids=torch.tensor([ids])).logits[0, 0]
        assert torch.allclose(score, expected, atol=1e-5)
    # plain text: prompt + completion + EOS
    score = trainer._score(["apple: one two "], ["sun sky"], [[]])[0]
    ids = tok("apple: one two sun sky" + tok.eos_token)["input_ids"]
    assert torch.allclose(score, rm(input_ids=torch.tensor([ids])).logits[0, 0], atol=1e-5)
    assert trainer.weight_bytes_report["memory/reward_model_bytes"] > 0


def test_early_stop_discards_the_crossing_update_and_skips_the_rest(tmp_path, tiny_model_path):
    # a bound below 0 trips on the first mini-batch of every rollout: its update is discarded, the other 3 skipped
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    args = config(tmp_path, early_stop_kl=-1.0, max_steps=8)
    trainer = PPOTrainer(model, quality_reward, args=args, train_dataset=prompts(), peft_config=lora())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    for n, p in trainer.model.named_parameters():
        if n in before:
            assert torch.equal(p, before[n]), n  # neither weights nor AdamW moments moved
    skipped = [h["ppo/skipped_steps"] for h in trainer.state.log_history if "ppo/skipped_steps" in h]
    assert skipped == [0.0, 1.0, 1.0, 1.0] * 2  # 2 rollouts of 4 steps


def test_save_writes_a_plain_adapter_and_resume_restores_the_critic(tmp_path, tiny_model_path):
    args = config(tmp_path, save_strategy="steps", save_steps=4, max_steps=4, kl_target=1.0)
    trainer = PPOTrainer(AutoModelForCausalLM.from_pretrained(tiny_model_path), quality_reward, args=args,
                         train_dataset=prompts(), peft_config=lora())  # fmt: skip
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-4"
    assert (checkpoint / "adapter_model.safetensors").exists() and (checkpoint / "value_head.safetensors").exists()
    from safetensors.torch import load_file

    assert not any("value_head" in k for k in load_file(checkpoint / "adapter_model.safetensors"))
    kl_coef = json.loads((checkpoint / "ppo_state.json").read_text())["kl_coef"]
    assert kl_coef == trainer.kl_coef != 0.05  # adaptive: it moved
    head = trainer.model.value_head.summary.weight.detach().clone()

    resumed = PPOTrainer(AutoModelForCausalLM.from_pretrained(tiny_model_path), quality_reward,
                         args=config(tmp_path, max_steps=8, save_strategy="no", kl_target=1.0),
                         train_dataset=prompts(), peft_config=lora())  # fmt: skip
    resumed._load_from_checkpoint(str(checkpoint))
    assert torch.equal(resumed.model.value_head.summary.weight, head) and resumed.kl_coef == kl_coef
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 8


def test_qlora_4bit_base_serves_policy_reference_and_critic(tmp_path, tiny_model_path):
    from transformers import BitsAndBytesConfig

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, quantization_config=bnb, dtype=torch.float32)
    full = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    trainer = PPOTrainer(model, quality_reward, args=config(tmp_path), train_dataset=prompts(), peft_config=lora())
    trainer.train()
    mem = trainer.weight_bytes_report
    full_bytes = sum(p.numel() * p.element_size() for p in full.parameters())
    assert mem["memory/base_bytes"] < 0.5 * full_bytes  # the linear layers are packed 4-bit
    # the saving over four models is two more copies of the (4-bit) base
    assert mem["memory/four_separate_models_bytes"] - mem["memory/total_bytes"] == 2 * mem["memory/base_bytes"]
    assert "objective/scores" in trainer.state.log_history[0]


# --- does it learn (slow): a known reward on ToyTask, after a short SFT warm start so generations are words ----------
HELD_OUT = ToyTask(seed=1, conversational=True).rows("prompts", 64, split="test")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # many tiny ops (generation of a 0.5M-parameter model): one thread is faster than two fighting over a shared CPU
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory, tiny_model_path):
    """The tiny model after 1 epoch of SFT on mixed-quality answers (mean quality of its samples about 0.4)."""
    from trl import SFTConfig, SFTTrainer

    out = tmp_path_factory.mktemp("sft")
    rows = [{"prompt": r["prompt"], "completion": r["response_a"]}
            for r in ToyTask(seed=0, conversational=True).rows("pairwise_ab", 3000)]  # fmt: skip
    args = SFTConfig(str(out), use_cpu=True, bf16=False, gradient_checkpointing=False, per_device_train_batch_size=16,
                     learning_rate=2e-3, lr_scheduler_type="constant", max_length=64, num_train_epochs=1,
                     report_to="none", save_strategy="no", seed=0)  # fmt: skip
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    trainer = SFTTrainer(AutoModelForCausalLM.from_pretrained(tiny_model_path), args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tok)  # fmt: skip
    trainer.train()
    trainer.save_model(str(out))
    tok.save_pretrained(str(out))
    return out


def fresh_generations(model, tok, rows=HELD_OUT, max_new_tokens=24):
    model.eval()
    ids = tok.apply_chat_template([r["prompt"] for r in rows], add_generation_prompt=True, return_dict=True)
    tok.padding_side = "left"
    batch = tok.pad({"input_ids": ids["input_ids"]}, return_tensors="pt")
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=True, pad_token_id=tok.pad_token_id)
    return tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def mean_quality(texts):
    return sum(map(quality, texts)) / len(texts)


def ppo_args(tmp_path):
    return config(tmp_path, per_device_train_batch_size=8, max_completion_length=24, max_steps=80, logging_steps=4,
                  lr_scheduler_type="constant", early_stop_kl=0.05)  # fmt: skip


@pytest.mark.slow
def test_ppo_learns_a_rule_based_reward(sft_model, tmp_path, capsys):
    tok = AutoTokenizer.from_pretrained(sft_model)
    model = AutoModelForCausalLM.from_pretrained(sft_model)
    before = mean_quality(fresh_generations(model, tok))
    trainer = PPOTrainer(model, quality_reward, args=ppo_args(tmp_path), processing_class=tok,
                         train_dataset=prompts(512), peft_config=lora())  # fmt: skip
    trainer.train()
    after = mean_quality(fresh_generations(trainer.model, tok))
    kls = [h["objective/kl"] for h in trainer.state.log_history if "objective/kl" in h]
    with capsys.disabled():
        print(
            f"\nPPO, rule-based reward: held-out quality {before:.3f} -> {after:.3f}; KL/sequence {kls[-1]:.2f} nats"
        )
    # measured (CPU, 1 thread, about 10 s of PPO): 0.407 -> 0.892, KL 2.6 nats per sequence at the end
    assert after > before + 0.15
    assert max(kls) < 10.0


@pytest.mark.slow
def test_ppo_learns_from_a_learned_reward_model(sft_model, tmp_path, capsys):
    from trl import RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(sft_model)
    rm = AutoModelForSequenceClassification.from_pretrained(sft_model, num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    pairs = Dataset.from_list(ToyTask(seed=0, conversational=True).rows("pairs", 2000))
    rm_args = RewardConfig(str(tmp_path / "rm"), use_cpu=True, bf16=False, gradient_checkpointing=False,
                           per_device_train_batch_size=16, learning_rate=1e-3, lr_scheduler_type="constant",
                           num_train_epochs=1, max_length=96, report_to="none", save_strategy="no",
                           seed=0)  # fmt: skip
    RewardTrainer(model=rm, args=rm_args, train_dataset=pairs, processing_class=tok).train()

    model = AutoModelForCausalLM.from_pretrained(sft_model)
    trainer = PPOTrainer(model, rm, args=ppo_args(tmp_path), processing_class=tok, reward_processing_class=tok,
                         train_dataset=prompts(512), peft_config=lora())  # fmt: skip
    prompts_ = [r["prompt"] for r in HELD_OUT]

    def rm_score(texts):
        return trainer._score(prompts_, texts, [[]] * len(texts)).mean().item()

    texts = fresh_generations(model, tok)
    before_score, before_quality = rm_score(texts), mean_quality(texts)
    trainer.train()
    texts = fresh_generations(trainer.model, tok)
    after_score, after_quality = rm_score(texts), mean_quality(texts)
    kls = [h["objective/kl"] for h in trainer.state.log_history if "objective/kl" in h]
    with capsys.disabled():
        print(f"\nPPO, learned reward model: held-out RM score {before_score:.2f} -> {after_score:.2f}, true quality "
              f"{before_quality:.3f} -> {after_quality:.3f}; KL/sequence {kls[-1]:.2f} nats")  # fmt: skip
    # measured: RM score -0.60 -> 1.24, true quality 0.407 -> 0.832, KL 7.2 nats per sequence at the end
    assert after_score > before_score + 0.5
    assert after_quality > before_quality + 0.1  # the learned reward carries the true one
    assert max(kls) < 15.0
