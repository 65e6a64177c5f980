"""Offline GRPO on human-ranked response lists: `RankedGRPOTrainer`, a short trainer on `transformers.Trainer`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset
from torch.utils.data import Sampler, SequentialSampler
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
)
from trl.trainer.utils import (
    RepeatSampler,
    add_fused_lm_head,
    disable_dropout_in_model,
)

from trl_ext.models import causal_lm_from, tokenizer_from
from trl_ext.prefix_sharing import prefix_sharing_usable, shared_prefix_log_probs
from trl_ext.trainer_utils import (
    MetricsMixin,
    frozen_copy,
    prepare_reference_model,
    reference_context,
    wrap_policy,
)

from .groups import TOKENIZED_COLUMNS, DataCollatorForRankedGroups, group_implicit_rewards, tokenize_ranked_row
from .ranked_grpo_config import RankedGRPOConfig
from .ranked_grpo_loss import (
    RANK_REWARDS,
    aggregate_token_loss,
    group_advantages,
    group_kendall_tau,
    grpo_token_loss,
    plackett_luce_loss,
)

logger = logging.getLogger(__name__)


class RankedGRPOTrainer(MetricsMixin, Trainer):
    r"""
    GRPO (Shao et al., DeepSeekMath, arXiv:2402.03300) from human rankings, offline: the group of a prompt is the
    row's ranked responses, ranks become rewards (`rank_reward`), rewards become group-relative advantages
    (`scale_rewards`), and the policy is trained with GRPO's clipped token-level surrogate minus `beta` times the k3
    KL to the reference, aggregated as TRL's `loss_type` (`grpo`, `bnpo`, `dr_grpo`, `dapo`). `loss_type="plackett_luce"`
    trains the listwise DPO of the DPO paper (Appendix A.3) on the same groups instead.

    Why a `transformers.Trainer` and not a subclass of `trl.GRPOTrainer`: `GRPOTrainer` is built around online
    generation. Its sampler repeats each prompt `num_generations` times, its batches are generation batches that
    `_generate_and_score_completions` fills with sampled completions and reward-function scores, and every group has
    exactly `num_generations` members. Offline, nothing is generated, no reward function runs, and groups have the
    row's size, which varies. Overriding those hooks would leave little of `GRPOTrainer` but its `__init__` (which
    requires reward functions and sets up generation). So this trainer keeps TRL's *objective* (the per-token loss
    in `ranked_grpo_loss.grpo_token_loss` follows TRL 1.16's `GRPOTrainer._compute_loss` term for term, and the
    config is a `GRPOConfig` subclass, so every loss field keeps its meaning) on a plain `Trainer` with three hooks:
    `_prepare_dataset` (tokenize each group once), `get_batch_samples` (advantages, `batch` scaling and `dapo`'s token
    count over the whole accumulated batch, as TRL does over its generation batch) and `compute_loss`.

    What offline means. GRPO's ratio `pi_theta / pi_old` is an importance weight for samples drawn from `pi_old`.
    Offline responses were written by people or other models, not sampled from the policy, so the surrogate is not
    an unbiased policy-gradient estimate of the policy's expected reward: it raises the likelihood of responses
    ranked above their group's average and lowers the others, weighted by how far, on fixed text. With
    `num_iterations=1` the ratio is 1 and the loss is advantage-weighted log-likelihood (a baseline-corrected
    REINFORCE on fixed data); clipping acts only from the second pass over a batch. Nothing bounds pushing a bad
    response's log-probability down except the KL term, so keep `beta > 0` (default 0.04) or use
    `ratio_against="reference"` (HALOs: clip the ratio to the reference, a trust region around it; HALOs uses
    `epsilon=0.01`, `beta=0.01`, `advantage_epsilon=1e-2`). Evaluate on held-out prompts, and prefer the online mode
    (`trl.GRPOTrainer` with a reward model learned from the rankings) when the policy should improve on its own
    samples.

    Reference model: with PEFT, the base with the adapters disabled (no second copy in memory); if `model` is already
    a `PeftModel` (e.g. an SFT adapter), a frozen copy of its adapter named `"ref"`, as TRL's `DPOTrainer` does;
    otherwise `ref_model`, or a frozen copy of `model` when the loss needs one (`beta != 0`, `plackett_luce` or
    `ratio_against="reference"`).

    Data: `prompt`, `responses` (list of n >= 2), `ranking` (n ranks, 1 = best, equal ranks are ties), plain text or
    chat messages; `dataset_builders.load(source, method="grpo")` gives exactly these columns. A score column named
    by `rank_reward` replaces the ranks as rewards.

    Logged metrics (train and `eval_`): `kl`, `clip_ratio/*`, and `implicit_reward/kendall_tau` /
    `implicit_reward/accuracy`: how well the implicit rewards `log pi(y|x) - log pi_ref(y|x)` order each group as
    its ranking does (tau-b averaged over groups; fraction of untied pairs ordered right).

    Example:
        >>> from trl_ext import RankedGRPOConfig, RankedGRPOTrainer
        >>> from trl_ext.toy.synthetic import ToyTask
        >>> from datasets import Dataset
        >>> data = Dataset.from_list(ToyTask().rows("ranked", 64))
        >>> args = RankedGRPOConfig("out", beta=0.04, learning_rate=1e-4, use_cpu=True, bf16=False,
        ...                         gradient_checkpointing=False, report_to="none")
        >>> trainer = RankedGRPOTrainer(model, args=args, train_dataset=data, processing_class=tokenizer,
        ...                             peft_config=LoraConfig(task_type="CAUSAL_LM"))
        >>> trainer.train()
    """

    # compute_loss scales for gradient accumulation itself (dapo's normalizer spans the accumulated batch)
    loss_is_scaled_for_ga = True
    _tag_names = ["trl", "trl-ext", "grpo", "ranked-grpo"]

    def __init__(
        self,
        model: str | PreTrainedModel,
        ref_model: PreTrainedModel | None = None,
        args: RankedGRPOConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        data_collator: Callable | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple = (None, None),
        peft_config: Any | None = None,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = RankedGRPOConfig(f"{str(name).split('/')[-1]}-RankedGRPO")
        if not isinstance(args, RankedGRPOConfig):
            raise TypeError(f"args must be a RankedGRPOConfig, got {type(args).__name__}")
        if args.mode != "offline":
            raise ValueError("RankedGRPOTrainer trains offline; mode online runs trl.GRPOTrainer (recipes/grpo.py)")
        if train_dataset is None:
            raise ValueError("train_dataset is required")

        # Model and tokenizer
        if isinstance(model, str):
            model = causal_lm_from(model, **(args.model_init_kwargs or {}))
        if processing_class is None:
            processing_class = tokenizer_from(model.config._name_or_path)
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token
        model.config.pad_token_id = processing_class.pad_token_id

        # PEFT: a new adapter (reference = adapters off), or an existing one (reference = a frozen "ref" copy)
        if ref_model is None or peft_config is not None:
            model = wrap_policy(model, peft_config, bf16=args.bf16)
        if is_peft_model(model) and args.gradient_checkpointing:
            model.enable_input_require_grads()

        self.needs_reference = args.beta != 0 or args.loss_type == "plackett_luce" or args.ratio_against == "reference"
        if ref_model is None and not is_peft_model(model) and self.needs_reference:
            ref_model = frozen_copy(model)
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
        if args.disable_dropout:
            disable_dropout_in_model(model)
            if ref_model is not None:
                disable_dropout_in_model(ref_model)

        if args.rank_reward not in RANK_REWARDS and args.rank_reward not in train_dataset.column_names:
            raise ValueError(
                f"rank_reward={args.rank_reward!r} is neither one of {RANK_REWARDS} nor a column of the training data "
                f"(columns: {train_dataset.column_names})"
            )
        self._tokenizer = processing_class
        train_dataset = self._prepare_dataset(train_dataset, args, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self._prepare_dataset(v, args, k) for k, v in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = self._prepare_dataset(eval_dataset, args, "eval")
        if data_collator is None:
            data_collator = DataCollatorForRankedGroups(
                pad_token_id=processing_class.pad_token_id,
                rank_reward=args.rank_reward,
                pad_to_multiple_of=args.pad_to_multiple_of,
            )

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )

        # Per-token log-probabilities without materializing (N, T, vocab) logits: TRL 1.16's fused LM head, the one
        # DPOTrainer uses (so the Plackett-Luce loss with two responses reproduces its numbers).
        add_fused_lm_head(self.model.get_base_model() if is_peft_model(self.model) else self.model)
        if ref_model is not None:
            add_fused_lm_head(ref_model)
        self.ref_model = prepare_reference_model(self, ref_model)

        self.prefix_sharing = prefix_sharing_usable(args.prefix_sharing, self.model)
        # A separate reference model is checked on its own (the PEFT reference is the policy with adapters off)
        self.ref_prefix_sharing = self.prefix_sharing and (
            self.ref_model is None or prefix_sharing_usable(True, self.ref_model, role="the reference model")
        )
        self.epsilon_low = args.epsilon
        self.epsilon_high = args.epsilon_high if args.epsilon_high is not None else args.epsilon
        self._init_metrics()
        # num_iterations > 1: per micro-batch of the current accumulated batch, the log-probabilities of the policy
        # that started the step and of the reference, kept from the first pass and reused by the next ones.
        self._window_cache: dict[int, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    # ---------------------------------------------------------------------------------------------------- data
    def _prepare_dataset(self, dataset: Dataset, args: RankedGRPOConfig, name: str) -> Dataset:
        """Tokenize each group once: `prompt_ids`, `completion_ids` (one list per response), `ranks`, `scores`."""
        if "prompt_ids" in dataset.column_names:  # already tokenized
            return dataset
        missing = {"prompt", "responses", "ranking"} - set(dataset.column_names)
        if missing:
            raise ValueError(
                f"{name} dataset lacks {sorted(missing)}: RankedGRPOTrainer takes the `ranked` shape (prompt, "
                "responses, ranking); dataset_builders.load(source, method='grpo') produces it from any shape"
            )
        score_column = args.rank_reward if args.rank_reward not in RANK_REWARDS else None
        if score_column is not None and score_column not in dataset.column_names:
            raise ValueError(f"{name} dataset has no score column {score_column!r} (rank_reward)")
        fn_kwargs = dict(
            tokenizer=self._tokenizer,
            max_prompt_length=args.max_prompt_length,
            max_completion_length=args.max_completion_length,
            score_column=score_column,
            name=name,
        )
        return dataset.map(
            tokenize_ranked_row,
            fn_kwargs=fn_kwargs,
            with_indices=True,
            remove_columns=dataset.column_names,
            desc=f"Tokenizing {name} groups",
        )

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = list(TOKENIZED_COLUMNS)

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> Sampler | None:
        # num_iterations > 1: every accumulated batch (all processes) is yielded num_iterations times in a row, so
        # consecutive optimizer steps see the same micro-batches, as TRL's GRPO sampler does.
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.num_iterations == 1:
            return super()._get_train_sampler(dataset) if self.args.shuffle_dataset else SequentialSampler(dataset)
        global_batch = (
            self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        )
        return RepeatSampler(
            data_source=dataset,
            mini_repeat_count=1,
            batch_size=global_batch,
            repeat_count=self.args.num_iterations,
            shuffle=self.args.shuffle_dataset,
            seed=self.args.seed,
        )

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        """The micro-batches of one optimizer step, each given its `advantages` (with `scale_rewards="batch"`, one std
        over the whole accumulated batch on every process) and, for `dapo`, the token count of that whole batch."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batch_samples:
            return batch_samples, num_items_in_batch
        args = self.args
        batch_std = None
        if args.scale_rewards == "batch":
            rewards = torch.cat([b["rewards"] for b in batch_samples]).to(device, torch.float64)
            stats = self.accelerator.reduce(torch.stack([rewards.new_tensor(rewards.numel()), rewards.sum(),
                                                         (rewards**2).sum()]), reduction="sum")  # fmt: skip
            n, total, total_sq = stats
            batch_std = ((total_sq - total**2 / n) / (n - 1).clamp(min=1)).clamp(min=0).sqrt().float()
        tokens = sum(b["completion_mask"][:, 1:].sum() for b in batch_samples).to(device)
        window_tokens = self.accelerator.reduce(tokens.float(), reduction="sum") / self.accelerator.num_processes
        for i, batch in enumerate(batch_samples):
            batch["advantages"] = group_advantages(
                batch["rewards"], batch["group_index"], args.scale_rewards, args.advantage_epsilon,
                None if batch_std is None else batch_std.cpu(),
            )  # fmt: skip
            batch["window_tokens"] = window_tokens
            batch["micro_step"] = i
        return batch_samples, num_items_in_batch

    # ---------------------------------------------------------------------------------------------------- loss
    def _per_token_logps(self, model, inputs: dict[str, Any], share: bool | None = None) -> torch.Tensor:
        """`(N, T-1)` log-probabilities of each next token, 0 outside the completions (prefix-shared when `share`,
        by default the policy's setting)."""
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        share = self.prefix_sharing if share is None else share
        if share:  # one packed row per group: the prompt once (trl_ext.prefix_sharing)
            return shared_prefix_log_probs(model, inputs, labels, inputs["group_index"])[0]
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            labels=labels,
            fused_lm_head=True,
            use_cache=False,
        )
        # Prompt-learning PEFT prepends virtual tokens to the outputs; keep the positions of the real tokens
        return outputs.log_probs[:, -(inputs["input_ids"].size(1) - 1) :]

    @torch.no_grad()
    def _ref_per_token_logps(self, inputs: dict[str, Any]) -> torch.Tensor:
        if self.ref_model is not None:
            return self._per_token_logps(self.ref_model, inputs, share=self.ref_prefix_sharing)
        with reference_context(self):
            return self._per_token_logps(self.model, inputs)

    @property
    def has_reference(self) -> bool:
        return self.ref_model is not None or is_peft_model(self.accelerator.unwrap_model(self.model))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        mode = "train" if self.model.training else "eval"
        mask = inputs["completion_mask"][:, 1:].float()  # (N, T-1) tokens that carry a log-probability
        per_token_logps = self._per_token_logps(model, inputs)

        # Log-probabilities of the reference and of the policy that started the step. With num_iterations > 1 they
        # are kept from the first pass over an accumulated batch (before any update) for the later passes.
        cached = None
        if mode == "train" and args.num_iterations > 1:
            if self.state.global_step % args.num_iterations == 0:
                self._window_cache.pop(inputs["micro_step"], None)
            cached = self._window_cache.get(inputs["micro_step"])
            if cached is None and self.state.global_step % args.num_iterations != 0:
                logger.warning("num_iterations: no stored old log-probabilities (resumed mid-batch?); ratio set to 1")
        if cached is not None:
            old_per_token_logps, ref_per_token_logps = cached
        else:
            old_per_token_logps = per_token_logps.detach()
            needs_ref = self.needs_reference or (self.has_reference and mode == "eval")
            ref_per_token_logps = self._ref_per_token_logps(inputs) if needs_ref else None
            if mode == "train" and args.num_iterations > 1:
                self._window_cache[inputs["micro_step"]] = (old_per_token_logps, ref_per_token_logps)

        group_index, ranks = inputs["group_index"], inputs["ranks"]
        logps = (per_token_logps * mask).sum(-1)  # (N,)
        ref_logps = None if ref_per_token_logps is None else (ref_per_token_logps * mask).sum(-1)
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1

        if args.loss_type == "plackett_luce":
            scores = args.beta * (logps - ref_logps)
            loss = plackett_luce_loss(scores, ranks, group_index).mean() / accumulation
        else:
            advantages = inputs.get("advantages")
            if advantages is None:  # evaluation: advantages within this batch
                advantages = group_advantages(
                    inputs["rewards"], group_index, args.scale_rewards, args.advantage_epsilon
                )
            ratio_base = ref_per_token_logps if args.ratio_against == "reference" else old_per_token_logps
            out = grpo_token_loss(
                per_token_logps,
                ratio_base,
                advantages.to(per_token_logps.dtype),
                mask,
                epsilon_low=self.epsilon_low,
                epsilon_high=self.epsilon_high,
                delta=args.delta,
                importance_sampling_level=args.importance_sampling_level,
                ref_per_token_logps=ref_per_token_logps,
                beta=args.beta,
                use_bias_correction_kl=args.use_bias_correction_kl,
            )
            loss = aggregate_token_loss(
                out.per_token_loss,
                mask,
                args.loss_type,
                max_completion_length=args.max_completion_length,
                num_items_in_batch=inputs.get("window_tokens") if mode == "train" else None,
            )
            if args.loss_type != "dapo":
                loss = loss / accumulation
            self._log_grpo_metrics(mode, out, advantages, mask)

        if ref_logps is not None:
            self._log_ranking_metrics(mode, (logps - ref_logps).detach(), ranks, group_index)
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ---------------------------------------------------------------------------------------------------- metrics
    def _log_grpo_metrics(self, mode, out, advantages, mask):
        if out.kl is not None:
            self._log_mean(mode, "kl", out.kl * mask, mask.expand_as(out.kl))
        ratio = out.ratio
        adv = advantages.reshape(-1, 1) if advantages.dim() == 1 else advantages
        low = ((ratio < 1 - self.epsilon_low) & (adv < 0)).float()
        high = ((ratio > 1 + self.epsilon_high) & (adv > 0)).float()
        token_mask = mask if ratio.size(1) == mask.size(1) else mask.sum(-1, keepdim=True).clamp(max=1)
        self._log_mean(mode, "clip_ratio/low_mean", low.expand_as(token_mask), token_mask)
        self._log_mean(mode, "clip_ratio/high_mean", high.expand_as(token_mask), token_mask)
        self._log_mean(mode, "clip_ratio/region_mean", (low + high).clamp(max=1).expand_as(token_mask), token_mask)

    def _log_ranking_metrics(self, mode, implicit_rewards, ranks, group_index):
        self._log_mean(mode, "implicit_reward/kendall_tau", group_kendall_tau(implicit_rewards, ranks, group_index))
        same = group_index[:, None] == group_index[None, :]
        better = ranks[:, None] < ranks[None, :]  # [i, j]: i ranked strictly above j in the same group
        pairs = same & better
        right = (implicit_rewards[:, None] > implicit_rewards[None, :])[pairs].float()
        self._log_mean(mode, "implicit_reward/accuracy", right)
        self._log_mean(mode, "implicit_reward/mean", implicit_rewards)

    # ---------------------------------------------------------------------------------------------------- scoring
    def group_implicit_rewards(self, dataset: Dataset, batch_size: int | None = None) -> list[list[float]]:
        """Per row of `dataset` (`ranked` shape), the implicit reward of each response under the current policy:
        `log pi(y|x) - log pi_ref(y|x)` summed over the response's tokens (see the module-level `group_implicit_rewards`)."""
        return group_implicit_rewards(
            self.accelerator.unwrap_model(self.model),
            self._tokenizer,
            dataset,
            ref_model=self.ref_model,
            batch_size=batch_size or self.args.per_device_eval_batch_size,
            max_prompt_length=self.args.max_prompt_length,
            max_completion_length=self.args.max_completion_length,
        )
