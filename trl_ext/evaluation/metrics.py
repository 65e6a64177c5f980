"""Pure evaluation metrics: typed functions of tensors (no model), each tested against hand-computed numbers.

Definitions (as TRL's trainers use them):

- implicit reward: ``r(x, y) = log pi(y|x) - log pi_ref(y|x)``, summed over the completion tokens (EOS included);
  the per-token mean divides by the completion's token count (what IPO/ORPO-style length normalization uses).
- preference accuracy on pairs: the fraction of pairs whose chosen completion gets the higher score; a tie counts
  one half (so a model equal to its reference scores exactly 0.5).
- win rate: the fraction of prompts where the policy's generation scores higher than the reference's; ties one half.
- KL to the reference: on the policy's own samples, the mean over generated tokens of a `trl_ext.ops.kl_estimate`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from trl_ext.ops import KLEstimator, kl_estimate


def token_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """Log-probability of each label under `logits`: ``log_softmax(logits)[..., label]``.

    `logits` (B, T, V) must already be aligned with `labels` (B, T) (i.e. logits of position t predict label t).
    Computed in float32. Returns (B, T).
    """
    logps = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    return logps.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)  # (B, T)


@dataclass(frozen=True)
class SequenceLogps:
    """Per-sequence sum and per-token mean of token log-probabilities over a mask, and the token count."""

    sum: Tensor  # (B,)
    mean: Tensor  # (B,)
    count: Tensor  # (B,)


def sequence_logps(token_logps: Tensor, mask: Tensor) -> SequenceLogps:
    """Sum and mean over the positions where `mask` (B, T) is true. An empty mask gives sum 0 and mean 0."""
    mask = mask.to(token_logps.dtype)
    total = (token_logps * mask).sum(-1)  # (B,)
    count = mask.sum(-1)  # (B,)
    return SequenceLogps(sum=total, mean=total / count.clamp(min=1.0), count=count)


def implicit_reward(policy_logps: Tensor, ref_logps: Tensor) -> Tensor:
    """DPO's implicit reward (without beta): ``log pi(y|x) - log pi_ref(y|x)``, elementwise. (B,) -> (B,)."""
    return policy_logps - ref_logps


def reward_margins(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Per-pair margin ``score(chosen) - score(rejected)``. (B,) -> (B,)."""
    return chosen - rejected


def preference_accuracy(chosen: Tensor, rejected: Tensor, tie: float = 0.5) -> float:
    """Fraction of pairs with ``chosen > rejected``; a tie counts `tie` (default one half). NaN for no pairs."""
    if chosen.numel() == 0:
        return float("nan")
    wins = (chosen > rejected).float() + tie * (chosen == rejected).float()
    return wins.mean().item()


def win_rate(policy_scores: Tensor, reference_scores: Tensor, tie: float = 0.5) -> float:
    """Fraction of prompts where the policy's generation outscores the reference's; a tie counts `tie`."""
    return preference_accuracy(policy_scores, reference_scores, tie=tie)


def pairwise_auc(positive: Tensor, negative: Tensor, tie: float = 0.5) -> float:
    """Probability that a random `positive` score exceeds a random `negative` one (ties `tie`): the preference
    accuracy over all (good, bad) pairs of unpaired, labelled data (KTO's `binary` shape)."""
    if positive.numel() == 0 or negative.numel() == 0:
        return float("nan")
    diff = positive[:, None] - negative[None, :]  # (P, N)
    return ((diff > 0).float() + tie * (diff == 0).float()).mean().item()


@dataclass(frozen=True)
class KLEstimate:
    """KL(pi || pi_ref) estimated on samples from pi: per token (pooled over all tokens) and per sequence."""

    per_token: float
    per_sequence: float
    per_sequence_values: Tensor  # (B,)


def kl_summary(policy_logps: Tensor, ref_logps: Tensor, mask: Tensor, estimator: KLEstimator = "k1") -> KLEstimate:
    """KL of the policy to the reference from the log-probabilities (B, T) both give the policy's sampled tokens.

    The per-token values are `trl_ext.ops.kl_estimate` (k1: ``log pi - log pi_ref``, unbiased, single values can be
    negative; k3: unbiased and never negative; k2: biased, low variance). `per_token` pools all masked tokens:
    ``sum(kl * mask) / sum(mask)``; `per_sequence` is the mean over sequences of the summed estimate.
    """
    per_token_values = kl_estimate(policy_logps.float(), ref_logps.float(), estimator)  # (B, T)
    mask = mask.float()
    per_sequence = (per_token_values * mask).sum(-1)  # (B,)
    tokens = mask.sum()
    return KLEstimate(
        per_token=(per_sequence.sum() / tokens).item() if tokens > 0 else float("nan"),
        per_sequence=per_sequence.mean().item() if per_sequence.numel() else float("nan"),
        per_sequence_values=per_sequence,
    )


def describe(values: Sequence[float] | Tensor) -> dict[str, float]:
    """mean, std (population), min, median, max of `values` (all NaN when empty)."""
    xs = [float(v) for v in (values.tolist() if isinstance(values, Tensor) else values)]
    if not xs:
        nan = float("nan")
        return {"mean": nan, "std": nan, "min": nan, "median": nan, "max": nan}
    return {
        "mean": statistics.fmean(xs),
        "std": statistics.pstdev(xs),
        "min": min(xs),
        "median": statistics.median(xs),
        "max": max(xs),
    }


def mean_and_spread(values: Sequence[float]) -> dict[str, float]:
    """Across seeds: mean, sample standard deviation (Bessel; 0 for one value), min, max and n. NaNs are left out."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {
        "mean": statistics.fmean(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
    }
