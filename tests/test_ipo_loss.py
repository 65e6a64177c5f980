"""Length-aware IPO loss functions against hand-computed numbers (the arithmetic is written in each test)."""

import pytest
import torch
from torch.testing import assert_close

from trl_ext.ipo import (
    auto_length_penalty,
    ipo_margin,
    length_adjusted_target,
    length_aware_ipo_loss,
    length_desensitized_weights,
    relative_length_difference,
)

# Two pairs. s: summed log-ratios, n: token counts, l: lengths for the length term (any unit).
S_W, S_L = torch.tensor([2.0, -1.0]), torch.tensor([1.0, -3.0])
N_W, N_L = torch.tensor([4.0, 2.0]), torch.tensor([2.0, 5.0])
L_W, L_L = torch.tensor([30.0, 10.0]), torch.tensor([10.0, 30.0])
BETA = 0.25  # target 1/(2*0.25) = 2


def test_relative_length_difference():
    # (30 - 10) / 20 = 1, (10 - 30) / 20 = -1, (3 - 1) / 2 = 1, 0/0 -> 0
    d = relative_length_difference(torch.tensor([30, 10, 3, 0]), torch.tensor([10, 30, 1, 0]))
    assert_close(d, torch.tensor([1.0, -1.0, 1.0, 0.0]))
    # unit-free: words, tokens or characters give the same d for proportional lengths
    assert_close(relative_length_difference(L_W * 7, L_L * 7), relative_length_difference(L_W, L_L))


@pytest.mark.parametrize(
    "normalization, expected",
    [
        ("mean", [2 / 4 - 1 / 2, -1 / 2 - (-3 / 5)]),  # [0.0, 0.1]
        ("sum", [2.0 - 1, -1.0 - (-3)]),  # [1, 2]
        ("pair_mean", [(2 - 1) / ((4 + 2) / 2), (-1 + 3) / ((2 + 5) / 2)]),  # [1/3, 4/7]
    ],
)
def test_ipo_margin(normalization, expected):
    assert_close(ipo_margin(S_W, S_L, N_W, N_L, normalization), torch.tensor(expected))


def test_length_adjusted_target_sign():
    # 1/(2*0.25) = 2; alpha = 0.5, d = [1, -1]: a longer winner is asked for less margin, a shorter one for more
    assert_close(length_adjusted_target(BETA, 0.5, torch.tensor([1.0, -1.0])), torch.tensor([1.5, 2.5]))
    assert_close(length_adjusted_target(BETA, 0.0, torch.tensor([1.0, -1.0])), torch.tensor([2.0, 2.0]))


@pytest.mark.parametrize(
    "normalization, alpha, expected",
    [
        # h = [0, 0.1], target = [2 - 0.5*1, 2 + 0.5*1] = [1.5, 2.5]
        ("mean", 0.5, [(0.0 - 1.5) ** 2, (0.1 - 2.5) ** 2]),  # [2.25, 5.76]
        # TRL's IPO: h = [0, 0.1], target 2
        ("mean", 0.0, [(0.0 - 2) ** 2, (0.1 - 2) ** 2]),  # [4, 3.61]
        # h = [1, 2]
        ("sum", 0.5, [(1 - 1.5) ** 2, (2 - 2.5) ** 2]),  # [0.25, 0.25]
        ("sum", 0.0, [(1.0 - 2) ** 2, (2.0 - 2) ** 2]),  # [1, 0]
        # h = [1/3, 4/7]
        ("pair_mean", 0.0, [(1 / 3 - 2) ** 2, (4 / 7 - 2) ** 2]),  # [2.7778, 2.0408]
        ("pair_mean", 1.0, [(1 / 3 - 1) ** 2, (4 / 7 - 3) ** 2]),  # [0.4444, 5.8980]
    ],
)
def test_length_aware_ipo_loss_hand_computed(normalization, alpha, expected):
    out = length_aware_ipo_loss(
        S_W, S_L, N_W, N_L, L_W, L_L, beta=BETA, length_penalty=alpha, normalization=normalization
    )
    assert_close(out.losses, torch.tensor(expected))
    assert_close(out.targets, torch.tensor([2 - alpha, 2 + alpha]))
    assert_close(out.relative_length_differences, torch.tensor([1.0, -1.0]))
    assert out.losses.shape == out.margins.shape == (2,)


def test_mean_loss_gradient_hand_computed():
    # d/ds_w (s_w/n_w - s_l/n_l - T)^2 = 2 (h - T) / n_w ; d/ds_l = -2 (h - T) / n_l
    s_w, s_l = S_W.clone().requires_grad_(), S_L.clone().requires_grad_()
    out = length_aware_ipo_loss(s_w, s_l, N_W, N_L, L_W, L_L, beta=BETA, length_penalty=0.5)
    out.losses.sum().backward()
    residual = torch.tensor([0.0 - 1.5, 0.1 - 2.5])
    assert_close(s_w.grad, 2 * residual / N_W)
    assert_close(s_l.grad, -2 * residual / N_L)


def test_unknown_normalization_is_an_error():
    with pytest.raises(ValueError, match="length_normalization"):
        ipo_margin(S_W, S_L, N_W, N_L, "median")


# Batch of 2 pairs, rows [chosen0, chosen1, rejected0, rejected1]; completion lengths 3, 6 | 5, 2
MASK = torch.tensor(
    [
        [0, 0, 1, 1, 1, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 0, 0, 0],
    ]
)


def test_length_desensitized_weights_hand_computed():
    # shared lengths: pair 0 min(3, 5) = 3, pair 1 min(6, 2) = 2; tokens past them weigh ld_alpha = 0.5
    w = length_desensitized_weights(MASK, 0.5)
    expected = torch.tensor(
        [
            [0, 0, 1, 1, 1, 0, 0, 0],  # chosen0: 3 tokens, all shared
            [0, 1, 1, 0.5, 0.5, 0.5, 0.5, 0],  # chosen1: 2 shared + 4 excess
            [0, 1, 1, 1, 0.5, 0.5, 0, 0],  # rejected0: 3 shared + 2 excess
            [0, 0, 0, 1, 1, 0, 0, 0],  # rejected1: 2 tokens, all shared
        ]
    )
    assert_close(w, expected)
    assert_close(w.sum(dim=1), torch.tensor([3.0, 2 + 0.5 * 4, 3 + 0.5 * 2, 2.0]))  # effective lengths
    assert_close(length_desensitized_weights(MASK, None), MASK.float())  # no LD: plain sums over the completion
    assert_close(length_desensitized_weights(MASK, 1.0), MASK.float())
    assert_close(length_desensitized_weights(MASK, 0.0).sum(dim=1), torch.tensor([3.0, 2.0, 3.0, 2.0]))


def test_ld_mean_normalizes_by_the_effective_length():
    # per-token log-ratio 1.0 everywhere: with LD weighting, "mean" must still see 1.0 per token on both sides, so
    # h = 0. TRL's ld_alpha + ipo divides the down-weighted sum by the full length and sees a spurious difference.
    per_token = MASK.float()
    w = length_desensitized_weights(MASK, 0.5)
    sums, effective = (per_token * w).sum(dim=1), w.sum(dim=1)
    h = ipo_margin(*sums.chunk(2), *effective.chunk(2), "mean")
    assert_close(h, torch.zeros(2))
    full = MASK.sum(dim=1).float()
    trl_h = sums[:2] / full[:2] - sums[2:] / full[2:]  # pair 0: 3/3 - 4/5 = 0.2; pair 1: 4/6 - 2/2 = -1/3
    assert_close(trl_h, torch.tensor([0.2, -1 / 3]))


def test_auto_length_penalty_hand_computed():
    # d = [1, -1, 0.5]: mean(d) = 1/6, mean(d^2) = 2.25/3 = 0.75; alpha = 2 * (1/6) / 0.75 = 4/9
    d = torch.tensor([1.0, -1.0, 0.5])
    alpha = auto_length_penalty(d, BETA)
    assert alpha == pytest.approx(4 / 9)
    # the adjusted target is orthogonal to d: no part of it is explained by length any more
    assert float((d * length_adjusted_target(BETA, alpha, d)).sum()) == pytest.approx(0.0, abs=1e-6)
    assert auto_length_penalty(torch.zeros(5), BETA) == 0.0  # equal lengths everywhere
    assert auto_length_penalty(torch.tensor([0.5, -0.5, 1.0, -1.0]), BETA) == 0.0  # no confound


def test_auto_length_penalty_never_asks_for_the_rejected_answer():
    # winners always longer: the unconstrained slope is 0.77 (target 1 - 0.77 * 1.92 = -0.479 for the last pair)
    d = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.92])
    alpha = auto_length_penalty(d, 0.5)
    assert alpha == pytest.approx(0.9 / 1.92)  # the least-squares slope clipped so the smallest target is 0.1
    targets = length_adjusted_target(0.5, alpha, d)
    assert float(targets.min()) == pytest.approx(0.1) and bool((targets > 0).all())
    # the same with winners always shorter (negative slope)
    assert float(length_adjusted_target(0.5, auto_length_penalty(-d, 0.5), -d).min()) == pytest.approx(0.1)
