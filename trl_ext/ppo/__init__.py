"""PPO for RLHF: `PPOConfig`, `PPOTrainer` and the pure loss functions they are built from (`ppo_loss`)."""

from trl_ext.ops import kl_estimate, masked_mean, masked_var, masked_whiten

from .ppo_config import PPOConfig
from .ppo_loss import (
    adaptive_kl_coef,
    explained_variance,
    generalized_advantage_estimation,
    last_token_index,
    per_token_rewards,
    ppo_policy_loss,
    ppo_value_loss,
)
from .ppo_trainer import PPOTrainer, ValueHead, weight_bytes

__all__ = [
    "PPOConfig",
    "PPOTrainer",
    "ValueHead",
    "adaptive_kl_coef",
    "explained_variance",
    "generalized_advantage_estimation",
    "kl_estimate",
    "last_token_index",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "per_token_rewards",
    "ppo_policy_loss",
    "ppo_value_loss",
    "weight_bytes",
]
