"""Hand-checked numbers for the ranking-based GRPO functions (`trl_ext.ranked_grpo.ranked_grpo_loss`)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from trl_ext.ops import kl_estimate
from trl_ext.ranked_grpo import (
    aggregate_token_loss,
    fractional_ranks,
    group_advantages,
    group_kendall_tau,
    grpo_token_loss,
    kendall_tau,
    plackett_luce_loss,
    rank_rewards,
)

ONE_GROUP = torch.zeros(4, dtype=torch.long)
# The blog's example: ranking[i] is the rank of responses[i], so response 0 is best and response 1 worst.
RANKING = torch.tensor([1, 4, 2, 3])


# --- ranks -> rewards ------------------------------------------------------------------------------------------
def test_linear_rewards_of_the_ranking_1_4_2_3():
    # (n - rank) / (n - 1) with n = 4
    assert_close(rank_rewards(RANKING, ONE_GROUP, "linear"), torch.tensor([3 / 3, 0 / 3, 2 / 3, 1 / 3]))


def test_exponential_rewards_are_the_normalized_dcg_gain():
    # (2^(4 - rank) - 1) / (2^3 - 1): ranks 1..4 -> 7/7, 3/7, 1/7, 0/7
    assert_close(rank_rewards(RANKING, ONE_GROUP, "exponential"), torch.tensor([1.0, 0.0, 3 / 7, 1 / 7]))


def test_rewards_use_each_groups_own_size():
    ranks = torch.tensor([1, 2, 1, 2, 3])
    groups = torch.tensor([0, 0, 1, 1, 1])
    assert_close(rank_rewards(ranks, groups, "linear"), torch.tensor([1.0, 0.0, 1.0, 0.5, 0.0]))


def test_unknown_rank_reward_is_refused():
    with pytest.raises(ValueError, match="rank_reward"):
        rank_rewards(RANKING, ONE_GROUP, "quadratic")


# --- rewards -> advantages -------------------------------------------------------------------------------------
def _hand_advantages_1234(eps: float) -> torch.Tensor:
    # linear rewards of ranks [1, 2, 3, 4] are [1, 2/3, 1/3, 0]: mean 1/2, deviations +-1/2, +-1/6,
    # Bessel std = sqrt((2 * (1/2)^2 + 2 * (1/6)^2) / 3) = sqrt(5/27) = 0.430331
    std = math.sqrt(5 / 27)
    return torch.tensor([0.5, 1 / 6, -1 / 6, -0.5]) / (std + eps)


def test_group_advantages_of_ranks_1_2_3_4_match_the_design_note():
    advantages = group_advantages(rank_rewards(torch.tensor([1, 2, 3, 4]), ONE_GROUP), ONE_GROUP, epsilon=0.0)
    assert_close(advantages, _hand_advantages_1234(0.0))
    assert_close(advantages, torch.tensor([1.162, 0.387, -0.387, -1.162]), atol=5e-4, rtol=0)


def test_group_advantages_of_ranking_1_4_2_3_follow_the_ranks():
    advantages = group_advantages(rank_rewards(RANKING, ONE_GROUP), ONE_GROUP)  # TRL's eps = 1e-4
    expected = _hand_advantages_1234(1e-4)[RANKING - 1]  # response i gets the advantage of its rank
    assert_close(advantages, expected)
    assert advantages.argmax() == 0 and advantages.argmin() == 1


def test_any_positive_affine_map_of_ranks_gives_the_same_group_advantages():
    base = group_advantages(rank_rewards(RANKING, ONE_GROUP, "linear"), ONE_GROUP, epsilon=0.0)
    assert_close(group_advantages(-RANKING.float(), ONE_GROUP, epsilon=0.0), base)
    assert_close(group_advantages(10 - 3.0 * RANKING, ONE_GROUP, epsilon=0.0), base)


def test_ties_get_equal_advantages_and_an_all_tied_group_gets_zero():
    ranks = torch.tensor([1, 1, 3, 4, 2, 2])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    advantages = group_advantages(rank_rewards(ranks, groups), groups)
    assert advantages[0] == advantages[1]
    assert_close(advantages[4:], torch.zeros(2))
    # by hand: the tie spans positions 1 and 2 -> 1.5 each; rewards (4 - position) / 3 = [5/6, 5/6, 1/3, 0],
    # mean 1/2, centered [1/3, 1/3, -1/6, -1/2], Bessel variance (2/9 + 1/36 + 1/4) / 3 = 1/6
    std = math.sqrt(1 / 6)
    assert_close(advantages[:4], torch.tensor([1 / 3, 1 / 3, -1 / 6, -1 / 2]) / (std + 1e-4))


def test_fractional_ranks_by_hand():
    groups = torch.zeros(4, dtype=torch.long)
    assert fractional_ranks(torch.tensor([1, 2, 2, 3]), groups).tolist() == [1.0, 2.5, 2.5, 4.0]  # dense
    assert fractional_ranks(torch.tensor([1, 2, 2, 4]), groups).tolist() == [1.0, 2.5, 2.5, 4.0]  # competition
    assert fractional_ranks(torch.tensor([3, 1, 4, 2]), groups).tolist() == [3.0, 1.0, 4.0, 2.0]  # no tie: unchanged
    assert fractional_ranks(torch.tensor([2, 2, 1, 1]), torch.tensor([0, 0, 1, 1])).tolist() == [1.5, 1.5, 1.5, 1.5]


@pytest.mark.parametrize("kind", ["linear", "exponential"])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_dense_and_competition_rankings_of_one_order_train_alike(kind, scale):
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    dense = torch.tensor([1, 2, 2, 3, 1, 1, 2])
    competition = torch.tensor([1, 2, 2, 4, 1, 1, 3])
    rewards_dense, rewards_competition = rank_rewards(dense, groups, kind), rank_rewards(competition, groups, kind)
    assert_close(rewards_dense, rewards_competition)
    assert_close(group_advantages(rewards_dense, groups, scale), group_advantages(rewards_competition, groups, scale))


def test_groups_of_different_sizes_in_one_batch_equal_each_group_alone():
    ranks = torch.tensor([2, 1, 1, 4, 2, 3, 3, 1, 2])
    groups = torch.tensor([0, 0, 1, 1, 1, 1, 2, 2, 2])
    together = group_advantages(rank_rewards(ranks, groups), groups)
    for g in range(3):
        rows = groups == g
        alone = torch.zeros(int(rows.sum()), dtype=torch.long)
        assert_close(together[rows], group_advantages(rank_rewards(ranks[rows], alone), alone))


def test_scale_rewards_none_and_batch():
    rewards = torch.tensor([1.0, 0.0, 3.0, 1.0])
    groups = torch.tensor([0, 0, 1, 1])
    assert_close(group_advantages(rewards, groups, "none"), torch.tensor([0.5, -0.5, 1.0, -1.0]))
    # one Bessel std over the batch: mean 5/4, squared deviations 1/16 + 25/16 + 49/16 + 1/16 = 19/4, / 3
    batch_std = math.sqrt(19 / 12)
    assert_close(group_advantages(rewards, groups, "batch"), torch.tensor([0.5, -0.5, 1.0, -1.0]) / (batch_std + 1e-4))
    assert_close(group_advantages(rewards, groups, "batch", batch_std=2.0), torch.tensor([0.5, -0.5, 1, -1]) / 2.0001)


# --- the clipped surrogate -------------------------------------------------------------------------------------
def test_clipped_surrogate_by_hand():
    # log-ratios +0.3 and -0.3 for a positive and a negative advantage; epsilon 0.2
    old = torch.zeros(4, 1)
    new = torch.tensor([[0.3], [0.3], [-0.3], [-0.3]])
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    out = grpo_token_loss(new, old, advantages, torch.ones(4, 1), epsilon_low=0.2, epsilon_high=0.2)
    r_up, r_down = math.exp(0.3), math.exp(-0.3)  # 1.3499, 0.7408
    # -min(r A, clip(r) A): A>0, r above 1.2 -> clipped at 1.2; A<0, r above -> unclipped r;
    # A>0, r below 0.8 -> unclipped r; A<0, r below 0.8 -> clipped at 0.8
    expected = torch.tensor([[-1.2], [r_up], [-r_down], [0.8]])
    assert_close(out.per_token_loss, expected)
    assert_close(out.ratio, torch.tensor([[r_up], [r_up], [r_down], [r_down]]))
    assert out.kl is None


def test_higher_upper_clip_and_delta():
    new = torch.tensor([[0.3], [0.3]])
    advantages = torch.tensor([1.0, -1.0])
    out = grpo_token_loss(new, torch.zeros(2, 1), advantages, torch.ones(2, 1), epsilon_low=0.2, epsilon_high=0.28)
    assert_close(out.per_token_loss[0], torch.tensor([-1.28]))  # DAPO's clip-higher
    out = grpo_token_loss(new, torch.zeros(2, 1), advantages, torch.ones(2, 1), delta=1.3)
    assert_close(out.per_token_loss[1], torch.tensor([1.3]))  # INTELLECT-2: the unclipped ratio capped at delta


def test_k3_kl_and_its_place_in_the_loss():
    logps, ref = torch.tensor([[-1.0]]), torch.tensor([[-1.5]])
    # d = ref - logp = -0.5: exp(-0.5) + 0.5 - 1
    assert_close(kl_estimate(logps, ref, "k3"), torch.tensor([[math.exp(-0.5) - 0.5]]))
    assert_close(kl_estimate(ref, ref, "k3"), torch.zeros(1, 1))
    out = grpo_token_loss(logps, logps, torch.tensor([2.0]), torch.ones(1, 1), ref_per_token_logps=ref, beta=0.1)
    assert_close(out.per_token_loss, torch.tensor([[-2.0 + 0.1 * (math.exp(-0.5) - 0.5)]]))


def test_ratio_one_gives_the_advantage_weighted_log_likelihood_gradient():
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    out = grpo_token_loss(logps, logps.detach(), torch.tensor([0.7]), torch.ones(1, 2))
    out.per_token_loss.sum().backward()
    assert_close(logps.grad, torch.tensor([[-0.7, -0.7]]))  # d/dlogp of -A * exp(logp - old) at logp = old


def test_sequence_level_ratio_is_the_mean_log_ratio():
    new = torch.tensor([[0.1, 0.3, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    out = grpo_token_loss(new, torch.zeros(1, 3), torch.tensor([1.0]), mask, importance_sampling_level="sequence")
    assert_close(out.ratio, torch.tensor([[math.exp(0.2)]]))


# --- aggregation -----------------------------------------------------------------------------------------------
def test_aggregations_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert_close(aggregate_token_loss(per_token, mask, "grpo"), torch.tensor((2.0 + 4.0) / 2))
    assert_close(aggregate_token_loss(per_token, mask, "bnpo"), torch.tensor(10.0 / 4))
    assert_close(aggregate_token_loss(per_token, mask, "dapo"), torch.tensor(10.0 / 4))
    assert_close(aggregate_token_loss(per_token, mask, "dapo", num_items_in_batch=8), torch.tensor(10.0 / 8))
    assert_close(aggregate_token_loss(per_token, mask, "dr_grpo", max_completion_length=5), torch.tensor(10.0 / 10))
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate_token_loss(per_token, mask, "dr_grpo")


# --- Plackett-Luce ---------------------------------------------------------------------------------------------
def test_plackett_luce_with_two_responses_is_trls_sigmoid_dpo_loss():
    torch.manual_seed(0)
    beta = 0.1
    chosen, rejected = -torch.rand(16) * 40, -torch.rand(16) * 40
    ref_chosen, ref_rejected = -torch.rand(16) * 40, -torch.rand(16) * 40
    # TRL 1.16 DPOTrainer._compute_loss, loss_type="sigmoid": -logsigmoid(beta * (chosen_logratios - rejected_logratios))
    dpo = -F.logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected)))
    scores = beta * torch.stack([chosen - ref_chosen, rejected - ref_rejected], dim=1).reshape(-1)
    groups = torch.arange(16).repeat_interleave(2)
    ranks = torch.tensor([1, 2]).repeat(16)
    assert_close(plackett_luce_loss(scores, ranks, groups), dpo, rtol=0, atol=1e-6)


def test_plackett_luce_by_hand_with_three_responses_listed_out_of_order():
    # responses scored [1, 0, 2] and ranked [2, 3, 1]: the order best -> worst is (2, 0, 1) with scores (2, 1, 0)
    scores = torch.tensor([1.0, 0.0, 2.0])
    expected = -(2 - math.log(math.e**2 + math.e + 1)) - (1 - math.log(math.e + 1))  # the last term is log 1 = 0
    loss = plackett_luce_loss(scores, torch.tensor([2, 3, 1]), torch.zeros(3, dtype=torch.long))
    assert_close(loss, torch.tensor([expected]))


def test_plackett_luce_ties_compete_only_against_worse_responses():
    scores = torch.tensor([1.0, 0.5, -1.0, 3.0, 4.0])
    ranks = torch.tensor([1, 1, 2, 1, 1])
    groups = torch.tensor([0, 0, 0, 1, 1])
    loss = plackett_luce_loss(scores, ranks, groups)
    # group 0: each tied top response against the worst only; group 1 (all tied) adds nothing
    expected0 = -(1 - math.log(math.e + math.exp(-1))) - (0.5 - math.log(math.exp(0.5) + math.exp(-1)))
    assert_close(loss, torch.tensor([expected0, 0.0]))


# --- Kendall tau -----------------------------------------------------------------------------------------------
def test_kendall_tau_of_the_ranking_1_4_2_3():
    # scores [4, 3, 2, 1] vs ranking [1, 4, 2, 3]: pairs (0,1) (0,2) (0,3) (2,3) agree, (1,2) (1,3) disagree -> 2/6
    taus = group_kendall_tau(torch.tensor([4.0, 3.0, 2.0, 1.0]), RANKING, ONE_GROUP)
    assert_close(taus, torch.tensor([1 / 3]))
    assert kendall_tau([4, 3, 2, 1], [4, 1, 3, 2]) == pytest.approx(1 / 3)  # the same, with scores on both sides


def test_kendall_tau_b_with_ties_and_undefined_cases():
    # scores [2, 1, 1] vs ranks [1, 2, 3]: C = 2, D = 0, one tie in the scores: 2 / sqrt(2 * 3)
    taus = group_kendall_tau(torch.tensor([2.0, 1.0, 1.0, 0.0, 0.0]), torch.tensor([1, 2, 3, 1, 2]),
                             torch.tensor([0, 0, 0, 1, 1]))  # fmt: skip
    assert_close(taus[0], torch.tensor(2 / math.sqrt(6)))
    assert math.isnan(taus[1])  # all-tied scores: no order to compare
    assert kendall_tau([0, 0, 0], [1, 2, 3]) == 0.0
    assert kendall_tau([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
