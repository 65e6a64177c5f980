"""Length-aware IPO: a small subclass of TRL's `DPOTrainer` (TRL 1.16)."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset
from trl import DPOTrainer
from trl.data_utils import extract_prompt

from trl_ext.prefix_sharing import enable_pair_prefix_sharing

from .ipo_config import LengthAwareIPOConfig
from .ipo_loss import (
    auto_length_penalty,
    length_aware_ipo_loss,
    length_desensitized_weights,
    relative_length_difference,
)

logger = logging.getLogger(__name__)

LENGTH_COLUMNS = ("chosen_length", "rejected_length")


class LengthAwareIPOTrainer(DPOTrainer):
    """IPO with length-aware margins and targets (see [`LengthAwareIPOConfig`] and `trl_ext.ipo.ipo_loss`).

    The only change w.r.t. `DPOTrainer(loss_type=["ipo"])` is the per-pair loss, `(h - (1/(2*beta) - alpha*d))^2`
    with `h` normalized per `length_normalization`. Everything else is TRL's: tokenization, collation, the policy and
    reference forward passes (PEFT adapters disabled, or a reference model, or precomputed reference log-probs),
    LD-DPO weighting, and every metric TRL logs. With `length_normalization="mean"`, `length_penalty=0` and no
    `ld_alpha`, the loss and its gradients are TRL's IPO loss (`tests/test_ipo_trainer.py` checks it).

    How: TRL 1.16's `DPOTrainer._compute_loss` computes its loss in one private method, with no hook for a
    per-pair target. Rather than copying that method, `_compute_loss` here runs TRL's unchanged while a forward
    hook keeps the per-token log-probabilities of the policy and reference calls TRL makes; the IPO loss is then
    recomputed from them with `length_aware_ipo_loss` and TRL's scalar is dropped (a few element-wise operations;
    see `benchmarks/ipo_overhead.py`). The lengths are kept through TRL's data pipeline by three small additions:
    `_prepare_dataset` adds/validates the length columns, `_set_signature_columns_if_needed` keeps them, and the
    collator is wrapped to pass them on as `(B,)` tensors. Metrics logged beside TRL's: `length/chosen_minus_rejected`
    (mean `l_w - l_l`, in the length source's unit), `length/relative_difference` (mean `d`), `ipo/target` (mean
    length-adjusted target) and `ipo/margin` (mean `h`).

    Example:
        >>> from trl_ext import LengthAwareIPOConfig, LengthAwareIPOTrainer
        >>> args = LengthAwareIPOConfig("ipo-out", beta=0.5, length_penalty="auto")
        >>> trainer = LengthAwareIPOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", args=args, train_dataset=pairs)
        >>> trainer.train()
    """

    _tag_names = ["trl", "trl-ext", "ipo"]
    _name = "Length-aware IPO"
    _paper = {
        "title": "A General Theoretical Paradigm to Understand Learning from Human Preferences",
        "id": "2310.12036",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @inproceedings{azar2024general,
                title        = {{A General Theoretical Paradigm to Understand Learning from Human Preferences}},
                author       = {Mohammad Gheshlaghi Azar and Zhaohan Daniel Guo and Bilal Piot and R{\\'{e}}mi Munos and Mark Rowland and Michal Valko and Daniele Calandriello},
                year         = 2024,
                booktitle    = {International Conference on Artificial Intelligence and Statistics, {AISTATS} 2024},
            }"""),
    }

    args: LengthAwareIPOConfig

    def __init__(self, model, ref_model=None, args: LengthAwareIPOConfig | None = None, **kwargs: Any):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = LengthAwareIPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-IPO")
        elif not isinstance(args, LengthAwareIPOConfig):
            raise TypeError(
                f"LengthAwareIPOTrainer needs a LengthAwareIPOConfig, got {type(args).__name__}. For TRL's IPO use "
                "trl.DPOTrainer with DPOConfig(loss_type=['ipo'])."
            )
        super().__init__(model, ref_model, args, **kwargs)
        if self._is_vision_dataset:
            raise NotImplementedError("LengthAwareIPOTrainer supports text datasets only.")
        self.data_collator = DataCollatorWithLengths(self.data_collator)
        self.length_penalty = self._resolve_length_penalty()
        # The policy is called through `self.model` (or a wrapper around it: DDP, DeepSpeed, FSDP), and so is the
        # reference when it is the PEFT base with adapters off; otherwise the reference is `self.ref_model`.
        self._fused_calls = _FusedCallRecorder()
        for module in (self.model, self.ref_model):
            if module is not None:
                module.register_forward_hook(self._fused_calls, with_kwargs=True)
        # Its output hook goes first, so the recorder above sees the per-token outputs in TRL's layout
        self.prefix_sharing = enable_pair_prefix_sharing(self)

    # --- data: keep the lengths through TRL's tokenization and collation -------------------------------------------
    # Depends on TRL 1.16's private `_prepare_dataset(dataset, processing_class, args, dataset_name)`, which keeps
    # extra columns through its `map`s, and `_set_signature_columns_if_needed()` (tests/test_ipo_trainer.py).
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if args.length_source == "declared":
            dataset = _check_declared_lengths(dataset, args, dataset_name)
        elif args.length_source == "chars":
            dataset = _add_char_lengths(dataset, args, dataset_name)
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self.args.length_source != "tokens" and LENGTH_COLUMNS[0] not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, *LENGTH_COLUMNS]

    def compute_ref_log_probs(self, model, inputs):
        # TRL passes every batch key it does not know to the model; the lengths are not model inputs.
        return super().compute_ref_log_probs(model, _without_lengths(inputs))

    def _resolve_length_penalty(self) -> float:
        if self.args.length_penalty != "auto":
            return float(self.args.length_penalty)
        dataset = self.train_dataset
        if not isinstance(dataset, Dataset):
            raise ValueError("`length_penalty='auto'` needs a map-style training dataset (not an IterableDataset).")
        if self.args.length_source == "tokens":  # the counts the loss will see: after TRL's truncation and shift
            count = lambda prompt, completion: tokens_with_logps(  # noqa: E731
                len(prompt), len(completion), self.args.max_length, self.args.truncation_mode
            )
            prompts = dataset["prompt_ids"]
            chosen = [count(p, c) for p, c in zip(prompts, dataset["chosen_ids"])]
            rejected = [count(p, r) for p, r in zip(prompts, dataset["rejected_ids"])]
        else:
            chosen, rejected = list(dataset[LENGTH_COLUMNS[0]]), list(dataset[LENGTH_COLUMNS[1]])
        d = relative_length_difference(torch.tensor(chosen), torch.tensor(rejected))
        value = auto_length_penalty(d, self.beta)
        logger.info(
            "length_penalty='auto': %.4f (mean relative length difference %.3f over %d pairs)",
            value,
            float(d.mean()),
            len(d),
        )
        return value

    # --- loss -----------------------------------------------------------------------------------------------------
    # Depends on TRL 1.16's private `DPOTrainer._compute_loss(model, inputs, return_outputs)`: it calls the policy,
    # then the reference unless reference log-probs are precomputed, both with `fused_lm_head=True` (outputs with
    # per-token `log_probs`), logs its metrics to `self._metrics`, and returns its loss. A check below and
    # tests/test_trl_internals.py fail loudly if that changes.
    def _compute_loss(self, model, inputs, return_outputs):
        lengths = [inputs[key] for key in LENGTH_COLUMNS if key in inputs]
        inputs = _without_lengths(inputs)
        with self._fused_calls as calls:
            result = super()._compute_loss(model, inputs, return_outputs)
        expected = 1 if self.precompute_ref_logps else 2
        if len(calls) != expected:
            raise RuntimeError(
                f"TRL's DPOTrainer._compute_loss made {len(calls)} forward call(s) with `fused_lm_head=True`; "
                f"LengthAwareIPOTrainer expects {expected} (policy, then reference). It supports trl 1.16 only."
            )

        shift_completion_mask = inputs["completion_mask"][:, 1:]  # (2B, T-1), the tokens that have a log-prob
        seq_len = shift_completion_mask.size(1)
        weights = length_desensitized_weights(shift_completion_mask, self.ld_alpha)  # (2B, T-1)
        # Prompt-learning PEFT prepends virtual tokens to the outputs; keep the positions of the real tokens (as TRL)
        logps = (calls[0].log_probs[:, -seq_len:] * weights).sum(dim=1)  # (2B,)
        if self.precompute_ref_logps:  # already LD-weighted by TRL's `compute_ref_log_probs`
            ref_logps = torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]]).to(logps)
        else:
            ref_logps = (calls[1].log_probs[:, -seq_len:] * weights).sum(dim=1)
        chosen_logratios, rejected_logratios = (logps - ref_logps).chunk(2)  # (B,) each
        # Effective counts of the tokens that carry a log-prob, (B,) each. TRL's IPO divides by the unshifted
        # completion mask, the same count unless a prompt is empty (then its first token has no log-prob).
        chosen_tokens, rejected_tokens = weights.sum(dim=1).chunk(2)
        if self.args.length_source == "tokens":
            chosen_lengths, rejected_lengths = shift_completion_mask.sum(dim=1).chunk(2)
        elif len(lengths) == 2:
            chosen_lengths, rejected_lengths = lengths
        else:
            raise ValueError(
                f"length_source={self.args.length_source!r} needs `chosen_length` and `rejected_length` in the batch; "
                "this batch has none (a custom data collator that drops them?)."
            )
        out = length_aware_ipo_loss(
            chosen_logratios,
            rejected_logratios,
            chosen_tokens,
            rejected_tokens,
            chosen_lengths,
            rejected_lengths,
            beta=self.beta,
            length_penalty=self.length_penalty,
            normalization=self.args.length_normalization,
        )
        loss = out.losses.mean()
        if self.aux_loss_enabled:  # MoE load balancing, as TRL adds it to its own loss
            loss = loss + self.router_aux_loss_coef * calls[0].aux_loss

        # Our metrics, beside TRL's; one gather for all four
        mode = "train" if self.model.training else "eval"
        stats = torch.stack(
            [
                (chosen_lengths - rejected_lengths).to(out.margins),
                out.relative_length_differences,
                out.targets,
                out.margins,
            ],
            dim=1,
        ).detach()  # (B, 4)
        means = self.accelerator.gather(stats).mean(dim=0).tolist()
        for name, value in zip(
            ("length/chosen_minus_rejected", "length/relative_difference", "ipo/target", "ipo/margin"), means
        ):
            self._metrics[mode][name].append(value)

        return (loss, result[1]) if return_outputs else loss


@dataclass
class DataCollatorWithLengths:
    """Wraps a preference collator (TRL's `DataCollatorForPreference` by default) and passes the declared lengths on.

    Adds `chosen_length` and `rejected_length` as `(B,)` float tensors when the examples carry them; the wrapped
    collator ignores keys it does not know.
    """

    collator: Callable[[list[dict[str, Any]]], dict[str, Any]]

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        if all(key in examples[0] for key in LENGTH_COLUMNS):
            for key in LENGTH_COLUMNS:
                batch[key] = torch.tensor([float(example[key]) for example in examples])
        return batch


class _FusedCallRecorder:
    """A forward hook that, inside `with recorder as calls:`, keeps the outputs of `fused_lm_head=True` calls."""

    def __init__(self):
        self._calls: list | None = None

    def __enter__(self) -> list:
        self._calls = []
        return self._calls

    def __exit__(self, *exc) -> None:
        self._calls = None

    def __call__(self, module, args, kwargs, output):
        if self._calls is not None and kwargs.get("fused_lm_head"):
            self._calls.append(output)


def tokens_with_logps(prompt_len: int, completion_len: int, max_length: int | None, truncation_mode: str) -> int:
    """Completion tokens of one sequence that carry a log-probability in TRL 1.16's DPO batch: the collator cuts
    prompt + completion to `max_length` (`keep_start` keeps the head, `keep_end` the tail), and the first kept token
    has no log-probability (it predicts nothing from before it). What `_compute_loss` counts per row, without a batch."""
    total = prompt_len + completion_len
    start = 0
    if max_length is not None and total > max_length:
        if truncation_mode == "keep_end":
            start = total - max_length
        else:
            total = max_length
    kept = max(0, total - max(start, prompt_len))  # completion tokens in [start, total)
    first_is_completion = start >= prompt_len and kept > 0
    return kept - int(first_is_completion)


def _without_lengths(inputs: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in inputs.items() if key not in LENGTH_COLUMNS}


def _map_kwargs(dataset, args, description: str) -> dict[str, Any]:
    # `IterableDataset.map` takes neither `num_proc` nor `desc`
    return {"num_proc": args.dataset_num_proc, "desc": description} if isinstance(dataset, Dataset) else {}


def _check_declared_lengths(dataset, args, dataset_name: str):
    columns = dataset.column_names or list(next(iter(dataset)))
    missing = [key for key in LENGTH_COLUMNS if key not in columns]
    if missing:
        raise ValueError(
            f"length_source='declared' needs the columns {list(LENGTH_COLUMNS)} (the `pairs_with_lengths` shape), "
            f"but the {dataset_name} dataset lacks {missing}; its columns are {columns}. Load the data with "
            "dataset_builders.load(..., method='ipo') from a pairs_with_lengths file, or set length_source to "
            "'tokens' or 'chars' to measure the completions instead."
        )

    def check(batch, indices):
        for key in LENGTH_COLUMNS:
            for index, value in zip(indices, batch[key]):
                if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                    raise ValueError(
                        f"{dataset_name} dataset, row {index + 1}: `{key}` must be a non-negative number, got {value!r}."
                    )
        return {key: [float(value) for value in batch[key]] for key in LENGTH_COLUMNS}

    return dataset.map(
        check, batched=True, with_indices=True, **_map_kwargs(dataset, args, f"Checking {dataset_name} lengths")
    )


def _text_length(value) -> int:
    """Characters of a completion: a string, or the text content of a list of chat messages."""
    if isinstance(value, str):
        return len(value)
    total = 0
    for message in value:
        content = message["content"]
        if isinstance(content, str):
            total += len(content)
        else:  # a list of typed parts
            total += sum(len(part.get("text") or "") for part in content)
    return total


def _add_char_lengths(dataset, args, dataset_name: str):
    if "prompt" not in (dataset.column_names or list(next(iter(dataset)))):
        # Implicit-prompt data: split the shared prompt off first (as TRL would), so only completions are counted
        dataset = dataset.map(extract_prompt, **_map_kwargs(dataset, args, f"Extracting prompt from {dataset_name}"))

    def count(example):
        return {"chosen_length": _text_length(example["chosen"]), "rejected_length": _text_length(example["rejected"])}

    return dataset.map(count, **_map_kwargs(dataset, args, f"Counting {dataset_name} characters"))
