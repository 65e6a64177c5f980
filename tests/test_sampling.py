"""Sampling is the distribution the loss assumes: nothing from a checkpoint's generation config leaks into PPO's
rollouts or evaluation's samples, and a chat model's end-of-turn token ends a completion."""

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from trl_ext import evaluation as ev
from trl_ext.ppo import PPOConfig, PPOTrainer
from trl_ext.sampling import sample, sampling_config
from trl_ext.toy.synthetic import ToyTask, quality


def checkpoint_with_sampling_defaults(path):
    """The tiny model as a chat checkpoint ships it: top_k, top_p and a repetition penalty in generation_config."""
    model = AutoModelForCausalLM.from_pretrained(path)
    model.generation_config.update(do_sample=True, top_k=3, top_p=0.5, repetition_penalty=1.3)
    return model


class GenerateSpy:
    """Wraps a model's `generate` to also return the processed scores and the raw logits of every step."""

    def __init__(self, model):
        self.inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.original = self.inner.generate
        self.steps: list[tuple[torch.Tensor, torch.Tensor, float]] = []
        self.inner.generate = self

    def __call__(self, *args, generation_config=None, **kwargs):
        out = self.original(*args, generation_config=generation_config, output_scores=True, output_logits=True,
                            return_dict_in_generate=True, **kwargs)  # fmt: skip
        temperature = generation_config.temperature if generation_config is not None else kwargs.get("temperature")
        self.steps.append((torch.stack(out.scores), torch.stack(out.logits), temperature or 1.0))
        return out.sequences

    def assert_sampled_the_full_softmax(self):
        assert self.steps, "generate was not called"
        for scores, logits, temperature in self.steps:
            # the distribution sampled from is exactly softmax(logits / temperature): no token masked or re-weighted
            assert torch.isfinite(scores).all()
            torch.testing.assert_close(scores, logits / temperature, rtol=1e-5, atol=1e-5)


def test_sample_ignores_the_checkpoints_generation_settings(tiny_model_path):
    model = checkpoint_with_sampling_defaults(tiny_model_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    ids = torch.tensor([tokenizer("hello there")["input_ids"]])
    config = sampling_config(max_new_tokens=6, eos_token_id=None, pad_token_id=0, temperature=0.7)
    out = sample(model, ids, torch.ones_like(ids), config, output_scores=True, output_logits=True,
                 return_dict_in_generate=True)  # fmt: skip
    torch.testing.assert_close(torch.stack(out.scores), torch.stack(out.logits) / 0.7, rtol=1e-5, atol=1e-5)
    assert model.generation_config.top_k == 3  # restored afterwards

    # what plain `generate` does with the same request: the checkpoint's top_k masks all but 3 tokens
    leaked = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), output_scores=True,
                            generation_config=GenerationConfig(max_new_tokens=6, do_sample=True, temperature=0.7),
                            return_dict_in_generate=True)  # fmt: skip
    assert torch.isinf(torch.stack(leaked.scores)).any()


def test_ppo_rollouts_sample_the_distribution_the_loss_uses(tiny_model_path, tmp_path):
    model = checkpoint_with_sampling_defaults(tiny_model_path)
    args = PPOConfig(str(tmp_path), use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
                     per_device_train_batch_size=4, max_completion_length=6, temperature=0.8, max_steps=1)  # fmt: skip
    prompts = Dataset.from_list(ToyTask(seed=0).rows("prompts", 8))
    trainer = PPOTrainer(
        model,
        lambda prompts, completions, **kw: [quality(c) for c in completions],
        args=args,
        train_dataset=prompts,
        processing_class=AutoTokenizer.from_pretrained(tiny_model_path),
        peft_config=LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    spy = GenerateSpy(trainer.model)
    trainer._make_rollout(prompts.to_list()[:4])
    spy.assert_sampled_the_full_softmax()


@pytest.mark.parametrize("bad", [dict(top_k=20), dict(top_p=0.9)])
def test_ppo_refuses_truncated_sampling(tmp_path, bad):
    with pytest.raises(ValueError, match="full softmax"):
        PPOConfig(str(tmp_path), use_cpu=True, bf16=False, **bad)


def test_evaluation_samples_the_full_softmax(tiny_model_path):
    model = checkpoint_with_sampling_defaults(tiny_model_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    spy = GenerateSpy(model)
    ev.generate(model, tokenizer, ["a b c", "d e"], max_new_tokens=5, progress=False)
    spy.assert_sampled_the_full_softmax()


def test_evaluation_stops_at_the_models_end_of_turn_token(tiny_model_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    prompt = ["some words"]
    free = ev.generate(model, tokenizer, prompt, max_new_tokens=6, do_sample=False, progress=False)
    first = free.completion_ids[0][0]
    assert first != tokenizer.eos_token_id
    # a chat checkpoint whose end of turn differs from the tokenizer's EOS (as <|im_end|> vs <|endoftext|>)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, first]
    stopped = ev.generate(model, tokenizer, prompt, max_new_tokens=6, do_sample=False, progress=False)
    assert stopped.completion_ids == [[first]] and stopped.finished == [True]
