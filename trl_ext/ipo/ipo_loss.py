"""Length-aware IPO losses: pure, typed functions of tensors, one per step of the computation.

Notation (one preference pair per row; ``B`` pairs, ``T`` positions):

- ``s_w``, ``s_l``: summed log-ratios ``sum_t [log pi(y_t | .) - log pi_ref(y_t | .)]`` of the chosen (winning) and
  rejected (losing) completions, over their completion tokens (LD-weighted when ``ld_alpha`` is set).
- ``n_w``, ``n_l``: the number of tokens those sums run over (the effective, down-weighted count with ``ld_alpha``).
- ``l_w``, ``l_l``: the lengths the length term uses, in any unit (declared words, tokens, characters).
- ``tau``: IPO's regularization strength, TRL's ``beta``.

IPO (Azar et al., "A General Theoretical Paradigm to Understand Learning from Human Preferences",
arXiv:2310.12036, Eq. 17) regresses the log-ratio margin ``h`` onto the constant ``1/(2 tau)``::

    L_IPO = (h - 1/(2 tau))^2,    h = s_w - s_l                        (the paper: sequence level)

TRL's ``loss_type="ipo"`` divides each sum by its token count, ``h = s_w/n_w - s_l/n_l``; the target is then a
per-token margin (``beta=0.1`` asks for 5 nats per token). The functions here offer three normalizations of ``h``
and a length-regularized target ``1/(2 tau) - alpha * d``, with ``d`` the pair's relative length difference.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

Normalization = Literal["mean", "sum", "pair_mean"]
NORMALIZATIONS: tuple[str, ...] = ("mean", "sum", "pair_mean")

# Lengths and token counts are never negative; this only keeps 0/0 at 0 (and its gradient finite).
_EPS = 1e-8


class IPOLoss(NamedTuple):
    """Per-pair results of :func:`length_aware_ipo_loss`; every field has shape ``(B,)``."""

    losses: Tensor  # (h - target)^2
    margins: Tensor  # h, in the units of the chosen normalization
    targets: Tensor  # 1/(2 tau) - alpha * d
    relative_length_differences: Tensor  # d


def length_desensitized_weights(completion_mask: Tensor, ld_alpha: float | None = None) -> Tensor:
    """Per-token weights of LD-DPO (Liu et al., "Length Desensitization in Direct Preference Optimization",
    arXiv:2409.06411): within a pair, tokens up to the shorter completion's length (the shared, "public" length)
    count fully; the longer completion's excess tokens count ``ld_alpha``. ``ld_alpha=None`` (or 1) is plain summing.

    Args:
        completion_mask: ``(2B, T)``, 1 on the completion tokens that carry a log-probability (TRL's shifted mask);
            rows ``[:B]`` are the chosen completions, rows ``[B:]`` the rejected ones, pair ``i`` = rows ``i, B+i``.
        ld_alpha: weight of the excess tokens, in [0, 1].

    Returns:
        ``(2B, T)`` float weights. ``(per_token * w).sum(-1)`` is the LD log-likelihood, ``w.sum(-1)`` the effective
        token count ``shared + ld_alpha * (n - shared)`` that the LD log-likelihood should be averaged over.
    """
    mask = completion_mask.float()
    if ld_alpha is None:
        return mask
    lengths = mask.sum(dim=1)  # (2B,)
    shared = torch.minimum(*lengths.chunk(2)).repeat(2)  # (2B,) each pair's shorter length, for both rows
    position = mask.cumsum(dim=1)  # (2B, T) 1-based index among completion tokens
    return mask * torch.where(position <= shared[:, None], 1.0, ld_alpha)


def relative_length_difference(chosen_lengths: Tensor, rejected_lengths: Tensor) -> Tensor:
    """``d = (l_w - l_l) / ((l_w + l_l) / 2)``, unit-free, in ``[-2, 2]``; 0 when both lengths are 0. Shapes ``(B,)``."""
    chosen_lengths, rejected_lengths = chosen_lengths.float(), rejected_lengths.float()
    mean_length = (chosen_lengths + rejected_lengths) / 2
    return (chosen_lengths - rejected_lengths) / mean_length.clamp(min=_EPS)


def ipo_margin(
    chosen_logratios: Tensor,
    rejected_logratios: Tensor,
    chosen_tokens: Tensor,
    rejected_tokens: Tensor,
    normalization: Normalization = "mean",
) -> Tensor:
    """The margin ``h`` that IPO regresses, under one of three normalizations. All shapes ``(B,)``.

    - ``"mean"``: ``h = s_w/n_w - s_l/n_l``, average log-ratio per token on each side (TRL's ``loss_type="ipo"``).
    - ``"sum"``: ``h = s_w - s_l``, the paper's sequence-level margin (Azar et al., Eq. 17).
    - ``"pair_mean"``: ``h = (s_w - s_l) / ((n_w + n_l)/2)``, both sides divided by the pair's mean token count, so
      they share one scale and each token moves ``h`` by the same amount on both sides.
    """
    if normalization == "sum":
        return chosen_logratios - rejected_logratios
    if normalization == "mean":
        return chosen_logratios / chosen_tokens.clamp(min=_EPS) - rejected_logratios / rejected_tokens.clamp(min=_EPS)
    if normalization == "pair_mean":
        pair_tokens = (chosen_tokens + rejected_tokens) / 2
        return (chosen_logratios - rejected_logratios) / pair_tokens.clamp(min=_EPS)
    raise ValueError(f"length_normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def length_adjusted_target(beta: float, length_penalty: float, relative_length_differences: Tensor) -> Tensor:
    """IPO's regression target with a length term, the IPO counterpart of R-DPO: ``1/(2 tau) - alpha * d``. ``(B,)``.

    Derivation of the sign. R-DPO (Park et al., "Disentangling Length from Quality in Direct Preference
    Optimization", arXiv:2403.19159) adds a length penalty to the RLHF objective,
    ``max_pi E[r(x, y) - alpha_R |y|] - beta KL(pi || pi_ref)``. Its optimum is
    ``pi*(y|x) ~ pi_ref(y|x) exp((r(x, y) - alpha_R |y|) / beta)``, so the reward the policy implies is
    ``r = beta log(pi/pi_ref) + alpha_R |y| + beta log Z(x)``. Put into Bradley-Terry, the preference probability
    is ``sigmoid(beta h + alpha_R (|y_w| - |y_l|))``: the length difference sits in the margin with a plus sign, so
    a longer winner already "explains" part of the preference and the policy's own margin ``beta h`` is asked for
    less. IPO replaces the logistic link by a regression of ``tau h`` onto 1/2 (Eq. 17 is
    ``(h - 1/(2 tau))^2 = tau^-2 (tau h - 1/2)^2``). Adding the length term beside ``tau h`` in the same way gives
    ``(tau h + alpha_R d - 1/2)^2 ~ (h - (1/(2 tau) - alpha d))^2`` with ``alpha = alpha_R / tau``. Hence the minus
    sign: for ``alpha > 0`` a pair whose winner is longer (``d > 0``) gets a smaller target (length cannot earn the
    policy margin), and a pair whose winner is shorter gets a larger one. ``alpha`` is in the units of ``h``
    (nats per token for ``"mean"``), and ``d`` is unit-free (see :func:`relative_length_difference`).
    """
    return 1 / (2 * beta) - length_penalty * relative_length_differences


def auto_length_penalty(relative_length_differences: Tensor, beta: float, min_target_fraction: float = 0.1) -> float:
    """``length_penalty="auto"``: the least-squares slope, constrained so every target stays on the preferred side.

    Unconstrained, ``alpha_hat = (1/(2 tau)) * mean(d) / mean(d^2)`` is the ``alpha`` that best explains IPO's
    constant target by length alone, ``min_alpha sum_i (1/(2 tau) - alpha d_i)^2``: the adjusted target
    ``1/(2 tau) - alpha_hat d`` is then orthogonal to ``d`` over the data (the length-explained part of the target is
    removed). It is about 0 when winners are not longer on average, and 0 when every pair has equal lengths.

    That fit has no intercept, so when winners are consistently longer it can push a pair's target to zero or below,
    i.e. ask the policy to prefer the *rejected* answer (``d = [1, 1, 1, 1, 1.92]``, ``tau = 0.5``: ``alpha_hat =
    0.77`` and a target of -0.479 for the last pair). The penalty is therefore the least-squares solution under the
    constraint that every target keeps at least ``min_target_fraction`` of ``1/(2 tau)``: the objective is a convex
    parabola in ``alpha``, so the constrained minimum is ``alpha_hat`` clipped to the interval
    ``[-(1 - f) / (2 tau max(-d)), (1 - f) / (2 tau max(d))]`` (``f = min_target_fraction``). Each pair still
    asks for its preference, never against it.

    ``relative_length_differences``: ``(N,)``, over the whole training set (lengths as the loss sees them).
    """
    if not 0.0 <= min_target_fraction < 1.0:
        raise ValueError(f"min_target_fraction must be in [0, 1), got {min_target_fraction}")
    d = relative_length_differences.double()
    second_moment = (d**2).mean()
    if d.numel() == 0 or second_moment == 0:
        return 0.0
    target = 1 / (2 * beta)
    alpha = float(d.mean() / second_moment * target)
    room = (1 - min_target_fraction) * target  # how far alpha * d_i may lower a target
    largest_positive, largest_negative = float(d.max()), float(-d.min())
    if largest_positive > 0:
        alpha = min(alpha, room / largest_positive)
    if largest_negative > 0:
        alpha = max(alpha, -room / largest_negative)
    return alpha


def length_aware_ipo_loss(
    chosen_logratios: Tensor,
    rejected_logratios: Tensor,
    chosen_tokens: Tensor,
    rejected_tokens: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    beta: float,
    length_penalty: float = 0.0,
    normalization: Normalization = "mean",
) -> IPOLoss:
    """Length-aware IPO: ``(h - (1/(2 tau) - alpha d))^2`` per pair.

    Args:
        chosen_logratios, rejected_logratios: ``(B,)`` summed (LD-weighted) policy/reference log-ratios ``s_w, s_l``.
        chosen_tokens, rejected_tokens: ``(B,)`` token counts the sums run over, ``n_w, n_l`` (effective counts with
            LD weighting: the sum of :func:`length_desensitized_weights`).
        chosen_lengths, rejected_lengths: ``(B,)`` lengths for the length term, in any unit.
        beta: IPO's ``tau``. The target ``1/(2 beta)`` is per token for ``"mean"``/``"pair_mean"``, per sequence
            for ``"sum"``.
        length_penalty: ``alpha`` (see :func:`length_adjusted_target`); 0 turns the length term off.
        normalization: ``"mean"``, ``"sum"`` or ``"pair_mean"`` (see :func:`ipo_margin`).

    With ``normalization="mean"``, ``length_penalty=0`` and unweighted sums this is exactly TRL's
    ``DPOTrainer(loss_type=["ipo"])`` per-pair loss.
    """
    margins = ipo_margin(chosen_logratios, rejected_logratios, chosen_tokens, rejected_tokens, normalization)
    d = relative_length_difference(chosen_lengths, rejected_lengths).to(margins.dtype)
    targets = length_adjusted_target(beta, length_penalty, d)
    return IPOLoss(losses=(margins - targets) ** 2, margins=margins, targets=targets, relative_length_differences=d)
