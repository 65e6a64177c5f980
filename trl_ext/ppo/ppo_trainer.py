"""PPO for RLHF on transformers' `Trainer` loop, the way TRL's `RLOOTrainer` and `GRPOTrainer` are built.

What is reused: `trl.trainer.base_trainer._BaseTrainer` (model card), `Trainer`'s loop (optimizer, scheduler,
gradient accumulation and clipping, checkpoints and resume, callbacks, logging, accelerate / DDP / DeepSpeed),
TRL's `RepeatSampler` (one batch of prompts held for all the steps of its rollout), `unwrap_model_for_generation`,
`use_adapter` (reference = adapters off), `selective_log_softmax_and_entropy`, `pad`, `disable_dropout_in_model`.
What is ours: the rollout (`_make_rollout`), the PPO loss (`compute_loss`, built from `ppo_loss`), the early stop
(`training_step`), the value head and its saving.

Each call of `_prepare_inputs` hands `Trainer` one micro-batch of the current rollout; a new rollout is generated
every ``num_ppo_epochs * num_mini_batches * gradient_accumulation_steps`` micro-steps (`global_step` counts
optimizer steps).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from accelerate.logging import get_logger
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from torch import nn
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
)

# TRL 1.16 internals (pinned in pyproject.toml; tests/test_trl_internals.py guards each)
from trl.models import unwrap_model_for_generation
from trl.trainer.base_trainer import _BaseTrainer
from trl.trainer.utils import (
    RepeatSampler,
    disable_dropout_in_model,
    identity,
    pad,
    selective_log_softmax_and_entropy,
)

from trl_ext.models import causal_lm_from, load_reward_model, tokenizer_from
from trl_ext.ops import kl_estimate, masked_mean, masked_whiten
from trl_ext.rewards import reward_weights
from trl_ext.sampling import sample, sampling_config
from trl_ext.tokenization import encode_prompt, encode_sequence, stop_token_ids
from trl_ext.trainer_utils import MetricsMixin, frozen_copy, prepare_reference_model, reference_context, wrap_policy

from .ppo_config import PPOConfig
from .ppo_loss import (
    adaptive_kl_coef,
    explained_variance,
    generalized_advantage_estimation,
    per_token_rewards,
    ppo_policy_loss,
    ppo_value_loss,
)

logger = get_logger(__name__)

# A rule-based reward: called as TRL calls reward functions, `func(prompts=..., completions=..., **kwargs)`, and
# returns one float per completion.
RewardFunc = Callable[..., list[float]]
VALUE_HEAD_FILE = "value_head.safetensors"
PPO_STATE_FILE = "ppo_state.json"


class ValueHead(nn.Module):
    """The critic's head: a linear map from the policy's last hidden state to a scalar value, in float32.

    Zero-initialized: every value starts at 0 (so the first advantages are the discounted rewards) and, since
    d(value)/d(hidden) = weight = 0, the value loss sends no gradient into the shared trunk until the head has
    learned something.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1, dtype=torch.float32)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T)
        return self.summary(hidden_states.to(self.summary.weight.dtype)).squeeze(-1)


def weight_bytes(module: nn.Module | None, predicate: Callable[[str], bool] = lambda name: True) -> int:
    """Bytes of storage of a module's parameters and buffers whose name passes `predicate` (4-bit weights counted
    packed, as they sit in memory; bitsandbytes' small quantization constants are left out)."""
    if module is None:
        return 0
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return sum(t.numel() * t.element_size() for name, t in tensors if predicate(name))


class PPOTrainer(MetricsMixin, _BaseTrainer):
    """PPO with a critic and a reward model, for RLHF (Ziegler et al. 2019; Ouyang et al. 2022; Schulman et al. 2017).

    Per rollout: generate a completion for each prompt; score it with the reward model (a sequence-classification
    model, or a rule-based callable), minus `missing_eos_penalty` if it never ended; per-token reward = score on the
    last token - beta * KL to the reference; values from the critic; GAE advantages (whitened) and returns. Then
    `num_ppo_epochs` passes of the clipped surrogate + `vf_coef` * clipped value loss over shuffled mini-batches, with
    an optional early stop on the approximate KL to the rollout policy. Logged: `objective/scores`, `objective/kl`,
    `objective/entropy`, `policy/clip_fraction`, `loss/value`, `value/explained_variance` and more, plus (once) the
    bytes of weights each role holds (`memory/*`).

    Roles on one GPU (QLoRA): one 4-bit base serves the policy (its LoRA adapter), the reference (the same base with
    the adapter disabled; or, when `model` already carries a trained adapter, a frozen copy of it named `"ref"`) and
    the critic. The reward model is a separate model (4-bit too if loaded so), since it is usually trained on its own
    base. Without PEFT, the reference is a frozen copy of the model (or `ref_model`).

    The critic is a value head on the policy's trunk, not its own adapter. Why: it costs one forward/backward per
    mini-batch instead of two through the 4-bit base (the cost that dominates on one consumer GPU), no second set
    of activations, and the whole trainable state stays one PEFT model under DDP / DeepSpeed. The price is that the
    value loss shares gradients with the policy; `vf_coef` (0.1) and the zero-initialized head keep it small, as in
    the original RLHF PPO (Ziegler et al. 2019) and TRL's earlier `AutoModelForCausalLMWithValueHead`. The head is
    saved beside the adapter as `value_head.safetensors` (the adapter itself is a plain policy adapter).

    Example:
        >>> from trl_ext import PPOConfig, PPOTrainer
        >>> from trl_ext.toy.synthetic import quality
        >>> reward = lambda prompts, completions, **kw: [quality(c) for c in completions]
        >>> trainer = PPOTrainer("trl-ext/tiny-llama", reward_model=reward, args=PPOConfig("out", use_cpu=True),
        ...                      train_dataset=prompts)            # rows with a "prompt" column
        >>> trainer.train()
    """

    _tag_names = ["trl", "trl-ext", "ppo"]
    _name = "PPO"
    _paper = {
        "title": "Proximal Policy Optimization Algorithms",
        "id": "1707.06347",
        "citation": "@article{schulman2017proximal, title={Proximal Policy Optimization Algorithms}, "
        "author={Schulman, John and Wolski, Filip and Dhariwal, Prafulla and Radford, Alec and Klimov, Oleg}, "
        "journal={arXiv preprint arXiv:1707.06347}, year={2017}}",
    }
    # `compute_loss` returns a micro-batch mean; `Trainer` divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: str | PreTrainedModel,
        reward_model: str | PreTrainedModel | RewardFunc | Sequence[str | PreTrainedModel | RewardFunc],
        args: PPOConfig | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        reward_processing_class: PreTrainedTokenizerBase | None = None,
        ref_model: PreTrainedModel | None = None,
        peft_config: Any | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = PPOConfig(f"{str(name).split('/')[-1]}-PPO")
        if isinstance(model, str):
            model = causal_lm_from(model, **(args.model_init_kwargs or {}))
        if processing_class is None:
            processing_class = tokenizer_from(model.config._name_or_path)
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token
        # A chat model's end of turn (e.g. <|im_end|>) ends a rollout as well as the tokenizer's EOS
        self.eos_token_ids = stop_token_ids(model, processing_class)

        # --- the roles on one base: policy (adapter), reference (adapter off / "ref" copy / frozen model), critic
        model = wrap_policy(model, peft_config, bf16=args.bf16)
        if is_peft_model(model):
            if ref_model is not None:
                raise ValueError("with a PEFT policy the reference is the base (adapter off): drop ref_model")
        elif ref_model is None:
            ref_model = frozen_copy(model)
        self.ref_model = ref_model
        if is_peft_model(model) and args.gradient_checkpointing:
            model.enable_input_require_grads()  # see transformers#42489, as RLOO does
        hidden_size = model.config.get_text_config().hidden_size
        device = model.get_input_embeddings().weight.device
        model.add_module("value_head", ValueHead(hidden_size).to(device))
        if args.disable_dropout:
            disable_dropout_in_model(model)
            if ref_model is not None:
                disable_dropout_in_model(ref_model)

        # --- rewards: a sequence-classification model (by name or instance), rule-based callables, or a list of them
        rewards = list(reward_model) if isinstance(reward_model, (list, tuple)) else [reward_model]
        if not rewards:
            raise ValueError("PPOTrainer needs a reward: a reward model, a reward function, or a list of them")
        if sum(isinstance(r, (str, nn.Module)) for r in rewards) > 1:
            raise ValueError("PPOTrainer takes one reward model (and any number of reward functions)")
        for k, reward in enumerate(rewards):
            if isinstance(reward, str):
                rewards[k], loaded_tokenizer = load_reward_model(reward)
                reward_processing_class = reward_processing_class or loaded_tokenizer
        self.reward_model = next((r for r in rewards if isinstance(r, nn.Module)), None)
        if self.reward_model is not None:
            self.reward_model.eval().requires_grad_(False)
            if reward_processing_class is None:
                reward_processing_class = tokenizer_from(self.reward_model.config._name_or_path)
            if reward_processing_class.pad_token is None:
                reward_processing_class.pad_token = reward_processing_class.eos_token
            # the score is read at the last non-pad token, so the model must know the pad id
            self.reward_model.config.pad_token_id = reward_processing_class.pad_token_id
        self.reward_funcs = rewards
        self.reward_func_names = [
            "reward_model" if isinstance(r, nn.Module) else getattr(r, "__name__", type(r).__name__) for r in rewards
        ]
        # one weight per reward, in the order given (TRL GRPO's `reward_weights`); all 1.0 by default
        self.reward_weights = torch.tensor(reward_weights(args.reward_weights, len(rewards)), dtype=torch.float32)
        self.reward_processing_class = reward_processing_class

        self.kl_coef = args.kl_coef
        # Rollouts sample softmax(logits / temperature), the distribution PPO's ratio and KL use: no top-k, top-p or
        # penalty, and nothing taken from the checkpoint's generation_config (see trl_ext.sampling).
        self.generation_config = sampling_config(
            max_new_tokens=args.max_completion_length,
            temperature=args.temperature,
            eos_token_id=self.eos_token_ids,
            pad_token_id=processing_class.pad_token_id,
        )
        self._step = 0  # micro-steps
        self._rollout: dict[str, torch.Tensor] | None = None
        self._batches: list[torch.Tensor] = []
        self._stop_rollout = False
        self._init_metrics()
        self.weight_bytes_report: dict[str, int] = {}

        super().__init__(
            model=model,
            args=args,
            data_collator=identity,  # rows stay dicts; prompts are tokenized at generation time
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self.model_accepts_loss_kwargs = False

        self.ref_model = prepare_reference_model(self, self.ref_model)
        if self.reward_model is not None:
            index = next(k for k, r in enumerate(self.reward_funcs) if r is self.reward_model)
            self.reward_model = self.reward_funcs[index] = prepare_reference_model(self, self.reward_model)
        self.weight_bytes_report = self._weight_bytes()
        logger.info("PPO weights per role (bytes): %s", self.weight_bytes_report)

    # ------------------------------------------------------------------------------------------ sizes and data
    @property
    def steps_per_rollout(self) -> int:
        """Micro-batches in one pass over a rollout."""
        return self.args.gradient_accumulation_steps * self.args.num_mini_batches

    @property
    def micro_steps_per_rollout(self) -> int:
        return self.steps_per_rollout * self.args.num_ppo_epochs

    def _weight_bytes(self) -> dict[str, int]:
        """Bytes of weights each role holds, and what four separate models (policy, reference, critic, reward
        model) of the same base would hold."""
        model = self.accelerator.unwrap_model(self.model)
        adapter = ("lora_", "modules_to_save")

        def is_base(name: str) -> bool:
            return not name.startswith("value_head.") and not any(a in name for a in adapter)

        base = weight_bytes(model, is_base)
        policy_adapter = weight_bytes(model, lambda n: ".default." in n or (".ref." not in n and not is_base(n)))
        policy_adapter -= weight_bytes(model.value_head)
        critic_head = weight_bytes(model.value_head)
        if self.ref_model is not None:
            reference = weight_bytes(self.accelerator.unwrap_model(self.ref_model))
        else:  # adapter disabled: nothing; a "ref" adapter: its copy
            reference = weight_bytes(model, lambda n: ".ref." in n)
        reward = weight_bytes(self.accelerator.unwrap_model(self.reward_model)) if self.reward_model is not None else 0
        total = base + policy_adapter + reference + critic_head + reward
        # four models: the policy, a reference and a critic each with their own copy of the base, and the reward model
        separate = (base + policy_adapter) + (reference if self.ref_model is not None else base) + base + critic_head
        separate += reward
        return {
            "memory/base_bytes": base,
            "memory/policy_adapter_bytes": policy_adapter,
            "memory/reference_extra_bytes": reference,
            "memory/critic_head_bytes": critic_head,
            "memory/reward_model_bytes": reward,
            "memory/total_bytes": total,
            "memory/four_separate_models_bytes": separate,
        }

    def _set_signature_columns_if_needed(self):
        # every column reaches the reward functions (a prompt's constraints, say), as TRL's GRPOTrainer passes them
        if self._signature_columns is None:
            columns = getattr(self.train_dataset, "column_names", None) or []
            self._signature_columns = ["prompt", *(c for c in columns if c != "prompt")]

    def get_train_dataloader(self):
        # One rollout's prompts per dataloader batch, repeated for every micro-step of that rollout (the sampler
        # repeats them), as RLOOTrainer does with its generation batch.
        return self._get_dataloader(
            dataset=self.train_dataset,
            description="Training",
            batch_size=self.args.per_device_train_batch_size * self.steps_per_rollout,
            sampler_fn=self._get_train_sampler,
            is_training=True,
        )

    def _get_train_sampler(self, dataset=None):
        dataset = self.train_dataset if dataset is None else dataset
        return RepeatSampler(
            data_source=dataset,
            mini_repeat_count=1,
            batch_size=self.args.rollout_batch_size * self.accelerator.num_processes,
            repeat_count=self.micro_steps_per_rollout,
            shuffle=True,
            seed=self.args.seed,
        )

    # ------------------------------------------------------------------------------------------------ rollouts
    def _forward(
        self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_completion: int, values: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Log-probs and entropies of the completion tokens ``(B, C)``, and the critic's values ``(B, C)``.

        The value of completion token t is read where its log-prob is: at the hidden state of the sequence just
        before it, the state s_t in which the action y_t is taken.
        """
        # left-padded prompts: positions count real tokens only, as generation counted them
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logits_to_keep=n_completion + 1,
            output_hidden_states=values,
            use_cache=False,
        )
        logits = out.logits[:, :-1] / self.args.temperature  # (B, C, V): position P+t-1 predicts completion token t
        logps, entropy = selective_log_softmax_and_entropy(
            logits, input_ids[:, -n_completion:], entropy_requires_grad=False
        )
        value = None
        if values:
            hidden = out.hidden_states[-1][:, -n_completion - 1 : -1]  # (B, C, H)
            value = self.accelerator.unwrap_model(self.model).value_head(hidden)  # (B, C)
        return logps, entropy, value

    @torch.no_grad()
    def _score(
        self,
        prompts: list,
        completions: list[str],
        completion_ids: list[list[int]],
        columns: dict[str, list] | None = None,
    ) -> torch.Tensor:
        """The weighted sum of every reward's scores ``(B,)``; each reward's mean is logged as `rewards/<name>/mean`.
        Reward functions get the prompts, the completions and every other column of the rows (TRL's reward-function
        call); the reward model scores the text as TRL's `RewardTrainer` trained it."""
        per_reward = []
        for func in self.reward_funcs:
            if isinstance(func, nn.Module):
                per_reward.append(self._reward_model_scores(prompts, completions))
            else:
                scores = func(
                    prompts=prompts, completions=completions, completion_ids=completion_ids, **(columns or {})
                )
                per_reward.append(torch.tensor(scores, dtype=torch.float32, device=self.accelerator.device))
        stacked = torch.stack(per_reward, dim=1)  # (B, R)
        mode = "train" if self.model.training else "eval"
        if len(self.reward_funcs) > 1:
            for name, column in zip(self.reward_func_names, stacked.unbind(1)):
                self._log_mean(mode, f"rewards/{name}/mean", column)
        return (stacked * self.reward_weights.to(stacked.device)).sum(1)

    def _reward_model_scores(self, prompts: list, completions: list[str]) -> torch.Tensor:
        """Reward-model scores ``(B,)``: the text is formatted as TRL's `RewardTrainer` trained it (chat template for
        conversations; prompt + completion + EOS for plain text)."""
        device = self.accelerator.device
        tok = self.reward_processing_class
        ids = [encode_sequence(tok, p, c) for p, c in zip(prompts, completions)]
        tensors = [torch.tensor(x) for x in ids]
        input_ids = pad(tensors, padding_value=tok.pad_token_id, padding_side="right").to(device)
        attention_mask = pad([torch.ones_like(x) for x in tensors], padding_value=0, padding_side="right").to(device)
        scores = []
        for i in range(0, len(tensors), self.args.per_device_train_batch_size):
            chunk = slice(i, i + self.args.per_device_train_batch_size)
            logits = self.reward_model(input_ids=input_ids[chunk], attention_mask=attention_mask[chunk]).logits
            scores.append(logits[:, 0].float())
        return torch.cat(scores)

    @torch.no_grad()
    def _make_rollout(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Generate, score, and turn one batch of prompts into PPO training data (advantages, returns, ...)."""
        args, device, tok = self.args, self.accelerator.device, self.processing_class
        mode = "train" if self.model.training else "eval"
        prompts = [row["prompt"] for row in rows]
        prompt_ids = [torch.tensor(encode_prompt(tok, p, args.max_prompt_length)) for p in prompts]
        prompt = pad(prompt_ids, padding_value=tok.pad_token_id, padding_side="left").to(device)
        prompt_mask = pad([torch.ones_like(x) for x in prompt_ids], padding_value=0, padding_side="left").to(device)

        with unwrap_model_for_generation(
            self.model_wrapped,
            self.accelerator,
            gather_deepspeed3_params=args.ds3_gather_for_generation,
            gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
        ) as unwrapped:
            generated = sample(unwrapped, prompt, prompt_mask, self.generation_config)
        completion = generated[:, prompt.shape[1] :]
        # keep tokens up to and including the first EOS; what follows is padding
        is_eos = torch.isin(completion, torch.tensor(self.eos_token_ids, device=device))
        has_eos = is_eos.any(dim=1)
        first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1), completion.shape[1])
        mask = (torch.arange(completion.shape[1], device=device)[None] <= first_eos[:, None]).long()
        length = int(mask.sum(1).max().clamp(min=1))
        completion, mask = completion[:, :length], mask[:, :length]
        completion = completion.masked_fill(mask == 0, tok.pad_token_id)
        completion_ids = [c[m.bool()].tolist() for c, m in zip(completion, mask)]
        texts = tok.batch_decode(completion_ids, skip_special_tokens=True)

        columns = {key: [row[key] for row in rows] for key in rows[0] if key != "prompt"}
        scores = self._score(prompts, texts, completion_ids, columns)  # (B,)
        raw_scores = scores.clone()
        if args.missing_eos_penalty is not None:
            scores = scores - args.missing_eos_penalty * (~has_eos).float()

        input_ids = torch.cat([prompt, completion], dim=1)
        attention_mask = torch.cat([prompt_mask, mask], dim=1)
        logps, entropy, values = [], [], []
        step = args.per_device_train_batch_size
        for i in range(0, len(rows), step):
            chunk = slice(i, i + step)
            lp, ent, val = self._forward(self.model, input_ids[chunk], attention_mask[chunk], length, values=True)
            logps.append(lp), entropy.append(ent), values.append(val)
        logps, entropy, values = torch.cat(logps), torch.cat(entropy), torch.cat(values).float()
        ref_logps = []
        with reference_context(self):
            ref = self.ref_model if self.ref_model is not None else self.model
            for i in range(0, len(rows), step):
                chunk = slice(i, i + step)
                ref_logps.append(self._forward(ref, input_ids[chunk], attention_mask[chunk], length, values=False)[0])
        ref_logps = torch.cat(ref_logps)

        maskf = mask.float()
        rewards, kl = per_token_rewards(
            scores, logps.float(), ref_logps.float(), maskf, self.kl_coef, args.kl_estimator
        )
        if args.whiten_rewards:
            rewards = masked_whiten(rewards, maskf, shift_mean=False)
        advantages, returns = generalized_advantage_estimation(rewards, values, maskf, args.gamma, args.lam)
        if args.whiten_advantages:
            advantages = masked_whiten(advantages, maskf)

        # --- metrics over all processes
        gather = self.accelerator.gather
        seq_kl = gather(kl.sum(1))
        self._log_mean(mode, "objective/scores", raw_scores)
        self._log_mean(mode, "objective/kl", seq_kl)
        self._log_mean(mode, "objective/rlhf_reward", scores - self.kl_coef * kl.sum(1))
        self._log_mean(mode, "objective/entropy", masked_mean(entropy, maskf, dim=1))
        self._log_mean(mode, "completions/mean_length", maskf.sum(1))
        self._log_mean(mode, "completions/eos_ratio", has_eos.float())
        self._metrics[mode]["value/explained_variance"].append(explained_variance(values, returns, maskf).item())
        self._metrics[mode]["ppo/kl_coef"].append(self.kl_coef)
        if mode == "train" and args.kl_target is not None:
            self.kl_coef = adaptive_kl_coef(
                self.kl_coef, seq_kl.mean().item(), args.kl_target, seq_kl.numel(), args.kl_horizon
            )
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "completion_mask": maskf,
            "old_logps": logps.float(),
            "old_values": values,
            "advantages": advantages,
            "returns": returns,
            "scores": scores,
            "kl": kl.sum(1),
        }

    # ------------------------------------------------------------------------------------------------ training
    def _prepare_inputs(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if not self.model.training:  # evaluation: a fresh rollout per batch, no reuse
            return self._make_rollout(rows)
        position = self._step % self.micro_steps_per_rollout
        if position == 0 or self._rollout is None:  # None: the first step after resuming mid-rollout
            self._rollout = self._make_rollout(rows)
            self._stop_rollout = False
        if position % self.steps_per_rollout == 0 or not self._batches:  # a new pass: reshuffle the rollout
            order = torch.randperm(len(rows), device=self.accelerator.device)
            self._batches = list(order.chunk(self.steps_per_rollout))
        index = self._batches[position % self.steps_per_rollout]
        return {k: v[index] for k, v in self._rollout.items()}

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self._step == 0 and self.state.global_step > 0:  # resumed: realign with the rollout schedule
            self._step = self.state.global_step * self.args.gradient_accumulation_steps
        position = self._step % self.micro_steps_per_rollout
        skip = self._stop_rollout and position != 0
        self._metrics["train"]["ppo/skipped_steps"].append(float(skip))
        if skip:
            # Early-stopped rollout: no forward, no backward. The optimizer skips parameters whose grad is None, so
            # neither the weights nor AdamW's moments move (the scheduler still ticks).
            self._step += 1
            return torch.zeros((), device=self.args.device)
        loss = super().training_step(model, inputs, num_items_in_batch)  # -> _prepare_inputs, compute_loss
        self._step += 1
        if self._stop_rollout:  # set by compute_loss on this micro-batch: discard the update it belongs to
            # (DeepSpeed steps inside backward, so there the crossing update is kept; later ones are still skipped.)
            self.optimizer.zero_grad(set_to_none=True)
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError("PPOTrainer does not return outputs")
        args, mask = self.args, inputs["completion_mask"]
        mode = "train" if self.model.training else "eval"
        logps, entropy, values = self._forward(
            model, inputs["input_ids"], inputs["attention_mask"], mask.shape[1], values=True
        )
        pg_loss, clip_fraction = ppo_policy_loss(
            logps.float(), inputs["old_logps"], inputs["advantages"], mask, args.cliprange
        )
        vf_loss, vf_clip_fraction = ppo_value_loss(
            values, inputs["old_values"], inputs["returns"], mask, args.cliprange_value
        )
        loss = pg_loss + args.vf_coef * vf_loss

        with torch.no_grad():
            # KL(pi_old || pi_theta) on the rollout's tokens (k2, as Spinning Up / baselines' approxkl)
            approx_kl = self.accelerator.gather(
                masked_mean(kl_estimate(inputs["old_logps"], logps.float(), "k2"), mask)
            ).mean()
            stats = {
                "loss/policy": pg_loss,
                "loss/value": vf_loss,
                "policy/clip_fraction": clip_fraction,
                "value/clip_fraction": vf_clip_fraction,
                "policy/approx_kl": approx_kl,
                "policy/entropy": masked_mean(entropy, mask),
                "policy/ratio": masked_mean(torch.exp(logps.float() - inputs["old_logps"]), mask),
            }
            for name, value in stats.items():
                self._metrics[mode][name].append(self.accelerator.gather(value.detach()).mean().item())
        if mode == "train" and args.early_stop_kl is not None and approx_kl.item() > args.early_stop_kl:
            self._stop_rollout = True  # the same decision on every process: approx_kl is gathered
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Evaluation = fresh generations on the eval prompts: their score and KL are logged (eval_objective/*);
        # the returned loss is minus the RLHF objective, score - beta * KL.
        rollout = self._prepare_inputs(inputs)
        loss = -(rollout["scores"] - self.kl_coef * rollout["kl"]).mean()
        return loss.detach(), None, None

    def _extra_train_logs(self) -> dict[str, float]:
        if self.weight_bytes_report and not any(h.get("memory/total_bytes") for h in self.state.log_history):
            return dict(self.weight_bytes_report)  # once, in the first log line
        return {}

    # ------------------------------------------------------------------------------------------- save / resume
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The policy is saved as usual (a plain adapter, or the model without the value head); the critic's head
        and the KL coefficient go beside it, for resuming."""
        output_dir = output_dir or self.args.output_dir
        model = self.accelerator.unwrap_model(self.model)
        # Under FSDP the head's parameters are shards: take it from the gathered state dict `save_model` passes.
        head = {k.removeprefix("value_head."): v for k, v in (state_dict or {}).items() if k.startswith("value_head.")}
        if not is_peft_model(model):
            state_dict = state_dict if state_dict is not None else model.state_dict()
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("value_head.")}
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            from safetensors.torch import save_file

            head = {k: v.detach().cpu().contiguous() for k, v in (head or model.value_head.state_dict()).items()}
            save_file(head, os.path.join(output_dir, VALUE_HEAD_FILE))
            with open(os.path.join(output_dir, PPO_STATE_FILE), "w") as f:
                json.dump({"kl_coef": self.kl_coef}, f)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        # transformers' private hook, called by `train(resume_from_checkpoint=...)` (transformers 5.x).
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        from safetensors.torch import load_file

        head_file = os.path.join(resume_from_checkpoint, VALUE_HEAD_FILE)
        if os.path.exists(head_file):
            self.accelerator.unwrap_model(self.model).value_head.load_state_dict(load_file(head_file))
        state_file = os.path.join(resume_from_checkpoint, PPO_STATE_FILE)
        if os.path.exists(state_file):
            with open(state_file) as f:
                self.kl_coef = json.load(f)["kl_coef"]
        # resuming mid-rollout: the next step generates a fresh rollout (`_prepare_inputs` sees `_rollout is None`)
