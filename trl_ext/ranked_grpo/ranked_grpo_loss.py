"""Ranking-based GRPO: pure, typed functions of tensors, one per step from ranks to a scalar loss.

Layout: the responses of every group in a batch are flattened into ``N`` rows, and ``group_index`` (``(N,)``,
integers ``0..G-1``) says which group (prompt) each row belongs to, so groups of different sizes share one batch.
Per-token tensors are ``(N, T)``, right-padded, with ``mask`` 1 on the completion tokens that carry a
log-probability. ``ranks`` are the human ranks, 1 = best; equal ranks are ties.

References:
    - Shao et al. 2024, "DeepSeekMath" (GRPO, arXiv:2402.03300), Eq. 3: the group-relative advantage
      ``A_i = (r_i - mean(r)) / std(r)`` and the clipped token-level surrogate with a k3 KL penalty (Eq. 4).
    - Liu et al. 2025, "Understanding R1-Zero-Like Training" (Dr. GRPO, arXiv:2503.20783) and Yu et al. 2025 (DAPO,
      arXiv:2503.14476): the token-level aggregations ``dr_grpo`` and ``dapo`` that remove the ``1/|o_i|`` length bias.
    - Rafailov et al. 2023, "Direct Preference Optimization" (arXiv:2305.18290), Appendix A.3: the Plackett-Luce
      generalization of DPO to rankings of K responses; with K = 2 it is DPO's sigmoid loss.
    - The per-token loss follows TRL 1.16 ``GRPOTrainer._compute_loss`` term for term (same clipping, ``delta``,
      sequence-level ratios, k3 KL with the optional importance-sampling correction, same aggregations), so the
      offline trainer and ``trl.GRPOTrainer`` optimize the same objective given the same advantages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from trl_ext.ops import kl_estimate

RankReward = Literal["linear", "exponential"]
RANK_REWARDS: tuple[str, ...] = ("linear", "exponential")
ScaleRewards = Literal["group", "batch", "none"]
SCALE_REWARDS: tuple[str, ...] = ("group", "batch", "none")
LossAggregation = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
LOSS_AGGREGATIONS: tuple[str, ...] = ("grpo", "bnpo", "dr_grpo", "dapo")


# --- groups ----------------------------------------------------------------------------------------------------
def _num_groups(group_index: Tensor) -> int:
    return int(group_index.max().item()) + 1 if group_index.numel() else 0


def group_sum(values: Tensor, group_index: Tensor, num_groups: int | None = None) -> Tensor:
    """Sum of ``values`` (``(N,)``) within each group: ``(G,)``."""
    num_groups = _num_groups(group_index) if num_groups is None else num_groups
    return values.new_zeros(num_groups).index_add(0, group_index, values)


def group_sizes(group_index: Tensor) -> Tensor:
    """``(N,)``: the size of the group each row belongs to."""
    counts = torch.bincount(group_index)  # (G,)
    return counts[group_index]


# --- ranks -> rewards -> advantages ----------------------------------------------------------------------------
def fractional_ranks(ranks: Tensor, group_index: Tensor) -> Tensor:
    """The positions a group's ranking assigns, ties at the mean of the positions they span (1 = best).

    Dense (``[1, 2, 2, 3]``) and competition (``[1, 2, 2, 4]``) rankings state the same order; both become
    ``[1, 2.5, 2.5, 4]``, so the same order always gives the same rewards and advantages. A ranking without ties is
    returned unchanged. ``(N,)`` -> ``(N,)`` float: ``1 + #(strictly better) + (#(tied, itself included) - 1) / 2``.
    """
    ranks = ranks.float()
    same = group_index[:, None] == group_index[None, :]  # (N, N)
    better = (same & (ranks[None, :] < ranks[:, None])).sum(-1).float()  # (N,)
    tied = (same & (ranks[None, :] == ranks[:, None])).sum(-1).float()  # (N,) itself included
    return 1 + better + (tied - 1) / 2


def rank_rewards(ranks: Tensor, group_index: Tensor, kind: RankReward = "linear") -> Tensor:
    """Rewards from ranks (1 = best), each in [0, 1] with the best response of a group at 1 and rank n at 0.

    - ``"linear"``: ``r = (n - rank) / (n - 1)``.
    - ``"exponential"``: ``r = (2^(n - rank) - 1) / (2^(n - 1) - 1)``, the DCG gain, normalized: the top of a
      ranking is spread further apart than its bottom (for n = 4: 1, 3/7, 1/7, 0).

    ``n`` is the size of each row's group, so groups of different sizes map onto the same [0, 1] scale. The ranks are
    first made fractional (:func:`fractional_ranks`): tied responses sit at the mean of the positions they span, so a
    dense and a competition ranking of the same order give the same rewards, and ties get equal rewards. With ``scale_rewards="group"`` any positive affine map of the ranks gives the same
    advantages, so ``"linear"`` is then the same as using the ranks themselves (negated).

    Args:
        ranks: ``(N,)`` integer or float ranks, 1 = best.
        group_index: ``(N,)`` group of each row.
        kind: ``"linear"`` or ``"exponential"``.

    Returns:
        ``(N,)`` float rewards.
    """
    ranks = fractional_ranks(ranks, group_index)
    n = group_sizes(group_index).float()  # (N,)
    if kind == "linear":
        return (n - ranks) / (n - 1).clamp(min=1)
    if kind == "exponential":
        return (torch.exp2(n - ranks) - 1) / (torch.exp2(n - 1) - 1).clamp(min=1)
    raise ValueError(f"rank_reward must be one of {RANK_REWARDS} (or a score column), got {kind!r}")


def group_advantages(
    rewards: Tensor,
    group_index: Tensor,
    scale_rewards: ScaleRewards = "group",
    epsilon: float = 1e-4,
    batch_std: Tensor | float | None = None,
) -> Tensor:
    """Group-relative advantages, GRPO's ``A_i = (r_i - mean_g(r)) / (std + epsilon)`` (DeepSeekMath Eq. 3).

    The baseline is always the mean of the row's group; the scale follows TRL's ``scale_rewards``:

    - ``"group"``: the group's standard deviation (Bessel-corrected, as TRL's ``nanstd``); a group whose rewards
      are all equal (all tied) gets advantages 0.
    - ``"batch"``: one standard deviation of all rewards in the batch (PPO-Lite); pass ``batch_std`` when the
      batch spans several micro-batches or processes (the trainer computes it over the whole accumulated batch).
    - ``"none"``: no scaling (Dr. GRPO), ``A_i = r_i - mean_g(r)``.

    ``epsilon`` is TRL's ``1e-4`` by default (HALOs uses ``1e-2``). For ranks ``[1, 2, 3, 4]`` with linear rewards,
    ``"group"`` gives about ``[+1.162, +0.387, -0.387, -1.162]``.

    Args:
        rewards: ``(N,)`` rewards.
        group_index: ``(N,)`` group of each row.
        scale_rewards: ``"group"``, ``"batch"`` or ``"none"``.
        epsilon: added to the standard deviation.
        batch_std: ``"batch"`` only: the standard deviation to use instead of that of ``rewards``.

    Returns:
        ``(N,)`` advantages; tied rows of a group get equal advantages.
    """
    rewards = rewards.float()
    num_groups = _num_groups(group_index)
    counts = torch.bincount(group_index, minlength=num_groups).float()  # (G,)
    means = group_sum(rewards, group_index, num_groups) / counts.clamp(min=1)  # (G,)
    centered = rewards - means[group_index]  # (N,)
    if scale_rewards == "none":
        return centered
    if scale_rewards == "group":
        variance = group_sum(centered**2, group_index, num_groups) / (counts - 1).clamp(min=1)  # (G,) Bessel
        std = variance.sqrt()[group_index]
    elif scale_rewards == "batch":
        if batch_std is None:
            std = rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())
        else:
            std = torch.as_tensor(batch_std, dtype=rewards.dtype, device=rewards.device)
    else:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    return centered / (std + epsilon)


# --- GRPO's clipped surrogate ----------------------------------------------------------------------------------
class GRPOTokenLoss(NamedTuple):
    """Per-token results of :func:`grpo_token_loss`; every field has shape ``(N, T)`` (``(N, 1)`` for a
    sequence-level ratio)."""

    per_token_loss: Tensor  # -min(ratio * A, clip(ratio) * A) + beta * KL
    ratio: Tensor  # pi_theta / pi_old (or / pi_ref for HALOs-style offline GRPO)
    kl: Tensor | None  # k3 estimate of KL(pi_theta || pi_ref) per token; None when beta == 0


def grpo_token_loss(
    per_token_logps: Tensor,
    old_per_token_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    delta: float | None = None,
    importance_sampling_level: Literal["token", "sequence"] = "token",
    ref_per_token_logps: Tensor | None = None,
    beta: float = 0.0,
    use_bias_correction_kl: bool = True,
) -> GRPOTokenLoss:
    """GRPO's per-token loss: the clipped surrogate ``-min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)``
    plus ``beta`` times the k3 KL to the reference (DeepSeekMath Eq. 3-4), as TRL 1.16 computes it.

    Args:
        per_token_logps: ``(N, T)`` log-probabilities of the completion tokens under the policy being trained.
        old_per_token_logps: ``(N, T)`` the same under the policy the ratio is taken against: the policy that
            started the step (GRPO), or the reference (HALOs' offline GRPO).
        advantages: ``(N,)`` one advantage per sequence, or ``(N, T)`` per token.
        mask: ``(N, T)`` 1 on completion tokens (used for the sequence-level ratio only).
        epsilon_low, epsilon_high: the clipping range ``[1 - epsilon_low, 1 + epsilon_high]`` (DAPO: a higher upper
            bound).
        delta: INTELLECT-2's two-sided clipping: the unclipped ratio is also capped at ``delta``.
        importance_sampling_level: ``"token"`` (one ratio per token) or ``"sequence"`` (GSPO: the exponentiated mean
            log-ratio of the sequence, shared by its tokens).
        ref_per_token_logps: ``(N, T)`` reference log-probabilities; needed when ``beta != 0``.
        beta: KL coefficient.
        use_bias_correction_kl: multiply the KL by the ratio (TRL's default; the unbiased reverse-KL gradient when the
            tokens were sampled from the old policy).

    Returns:
        :class:`GRPOTokenLoss`; aggregate ``per_token_loss`` with :func:`aggregate_token_loss`.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # (N, 1)
    log_ratio = per_token_logps - old_per_token_logps  # (N, T)
    if importance_sampling_level == "token":
        log_importance_weights = log_ratio
    elif importance_sampling_level == "sequence":
        log_importance_weights = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)  # (N, 1)
    else:
        raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {importance_sampling_level!r}")
    coef_1 = torch.exp(log_importance_weights)
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    unclipped = coef_1 if delta is None else torch.clamp(coef_1, max=delta)
    per_token_loss = -torch.min(unclipped * advantages, coef_2 * advantages)
    kl = None
    if beta != 0.0:
        if ref_per_token_logps is None:
            raise ValueError("beta != 0 needs ref_per_token_logps")
        kl = kl_estimate(per_token_logps, ref_per_token_logps, "k3")  # exp(d) - d - 1, d = log pi_ref - log pi
        if use_bias_correction_kl:
            kl = kl * coef_1
        per_token_loss = per_token_loss + beta * kl
    return GRPOTokenLoss(per_token_loss, coef_1, kl)


def aggregate_token_loss(
    per_token_loss: Tensor,
    mask: Tensor,
    loss_type: LossAggregation = "dapo",
    *,
    max_completion_length: int | None = None,
    num_items_in_batch: Tensor | float | None = None,
) -> Tensor:
    """Reduce a ``(N, T)`` per-token loss to a scalar, as TRL 1.16's GRPO ``loss_type`` does.

    - ``"grpo"``: mean over each sequence's tokens, then over sequences (DeepSeekMath; biased by ``1/|o_i|``).
    - ``"bnpo"``: sum over all tokens / number of tokens in this batch.
    - ``"dr_grpo"``: sum over all tokens / (N * ``max_completion_length``), a constant (Dr. GRPO).
    - ``"dapo"``: sum over all tokens / ``num_items_in_batch``, the token count of the whole accumulated batch (DAPO);
      without it, the token count of this batch (then the same as ``"bnpo"``).

    The caller divides ``grpo``/``bnpo``/``dr_grpo`` by the gradient-accumulation steps; ``dapo``'s normalizer already
    spans them.
    """
    mask = mask.to(per_token_loss.dtype)
    masked = per_token_loss * mask  # (N, T); a (N, 1) sequence-level loss broadcasts over T here
    if loss_type == "grpo":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return masked.sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        if not max_completion_length:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length (its constant normalizer)")
        return masked.sum() / (per_token_loss.size(0) * max_completion_length)
    if loss_type == "dapo":
        normalizer = mask.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch)
        return masked.sum() / normalizer.to(masked.device, masked.dtype).clamp(min=1.0)
    raise ValueError(f"loss_type must be one of {LOSS_AGGREGATIONS} or 'plackett_luce', got {loss_type!r}")


# --- Plackett-Luce (listwise DPO) ------------------------------------------------------------------------------
def plackett_luce_loss(scores: Tensor, ranks: Tensor, group_index: Tensor) -> Tensor:
    """Negative log-likelihood of each group's ranking under a Plackett-Luce model of ``scores``, per group.

    DPO's Appendix A.3: with ``scores = beta * (log pi(y|x) - log pi_ref(y|x))`` (summed over tokens), a ranking
    ``tau`` of K responses has likelihood ``prod_k exp(s_tau(k)) / sum_{j >= k} exp(s_tau(j))``; the loss is its
    negative log::

        L = -sum_i [ s_i - log( exp(s_i) + sum_{j : rank_j > rank_i} exp(s_j) ) ]

    Ties: a response competes only against the strictly worse-ranked ones (tied responses are not compared, as
    ``dataset_builders`` makes no pair of a tie), so the last-ranked response(s) and an all-tied group add 0.
    With K = 2 and ranks ``[1, 2]`` this is ``-log sigmoid(s_1 - s_2)``, TRL's ``loss_type="sigmoid"`` DPO loss.
    With rewards as ``scores`` (``beta = 1``) it is the listwise reward-model loss; with K = 2, Bradley-Terry.

    Args:
        scores: ``(N,)`` one score per response.
        ranks: ``(N,)`` ranks, 1 = best.
        group_index: ``(N,)`` group of each row.

    Returns:
        ``(G,)`` loss of each group (sum over its positions, as in the paper; average over groups for a batch).
    """
    same_group = group_index[:, None] == group_index[None, :]  # (N, N)
    worse = ranks[None, :] > ranks[:, None]  # (N, N): [i, j] is True where j is ranked strictly below i
    eye = torch.eye(scores.numel(), dtype=torch.bool, device=scores.device)
    competitors = same_group & (worse | eye)  # (N, N) i itself and everything ranked below it in its group
    masked = scores[None, :].expand(scores.numel(), -1).masked_fill(~competitors, -math.inf)  # (N, N)
    per_position = torch.logsumexp(masked, dim=-1) - scores  # (N,) -log P(i first among its competitors)
    return group_sum(per_position, group_index)


# --- metrics ---------------------------------------------------------------------------------------------------
def group_kendall_tau(scores: Tensor, ranks: Tensor, group_index: Tensor) -> Tensor:
    """Kendall's tau-b between ``scores`` (higher = better) and the ranking (1 = best), per group: ``(G,)``.

    +1 when the scores order every group as its ranking does, -1 when reversed; NaN for a group where either side is
    all ties (no order to compare). Average with ``nanmean``.
    """
    same_group = group_index[:, None] == group_index[None, :]
    upper = torch.triu(torch.ones_like(same_group), diagonal=1) & same_group  # each within-group pair once
    ds = torch.sign(scores[:, None] - scores[None, :])  # (N, N)
    dr = torch.sign(ranks[None, :].float() - ranks[:, None].float())  # (N, N) +1 where i is ranked above j
    g = group_index[:, None].expand_as(upper)[upper]
    num_groups = _num_groups(group_index)
    concordance = group_sum((ds * dr)[upper].float(), g, num_groups)  # (G,) C - D
    untied_scores = group_sum((ds != 0)[upper].float(), g, num_groups)  # n0 - n1
    untied_ranks = group_sum((dr != 0)[upper].float(), g, num_groups)  # n0 - n2
    return concordance / (untied_scores * untied_ranks).sqrt()  # 0/0 -> NaN


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b between two score lists (higher = better on both sides), 0.0 when either side is all ties."""
    tau = group_kendall_tau(
        torch.tensor(x, dtype=torch.float64),
        -torch.tensor(y, dtype=torch.float64),  # a score is a negated rank
        torch.zeros(len(x), dtype=torch.long),
    )[0].item()
    return 0.0 if math.isnan(tau) else tau
