"""Ranking-based GRPO: offline (`RankedGRPOTrainer`) and the online pieces (Plackett-Luce reward model, reward wrapper)."""

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
from .ranked_grpo_trainer import DataCollatorForRankedGroups, RankedGRPOTrainer, tokenize_ranked_row

__all__ = [
    "DataCollatorForRankedGroups",
    "GRPOTokenLoss",
    "RankedGRPOConfig",
    "RankedGRPOTrainer",
    "aggregate_token_loss",
    "group_advantages",
    "group_kendall_tau",
    "grpo_token_loss",
    "k3_kl",
    "kendall_tau",
    "plackett_luce_loss",
    "rank_rewards",
    "tokenize_ranked_row",
]
