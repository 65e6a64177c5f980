"""ORPO (Hong et al. 2024) with TRL's `trl.experimental.orpo.ORPOTrainer`, its row tokenization replaced by ours."""

from .orpo_trainer import ORPOTrainer

__all__ = ["ORPOTrainer"]
