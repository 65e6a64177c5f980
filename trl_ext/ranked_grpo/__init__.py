"""Ranking-based GRPO (docs/grpo.md).

- Offline: `RankedGRPOConfig` / `RankedGRPOTrainer`, GRPO (or listwise DPO) on the ranked responses themselves.
- Online: a reward model learned from the rankings (Bradley-Terry with `trl.RewardTrainer`, or listwise with
  `PlackettLuceRewardTrainer`) scores `trl.GRPOTrainer`'s samples through `RewardModelScorer`.
- The pure loss, advantage and metric functions of `ranked_grpo_loss`.
"""

from .online import RewardModelScorer, consecutive_groups, load_reward_model, ranks_within_groups
from .plackett_luce_reward import DataCollatorForRankedRewards, PlackettLuceRewardTrainer, reward_model_input_ids
from .ranked_grpo_config import RankedGRPOConfig
from .ranked_grpo_loss import (
    GRPOTokenLoss,
    aggregate_token_loss,
    group_advantages,
    group_kendall_tau,
    grpo_token_loss,
    k3_kl,
    kendall_tau,
    plackett_luce_loss,
    rank_rewards,
)
from .ranked_grpo_trainer import DataCollatorForRankedGroups, RankedGRPOTrainer, implicit_rewards, tokenize_ranked_row

__all__ = [
    "DataCollatorForRankedGroups",
    "DataCollatorForRankedRewards",
    "GRPOTokenLoss",
    "PlackettLuceRewardTrainer",
    "RankedGRPOConfig",
    "RankedGRPOTrainer",
    "RewardModelScorer",
    "aggregate_token_loss",
    "consecutive_groups",
    "group_advantages",
    "group_kendall_tau",
    "grpo_token_loss",
    "implicit_rewards",
    "k3_kl",
    "load_reward_model",
    "kendall_tau",
    "plackett_luce_loss",
    "rank_rewards",
    "ranks_within_groups",
    "reward_model_input_ids",
    "tokenize_ranked_row",
]
