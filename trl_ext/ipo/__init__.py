"""Length-aware IPO: `LengthAwareIPOConfig`, `LengthAwareIPOTrainer` and the pure loss functions behind them."""

from .ipo_config import LengthAwareIPOConfig
from .ipo_loss import (
    IPOLoss,
    auto_length_penalty,
    ipo_margin,
    length_adjusted_target,
    length_aware_ipo_loss,
    length_desensitized_weights,
    relative_length_difference,
)
from .ipo_trainer import DataCollatorWithLengths, LengthAwareIPOTrainer

__all__ = [
    "DataCollatorWithLengths",
    "IPOLoss",
    "LengthAwareIPOConfig",
    "LengthAwareIPOTrainer",
    "auto_length_penalty",
    "ipo_margin",
    "length_adjusted_target",
    "length_aware_ipo_loss",
    "length_desensitized_weights",
    "relative_length_difference",
]
