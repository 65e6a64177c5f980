"""Hand-checked values for the pure PPO functions (`trl_ext.ppo.ppo_loss`); the arithmetic is written out."""

import math

import pytest
import torch
from torch.testing import assert_close

from trl_ext import ops
from trl_ext.ppo import ppo_loss


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_masked_mean_var_and_whiten():
    x, mask = t(1.0, 2.0, 3.0, 100.0), t(1, 1, 1, 0)
    assert_close(ops.masked_mean(x, mask), t(2.0)[0])  # (1 + 2 + 3) / 3
    # unbiased: ((1-2)^2 + 0 + (3-2)^2) / (3 - 1) = 1; biased: 2 / 3
    assert_close(ops.masked_var(x, mask), t(1.0)[0])
    assert_close(ops.masked_var(x, mask, unbiased=False), t(2 / 3)[0])
    # (x - 2) / sqrt(1 + 1e-8); padding -> 0
    assert_close(ops.masked_whiten(x, mask), t(-1.0, 0.0, 1.0, 0.0), atol=1e-7, rtol=0)
    # shift_mean=False adds the mean back: (x - 2) / 1 + 2 = x
    assert_close(ops.masked_whiten(x, mask, shift_mean=False), t(1.0, 2.0, 3.0, 0.0), atol=1e-7, rtol=0)
    assert_close(ops.masked_mean(t([1.0, 3.0], [5.0, 7.0]), t([1, 1], [1, 0]), dim=1), t(2.0, 5.0))
    with pytest.raises(ValueError, match="at least 2"):
        ops.masked_var(x, t(1, 0, 0, 0))


def test_kl_estimators():
    logp, ref = t(-1.0, -2.0), t(-1.5, -1.0)
    # log_r = ref - logp = [-0.5, 1.0]
    assert_close(ops.kl_estimate(logp, ref, "k1"), t(0.5, -1.0))  # -log_r
    assert_close(ops.kl_estimate(logp, ref, "k2"), t(0.125, 0.5))  # log_r^2 / 2
    # (e^log_r - 1) - log_r: e^-0.5 - 1 + 0.5 = 0.1065307; e - 1 - 1 = 0.7182818
    assert_close(ops.kl_estimate(logp, ref, "k3"), t(math.exp(-0.5) - 0.5, math.e - 2.0))
    assert_close(ops.kl_estimate(logp, logp, "k3"), t(0.0, 0.0))  # equal policies: 0 for every estimator
    with pytest.raises(ValueError, match="k4"):
        ops.kl_estimate(logp, ref, "k4")  # type: ignore[arg-type]


def test_k3_is_the_estimator_trl_grpo_uses():
    # TRL's GRPOTrainer._compute_loss (1.16): exp(ref - logp) - (ref - logp) - 1
    logp, ref = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    assert_close(ops.kl_estimate(logp, ref, "k3"), torch.exp(ref - logp) - (ref - logp) - 1)


def test_kl_estimators_are_unbiased_where_claimed():
    # q = softmax([0, 1]) sampled exactly (expectation over the 2 outcomes); KL(q || p) with p = softmax([1, 0])
    q, p = torch.tensor([0.0, 1.0]).log_softmax(0), torch.tensor([1.0, 0.0]).log_softmax(0)
    true_kl = (q.exp() * (q - p)).sum()
    for kind in ("k1", "k3"):
        assert_close((q.exp() * ops.kl_estimate(q, p, kind)).sum(), true_kl)


def test_adaptive_kl_coef():
    # e = clip(8/6 - 1 = 0.333, -0.2, 0.2) = 0.2 -> 0.1 * (1 + 0.2 * 512 / 10000) = 0.1 * 1.01024
    assert ppo_loss.adaptive_kl_coef(0.1, 8.0, 6.0, 512, 10000) == pytest.approx(0.101024)
    # e = 5.4/6 - 1 = -0.1 -> 0.1 * (1 - 0.1 * 0.0512) = 0.0994880
    assert ppo_loss.adaptive_kl_coef(0.1, 5.4, 6.0, 512, 10000) == pytest.approx(0.099488)
    assert ppo_loss.adaptive_kl_coef(0.1, 6.0, 6.0, 512, 10000) == pytest.approx(0.1)  # on target: unchanged


def test_per_token_rewards():
    scores = t(2.0, -1.0)
    logp = t([-1.0, -2.0, -1.0], [-0.5, -0.5, -9.0])
    ref = t([-1.5, -1.0, -1.0], [-1.0, -0.5, 0.0])
    mask = t([1, 1, 1], [1, 1, 0])
    rewards, kl = ppo_loss.per_token_rewards(scores, logp, ref, mask, kl_coef=0.1)
    # k1 = logp - ref: row 0 [0.5, -1.0, 0.0]; row 1 [0.5, 0.0, (padding) 0]
    assert_close(kl, t([0.5, -1.0, 0.0], [0.5, 0.0, 0.0]))
    # -0.1 * kl, plus the score on the last real token (index 2 of row 0, index 1 of row 1)
    assert_close(rewards, t([-0.05, 0.1, 2.0], [-0.05, -1.0, 0.0]))
    # the sequence's total reward is score - beta * sum(kl): 2 - 0.1 * (-0.5) = 2.05; -1 - 0.1 * 0.5 = -1.05
    assert_close(rewards.sum(1), t(2.05, -1.05))


def test_gae_by_hand():
    rewards, values, mask = t([0.0, 0.0, 1.0]), t([0.5, 0.2, 0.4]), t([1, 1, 1])
    adv, ret = ppo_loss.generalized_advantage_estimation(rewards, values, mask, gamma=0.9, lam=0.8)
    # t=2: delta = 1 + 0.9*0 - 0.4 = 0.6;               A2 = 0.6
    # t=1: delta = 0 + 0.9*0.4 - 0.2 = 0.16;            A1 = 0.16 + 0.72*0.6 = 0.592
    # t=0: delta = 0 + 0.9*0.2 - 0.5 = -0.32;           A0 = -0.32 + 0.72*0.592 = 0.10624
    assert_close(adv, t([0.10624, 0.592, 0.6]))
    assert_close(ret, t([0.60624, 0.792, 1.0]))  # A + V


def test_gae_limits_and_padding():
    # padded row: the value after the last real token is 0 whatever sits in the padding
    rewards, values, mask = t([0.0, 2.0, 9.0]), t([1.0, 1.0, 7.0]), t([1, 1, 0])
    adv, ret = ppo_loss.generalized_advantage_estimation(rewards, values, mask, gamma=1.0, lam=1.0)
    # lam = gamma = 1: A_t = (sum of future rewards) - V_t = 2 - 1 for both tokens
    assert_close(adv, t([1.0, 1.0, 0.0]))
    assert_close(ret, t([2.0, 2.0, 0.0]))
    # lam = 0: the one-step TD error r_t + gamma V_{t+1} - V_t: [0 + 1 - 1, 2 + 0 - 1]
    adv0, _ = ppo_loss.generalized_advantage_estimation(rewards, values, mask, gamma=1.0, lam=0.0)
    assert_close(adv0, t([0.0, 1.0, 0.0]))
    # limit case of a bandit (TRL's RLOO/GRPO view): no critic, no KL, gamma = lam = 1 -> every token's advantage
    # is the sequence score
    scores = t(3.0, -2.0)
    m = t([1, 1, 1], [1, 0, 0])
    r, _ = ppo_loss.per_token_rewards(
        scores, torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64), m, 0.0
    )
    a, _ = ppo_loss.generalized_advantage_estimation(r, torch.zeros_like(r), m, gamma=1.0, lam=1.0)
    assert_close(a, scores[:, None] * m)


def test_ppo_policy_loss_by_hand():
    ratio = t(1.5, 0.5, 1.1, 0.5, 3.0)
    logp = ratio.log().requires_grad_()
    old = torch.zeros(5, dtype=torch.float64)
    adv = t(1.0, 1.0, -2.0, -1.0, 50.0)
    mask = t(1, 1, 1, 1, 0)  # the last token is padding
    loss, clipfrac = ppo_loss.ppo_policy_loss(logp, old, adv, mask, clip_range=0.2)
    # token 0: max(-1*1.5, -1*1.2) = -1.2 (clipped term active)
    # token 1: max(-1*0.5, -1*0.8) = -0.5
    # token 2: max(2*1.1, 2*1.1)   =  2.2 (inside the range, a tie: not counted as clipped)
    # token 3: max(1*0.5, 1*0.8)   =  0.8 (clipped term active: the pessimistic bound)
    # mean over 4 real tokens: (-1.2 - 0.5 + 2.2 + 0.8) / 4 = 0.325; clipped 2 of 4
    assert_close(loss, t(0.325)[0])
    assert_close(clipfrac, t(0.5)[0])
    loss.backward()
    # d/dlogp of -A*ratio is -A*ratio where unclipped, 0 where the clipped term is active; divided by 4 tokens
    assert_close(logp.grad, t(0.0, -0.5 / 4, 2.2 / 4, 0.0, 0.0))


def test_ppo_policy_loss_first_epoch_is_the_policy_gradient():
    # At ratio 1 (the first mini-batch of a rollout) the gradient is the REINFORCE one: -A * grad(logp) / n
    logp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    adv, mask = t([1.0, -2.0, 0.5], [3.0, 0.0, 0.0]), t([1, 1, 1], [1, 0, 0])
    loss, clipfrac = ppo_loss.ppo_policy_loss(logp, logp.detach(), adv, mask, clip_range=0.2)
    loss.backward()
    assert_close(loss, -(adv * mask).sum() / 4)
    assert_close(logp.grad, -adv * mask / 4)
    assert clipfrac == 0


def test_ppo_value_loss_by_hand():
    values = t(1.0, 0.0, 2.0, 5.0)
    old = t(0.5, 0.5, 2.0, 0.0)
    returns = t(2.0, 1.0, 1.0, 0.0)
    mask = t(1, 1, 1, 0)
    loss, clipfrac = ppo_loss.ppo_value_loss(values, old, returns, mask, clip_range_value=0.2)
    # t0: V_clip = 0.5 + 0.2 = 0.7; (1-2)^2 = 1, (0.7-2)^2 = 1.69 -> 1.69 (clipped larger)
    # t1: V_clip = 0.5 - 0.2 = 0.3; (0-1)^2 = 1, (0.3-1)^2 = 0.49 -> 1
    # t2: V_clip = 2.0;             (2-1)^2 = 1, 1                -> 1
    # 0.5 * (1.69 + 1 + 1) / 3 = 0.615
    assert_close(loss, t(0.615)[0])
    assert_close(clipfrac, t(1 / 3)[0])
    # a huge clip range is plain 0.5 * MSE: 0.5 * (1 + 1 + 1) / 3
    assert_close(ppo_loss.ppo_value_loss(values, old, returns, mask, 1e9)[0], t(0.5)[0])


def test_explained_variance():
    r, m = t(1.0, 2.0, 3.0, 0.0), t(1, 1, 1, 0)
    assert_close(ppo_loss.explained_variance(r, r, m), t(1.0)[0])
    assert_close(ppo_loss.explained_variance(t(2.0, 2.0, 2.0, 0.0), r, m), t(0.0)[0])  # a constant critic
    # residuals [-0.5, 0, 0.5]: var 0.25; var(R) = 1 -> 0.75
    assert_close(ppo_loss.explained_variance(t(1.5, 2.0, 2.5, 0.0), r, m), t(0.75)[0])
    # returns that do not vary: nothing to explain -> 0
    assert_close(ppo_loss.explained_variance(r, t(2.0, 2.0, 2.0, 0.0), m), t(0.0)[0])


def test_last_token_index():
    assert ppo_loss.last_token_index(t([1, 1, 0], [1, 1, 1], [0, 0, 0])).tolist() == [1, 2, 0]
