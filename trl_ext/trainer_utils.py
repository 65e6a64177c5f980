"""What our own trainers (`PPOTrainer`, `RankedGRPOTrainer`) share: the reference policy and metric logging.

Reference policy, one rule for both:

- a new adapter (`peft_config` given): the base with the adapter disabled, no second copy in memory;
- an existing adapter (`model` is already a `PeftModel`, e.g. from SFT): a frozen copy of it named ``"ref"``, as
  TRL's `DPOTrainer` and `RLOOTrainer` do, so the reference is where training starts;
- no PEFT: `ref_model`, else a frozen copy of `model`; prepared for DeepSpeed, FSDP or plain data parallel the way
  TRL prepares its own reference models (`prepare_reference_model`).

Metrics: `MetricsMixin` keeps per-mode lists of values, averages them into each `log` call (``eval_`` prefixed while
evaluating) and clears them, as TRL's trainers do.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from accelerate.utils import is_peft_model
from torch import nn

REFERENCE_ADAPTER = "ref"


def wrap_policy(model: nn.Module, peft_config: Any | None, *, bf16: bool = False) -> nn.Module:
    """The trainable policy: `model` with a new adapter from `peft_config`, or, for a `PeftModel`, the same model with a
    frozen copy of its trained adapter added as ``"ref"`` (the reference). With a 4/8-bit base and `bf16`, the new
    adapter is kept in bfloat16, as TRL's trainers keep QLoRA adapters."""
    if peft_config is not None:
        if is_peft_model(model):
            raise ValueError("pass either a PeftModel or a peft_config, not both")
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
        quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
        if quantized and bf16:
            for param in model.parameters():
                if param.requires_grad:
                    param.data = param.data.to(torch.bfloat16)
        return model
    if is_peft_model(model) and REFERENCE_ADAPTER not in model.peft_config:
        model.add_adapter(REFERENCE_ADAPTER, model.peft_config["default"])
        for name, param in model.named_parameters():
            if ".default." in name:
                model.get_parameter(name.replace(".default.", f".{REFERENCE_ADAPTER}.")).data.copy_(param.data)
    return model


def trainable_without_mixed_precision(model: nn.Module, args: Any) -> int:
    """Put a 4/8-bit model's bfloat16 trainable parameters back in float32 when the run has no bf16/fp16 mixed
    precision; returns how many were cast.

    TRL 1.16's trainers cast every trainable parameter of a quantized model to bfloat16 (QLoRA's recommendation,
    which assumes bf16 autocast on a GPU). In a float32 run (a CPU) LoRA layers cope, but a trained head outside them
    (the reward model's ``score``) meets float32 activations with bfloat16 weights and the first forward fails.
    """
    model = getattr(model, "module", model)
    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    if not quantized or getattr(args, "bf16", False) or getattr(args, "fp16", False):
        return 0
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype == torch.bfloat16:
            param.data = param.data.to(torch.float32)
            cast += 1
    return cast


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen, eval-mode deep copy of `model` (the reference of a full fine-tune)."""
    ref = copy.deepcopy(model)
    # A forward patched onto the instance by an earlier TRL trainer (fused LM head) closes over the original model's
    # forward, which a deep copy keeps: drop it, so the copy runs its own weights.
    ref.__dict__.pop("forward", None)
    return ref.eval().requires_grad_(False)


def reference_adapter(model: nn.Module) -> str | None:
    """The adapter that acts as the reference of a PEFT policy: ``"ref"`` if present, else None (adapters off)."""
    return REFERENCE_ADAPTER if REFERENCE_ADAPTER in getattr(model, "peft_config", {}) else None


def reference_context(trainer: Any) -> AbstractContextManager:
    """Context in which `trainer.model` computes the reference policy: nothing to do with a separate `ref_model`;
    a PEFT policy switches to its ``"ref"`` adapter or disables its adapter (TRL's `use_adapter`)."""
    if getattr(trainer, "ref_model", None) is not None:
        return nullcontext()
    from trl.trainer.utils import use_adapter

    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    if not is_peft_model(unwrapped):
        raise ValueError("no reference model: pass ref_model, or train with a peft_config")
    return use_adapter(unwrapped, adapter_name=reference_adapter(unwrapped))


def prepare_reference_model(trainer: Any, model: nn.Module | None) -> nn.Module | None:
    """A frozen model (reference, reward model) placed for the trainer's engine: DeepSpeed (`prepare_deepspeed`),
    FSDP (`prepare_fsdp`) or accelerate's evaluation-mode preparation, as TRL's trainers do."""
    if model is None:
        return None
    model.eval().requires_grad_(False)
    if trainer.is_deepspeed_enabled:
        from trl.models import prepare_deepspeed

        return prepare_deepspeed(model, trainer.accelerator)
    if trainer.is_fsdp_enabled:
        from trl.models import prepare_fsdp

        return prepare_fsdp(model, trainer.accelerator)
    return trainer.accelerator.prepare_model(model, evaluation_mode=True)


class MetricsMixin:
    """Per-mode metric lists averaged into `Trainer.log` (put it before `Trainer` in the bases)."""

    def _init_metrics(self) -> None:
        self._metrics: dict[str, defaultdict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}  # fmt: skip

    @property
    def _mode(self) -> str:
        return "train" if self.model.training else "eval"

    def _record(self, mode: str, name: str, value: float) -> None:
        self._metrics[mode][name].append(float(value))

    def _log_mean(self, mode: str, name: str, values: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Record the mean of `values` over all processes (NaNs skipped), optionally weighted."""
        values = values.detach().float().reshape(-1)
        weights = torch.ones_like(values) if weights is None else weights.detach().float().reshape(-1)
        keep = ~torch.isnan(values)
        stats = torch.stack([(values[keep] * weights[keep]).sum(), weights[keep].sum()])
        total, count = self.accelerator.reduce(stats, reduction="sum").tolist()
        if count > 0:
            self._metrics[mode][name].append(total / count)

    def _extra_train_logs(self) -> dict[str, float]:
        """Values added to a training log line besides the averaged metrics (none by default)."""
        return {}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = self._mode
        metrics = {key: sum(val) / len(val) for key, val in self._metrics[mode].items() if val}
        if mode == "eval":
            metrics = {f"eval_{key}": val for key, val in metrics.items()}
        else:
            metrics.update(self._extra_train_logs())
        logs.update(metrics)  # in place: `evaluate` returns this dict, so the metrics reach the caller (and the card)
        super().log(logs, start_time)
        self._metrics[mode].clear()
