"""Scoring with models: log-probabilities of completions under a policy and its reference, reward-model scores.

Tokenization is `trl_ext.tokenization` (as TRL's trainers tokenize); every batch goes through `padded_forward`.
The reference of a PEFT model is its base with the adapters disabled (no second copy); a full model needs `ref_model`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from trl_ext.tokenization import Text, encode_completion, encode_sequence, pad_token_id

from .metrics import SequenceLogps, implicit_reward, preference_accuracy, reward_margins, sequence_logps, token_logps

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ScoreFn = Callable[[Sequence[Text], Sequence[str]], Sequence[float]]  # (prompts, completions) -> one score each


# ================================================================================================ model helpers
def _progress(iterable, desc: str, total: int | None = None, enabled: bool = True):
    """tqdm over `iterable`, quiet when disabled or when TQDM_DISABLE is set."""
    if not enabled or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes"):
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)


def _device(model: torch.nn.Module) -> torch.device:
    try:
        return next(p.device for p in model.parameters())
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


def _batches(order: list[int], batch_size: int) -> Iterator[list[int]]:
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


@torch.no_grad()
def padded_forward(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    pad_token_id: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "forward",
) -> Iterator[tuple[list[int], Tensor, Any]]:
    """The one batched forward loop of evaluation: `sequences` sorted by length, right-padded in batches of
    `batch_size`, run through `model` in eval mode (restored afterwards). Yields ``(indices, input_ids, outputs)`` per
    batch: the positions of its rows in `sequences`, their padded ids (CPU) and the model's outputs."""
    device = _device(model)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    was_training = model.training
    model.eval()
    try:
        total = math.ceil(len(order) / batch_size)
        for idx in _progress(_batches(order, batch_size), desc, total=total, enabled=progress):
            width = max(len(sequences[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_token_id, dtype=torch.long)
            attn = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : len(sequences[i])] = torch.tensor(list(sequences[i]), dtype=torch.long)
                attn[row, : len(sequences[i])] = 1
            outputs = model(input_ids=ids.to(device), attention_mask=attn.to(device))
            yield idx, ids.to(device), outputs
    finally:
        model.train(was_training)


@torch.no_grad()
def sequence_token_logps(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int = 0,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
    desc: str = "log-probs",
) -> list[Tensor]:
    """Log-probability of every completion token given its prompt, one 1-D float tensor per sequence.

    Sequences are right-padded in batches of similar length (sorted, then put back in order). With `max_length`, the
    prompt is cut from the left so prompt + completion fits (the completion is kept whole where it can be).
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    seqs: list[tuple[list[int], int]] = []
    for p, c in zip(prompt_ids, completion_ids):
        p, c = list(p), list(c)
        if max_length is not None and len(p) + len(c) > max_length:
            keep = max(max_length - len(c), 1)
            p = p[-keep:]
            c = c[: max_length - len(p)]
        seqs.append((p + c, len(p)))
    out: list[Tensor | None] = [None] * len(seqs)
    batches = padded_forward(
        model, [s for s, _ in seqs], pad_token_id=pad_token_id, batch_size=batch_size, progress=progress, desc=desc
    )
    for idx, ids, outputs in batches:
        lps = token_logps(outputs.logits[:, :-1], ids[:, 1:]).cpu()  # (b, T-1): position t predicts t+1
        for row, i in enumerate(idx):
            full, n_prompt = seqs[i]
            out[i] = lps[row, max(n_prompt - 1, 0) : len(full) - 1].clone()
    return [t if t is not None else torch.zeros(0) for t in out]


def _pad_stack(rows: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Right-pad 1-D tensors into (B, T) values and a (B, T) boolean mask."""
    width = max((len(r) for r in rows), default=0)
    values = torch.zeros((len(rows), width))
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        values[i, : len(r)] = r
        mask[i, : len(r)] = True
    return values, mask


@contextlib.contextmanager
def reference_model(model: torch.nn.Module, ref_model: torch.nn.Module | None = None) -> Iterator[torch.nn.Module]:
    """The reference to compare `model` with: `ref_model` if given, else (PEFT) `model` with its adapters disabled.

    A full model without `ref_model` raises: there is no reference to compare it with.
    """
    if ref_model is not None:
        yield ref_model
        return
    if hasattr(model, "disable_adapter") and hasattr(model, "peft_config"):
        with model.disable_adapter():
            yield model
        return
    raise ValueError(
        "no reference model: pass ref_model (the base it was trained from), or a PEFT model whose base with the "
        "adapters disabled is the reference"
    )


def has_reference(model: torch.nn.Module, ref_model: torch.nn.Module | None = None) -> bool:
    return ref_model is not None or (hasattr(model, "disable_adapter") and hasattr(model, "peft_config"))


@dataclass
class CompletionScores:
    """Log-probabilities of completions under the policy and (if available) the reference: sums, means, counts."""

    policy: SequenceLogps
    reference: SequenceLogps | None = None

    @property
    def implicit_reward(self) -> Tensor:  # (N,)
        if self.reference is None:
            raise ValueError("no reference log-probabilities")
        return implicit_reward(self.policy.sum, self.reference.sum)

    @property
    def implicit_reward_mean(self) -> Tensor:  # (N,): per-token mean of the log-ratio
        if self.reference is None:
            raise ValueError("no reference log-probabilities")
        return implicit_reward(self.policy.mean, self.reference.mean)


def completion_scores(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Text],
    completions: Sequence[Text],
    *,
    ref_model: torch.nn.Module | None = None,
    with_reference: bool = True,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
) -> CompletionScores:
    """log pi(y|x) of each completion (sum and per-token mean, EOS included) and, with `with_reference` and a
    reference available (`ref_model`, or a PEFT model's base), log pi_ref(y|x); their difference is the implicit reward
    (`CompletionScores.implicit_reward`, `.implicit_reward_mean`)."""
    encoded = [encode_completion(tokenizer, p, c) for p, c in zip(prompts, completions)]
    prompt_ids = [e[0] for e in encoded]
    completion_ids = [e[1] for e in encoded]
    return completion_scores_from_ids(
        model,
        prompt_ids,
        completion_ids,
        pad_token_id=pad_token_id(tokenizer),
        ref_model=ref_model,
        with_reference=with_reference,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
    )


def completion_scores_from_ids(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int = 0,
    ref_model: torch.nn.Module | None = None,
    with_reference: bool = True,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
) -> CompletionScores:
    """`completion_scores` on token ids (e.g. a model's own generations, which need no re-tokenization)."""
    kwargs = dict(pad_token_id=pad_token_id, batch_size=batch_size, max_length=max_length, progress=progress)
    values, mask = _pad_stack(
        sequence_token_logps(model, prompt_ids, completion_ids, desc="policy log-probs", **kwargs)
    )
    policy = sequence_logps(values, mask)
    reference = None
    if with_reference and has_reference(model, ref_model):
        with reference_model(model, ref_model) as ref:
            ref_rows = sequence_token_logps(ref, prompt_ids, completion_ids, desc="reference log-probs", **kwargs)
        reference = sequence_logps(_pad_stack(ref_rows)[0], mask)
    return CompletionScores(policy=policy, reference=reference)


@dataclass
class PairEvaluation:
    """A model's scores of held-out (prompt, chosen, rejected) pairs, and the accuracies they give."""

    chosen: CompletionScores
    rejected: CompletionScores

    def metrics(self) -> dict[str, float]:
        """- `preference_accuracy`: implicit reward (summed log-ratio) of chosen > rejected (needs a reference);
        - `preference_accuracy_mean`: the same with the per-token mean log-ratio;
        - `likelihood_accuracy`: the policy alone, per-token mean log-probability of chosen > rejected (no reference;
          ORPO's notion of reward; also meaningful before training);
        - `reference_likelihood_accuracy`: the same for the reference (the starting point);
        - `reward_margin`: mean implicit-reward margin (nats); `chosen_reward` / `rejected_reward`: their means."""
        c, r = self.chosen, self.rejected
        out = {
            "n_pairs": float(c.policy.sum.numel()),
            "likelihood_accuracy": preference_accuracy(c.policy.mean, r.policy.mean),
        }
        if c.reference is not None and r.reference is not None:
            margins = reward_margins(c.implicit_reward, r.implicit_reward)
            out.update(
                preference_accuracy=preference_accuracy(c.implicit_reward, r.implicit_reward),
                preference_accuracy_mean=preference_accuracy(c.implicit_reward_mean, r.implicit_reward_mean),
                reference_likelihood_accuracy=preference_accuracy(c.reference.mean, r.reference.mean),
                reward_margin=margins.mean().item(),
                chosen_reward=c.implicit_reward.mean().item(),
                rejected_reward=r.implicit_reward.mean().item(),
            )
        return out

    def margins(self) -> dict[str, list[float]]:
        """Per pair: the policy's and the reference's log-likelihood margin (sum over tokens), for histograms.

        ``after - before`` is the implicit-reward margin."""
        out = {"after": reward_margins(self.chosen.policy.sum, self.rejected.policy.sum).tolist()}
        if self.chosen.reference is not None and self.rejected.reference is not None:
            out["before"] = reward_margins(self.chosen.reference.sum, self.rejected.reference.sum).tolist()
        return out


def evaluate_pairs(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[dict[str, Any]],
    *,
    ref_model: torch.nn.Module | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
) -> PairEvaluation:
    """Score the chosen and rejected completion of each `{"prompt", "chosen", "rejected"}` row (policy and reference)."""
    prompts = [p["prompt"] for p in pairs]
    kwargs = dict(ref_model=ref_model, batch_size=batch_size, max_length=max_length, progress=progress)
    return PairEvaluation(
        chosen=completion_scores(model, tokenizer, prompts, [p["chosen"] for p in pairs], **kwargs),
        rejected=completion_scores(model, tokenizer, prompts, [p["rejected"] for p in pairs], **kwargs),
    )


# ----------------------------------------------------------------------------------------------- reward models
@torch.no_grad()
def reward_scores(
    reward_model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Text],
    completions: Sequence[Text],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
) -> Tensor:
    """Scalar score of each (prompt, completion) by a sequence-classification reward model, formatted as TRL 1.16's
    `RewardTrainer` trains it (prompt + completion + EOS for plain text; the chat template for messages). (N,)."""
    seqs = [encode_sequence(tokenizer, p, c) for p, c in zip(prompts, completions)]
    seqs = [ids[-max_length:] if max_length else ids for ids in seqs]
    out = torch.zeros(len(seqs))
    batches = padded_forward(
        reward_model, seqs, pad_token_id=pad_token_id(tokenizer), batch_size=batch_size, progress=progress,
        desc="reward scores",
    )  # fmt: skip
    for idx, _, outputs in batches:
        out[idx] = outputs.logits[:, 0].float().cpu()  # (b,)
    return out


def reward_model_scorer(
    reward_model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, *, batch_size: int = 16, progress: bool = True
) -> ScoreFn:
    """A `ScoreFn` that scores (prompts, completions) with `reward_model`."""

    def score(prompts: Sequence[Text], completions: Sequence[str]) -> list[float]:
        return reward_scores(
            reward_model, tokenizer, prompts, completions, batch_size=batch_size, progress=progress
        ).tolist()

    return score


def reward_model_accuracy(
    reward_model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[dict[str, Any]],
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, float]:
    """A reward model's pairwise accuracy on held-out pairs (ties one half) and its mean margin."""
    prompts = [p["prompt"] for p in pairs]
    kwargs = dict(batch_size=batch_size, progress=progress)
    chosen = reward_scores(reward_model, tokenizer, prompts, [p["chosen"] for p in pairs], **kwargs)
    rejected = reward_scores(reward_model, tokenizer, prompts, [p["rejected"] for p in pairs], **kwargs)
    return {
        "reward_model_accuracy": preference_accuracy(chosen, rejected),
        "reward_model_margin": reward_margins(chosen, rejected).mean().item() if len(pairs) else float("nan"),
    }
