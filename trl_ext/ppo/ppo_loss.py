"""Pure PPO functions for RLHF: KL estimates, per-token rewards, GAE, whitening, the clipped losses.

Every function is a typed function of tensors with no state, so each can be checked by hand
(`tests/test_ppo_loss.py`). Shapes: ``B`` sequences (completions), ``T`` completion tokens, right-padded;
``mask`` is ``(B, T)`` with 1 on the real completion tokens (the EOS token included) and 0 on padding, so each
row's ones are contiguous from position 0.

References:
    - Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (PPO): the clipped surrogate, eq. (7).
    - Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage Estimation" (GAE),
      eqs. (11)-(16).
    - Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences": the reward
      ``R(x, y) = r(x, y) - beta * log(pi(y|x) / pi_ref(y|x))`` (eq. 2) and the adaptive KL coefficient (sec. 2.2).
    - Ouyang et al. 2022, "Training language models to follow instructions with human feedback" (InstructGPT),
      eq. (2): the same per-token KL penalty against the SFT policy.
    - Schulman 2020, "Approximating KL Divergence" (blog): the k1 / k2 / k3 estimators.
    - The clipped value loss follows OpenAI baselines' ``ppo2`` and ``lm-human-preferences``.
"""

from __future__ import annotations

import torch

from trl_ext.ops import KLEstimator, kl_estimate, masked_mean, masked_var


def adaptive_kl_coef(kl_coef: float, current_kl: float, target_kl: float, n_steps: int, horizon: int) -> float:
    """One update of the adaptive KL coefficient (Ziegler et al. 2019, sec. 2.2; ``lm-human-preferences``).

    ``e = clip(KL / KL_target - 1, -0.2, 0.2)`` and ``beta <- beta * (1 + e * n_steps / horizon)``: the coefficient
    grows when the policy drifts past the target KL and shrinks when it stays below. `n_steps` is the number of
    sequences in the rollout just used; `horizon` (10,000 in the paper) sets how fast beta moves.
    """
    error = min(max(current_kl / target_kl - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)


# --- rewards and advantages ----------------------------------------------------------------------------------------
def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row of a right-padded mask ``(B, T)`` -> ``(B,)`` (0 for an empty row)."""
    return (mask.long().sum(dim=1) - 1).clamp(min=0)


def per_token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kl_estimator: KLEstimator = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token RLHF reward: ``r_t = -beta * KL_t``, plus the sequence score on the last real token.

    This is Ziegler et al. 2019 eq. (2) / Ouyang et al. 2022 eq. (2), ``R(x, y) = r(x, y) - beta * log(pi/pi_ref)``,
    spread over tokens: the log-ratio sums over the completion, so each token carries its own KL term, and the
    reward model's score arrives once, at the end.

    Args:
        scores: ``(B,)`` reward-model scores (after any missing-EOS penalty).
        logprobs: ``(B, T)`` log-probs of the sampled tokens under the rollout policy.
        ref_logprobs: ``(B, T)`` the same under the reference policy.
        mask: ``(B, T)`` completion mask, right-padded.
        kl_coef: beta.
        kl_estimator: which per-token estimate of KL(pi || pi_ref) to penalize (see :func:`kl_estimate`).

    Returns:
        ``(rewards, kl)``, both ``(B, T)`` and 0 on padding.
    """
    kl = kl_estimate(logprobs, ref_logprobs, kl_estimator) * mask  # (B, T)
    rewards = -kl_coef * kl  # (B, T)
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards * mask, kl


def generalized_advantage_estimation(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al. 2016, eqs. 11-16) over completion tokens; the episode ends after the last real token.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` (with ``V`` = 0 after the last token),
    ``A_t = delta_t + gamma * lam * A_{t+1}``, and the critic's target is ``returns_t = A_t + V_t``.
    ``lam = 1`` gives Monte-Carlo returns minus the baseline; ``lam = 0`` the one-step TD error.

    Args:
        rewards, values, mask: ``(B, T)``, right-padded; padding in `rewards` and `values` is ignored.

    Returns:
        ``(advantages, returns)``, both ``(B, T)`` and 0 on padding.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask  # padding contributes nothing, so V after the end is 0
    advantages = torch.zeros_like(values)
    next_advantage = torch.zeros_like(values[:, 0])  # (B,)
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    returns = (advantages + values) * mask
    return advantages, returns


# --- losses ---------------------------------------------------------------------------------------------------------
def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimize, averaged over real tokens.

    ``ratio = exp(logprobs - old_logprobs)``;
    ``L = mean_t max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps, 1 + eps))``, i.e. ``-L^CLIP``.

    Args:
        logprobs: ``(B, T)`` log-probs under the policy being updated (carries the gradient).
        old_logprobs, advantages: ``(B, T)`` from the rollout (no gradient).
        mask: ``(B, T)``.
        clip_range: eps.

    Returns:
        ``(loss, clip_fraction)``: scalars; the fraction of real tokens where the clipped term was the active one.
    """
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
    return loss, clip_fraction.detach()


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss (baselines ``ppo2``): the critic may move at most `clip_range_value` from its rollout value.

    ``V_clip = V_old + clip(V - V_old, -eps_v, eps_v)``;
    ``L_V = 0.5 * mean_t max((V_t - R_t)^2, (V_clip_t - R_t)^2)``.

    Returns:
        ``(loss, clip_fraction)``: scalars; the fraction of real tokens where the clipped error was the larger.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    error = (values - returns).square()
    clipped_error = (clipped_values - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(error, clipped_error), mask)
    clip_fraction = masked_mean((clipped_error > error).to(values.dtype), mask)
    return loss, clip_fraction.detach()


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var[R - V] / Var[R]`` over real tokens: 1 is a perfect critic, 0 no better than a constant (and 0 when
    the returns do not vary: there is nothing to explain)."""
    var_returns = masked_var(returns, mask)
    if var_returns <= 0:
        return torch.zeros_like(var_returns)
    return 1.0 - masked_var(returns - values, mask) / var_returns
