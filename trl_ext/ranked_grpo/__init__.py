"""Ranking-based GRPO (docs/grpo.md).

- Offline: `RankedGRPOConfig` / `RankedGRPOTrainer`, GRPO (or listwise DPO) on the ranked responses themselves.
- Online: a reward model learned from the rankings (Bradley-Terry with `trl.RewardTrainer`, or listwise with
  `PlackettLuceRewardTrainer`) scores `trl.GRPOTrainer`'s samples through `RewardModelScorer`.
  The reward model is given or trained here (`reward_model_for`, `RankedRewardArguments`).
- Ranked groups as data (`groups`): tokenization, collation, implicit rewards per response.
- The pure loss, advantage and metric functions of `ranked_grpo_loss`.
"""

from .groups import DataCollatorForRankedGroups, group_implicit_rewards, tokenize_ranked_row
from .online import RewardModelScorer, layout_group_index, ranks_across_processes, ranks_within_groups
from .plackett_luce_reward import DataCollatorForRankedRewards, PlackettLuceRewardTrainer
from .ranked_grpo_config import RankedGRPOConfig
from .ranked_grpo_loss import (
    GRPOTokenLoss,
    aggregate_token_loss,
    fractional_ranks,
    group_advantages,
    group_kendall_tau,
    grpo_token_loss,
    kendall_tau,
    plackett_luce_loss,
    rank_rewards,
)
from .ranked_grpo_trainer import RankedGRPOTrainer
from .reward_model import RankedRewardArguments, reward_config, reward_model_for

__all__ = [
    "DataCollatorForRankedGroups",
    "DataCollatorForRankedRewards",
    "GRPOTokenLoss",
    "PlackettLuceRewardTrainer",
    "RankedGRPOConfig",
    "RankedGRPOTrainer",
    "RankedRewardArguments",
    "RewardModelScorer",
    "aggregate_token_loss",
    "fractional_ranks",
    "group_advantages",
    "group_implicit_rewards",
    "group_kendall_tau",
    "grpo_token_loss",
    "kendall_tau",
    "layout_group_index",
    "plackett_luce_loss",
    "rank_rewards",
    "reward_config",
    "reward_model_for",
    "ranks_across_processes",
    "ranks_within_groups",
    "tokenize_ranked_row",
]
