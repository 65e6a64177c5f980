"""DPO with the pair's prompt computed once: TRL's `DPOTrainer` with prefix sharing (`trl_ext.prefix_sharing`)."""

from .dpo_trainer import PrefixSharingDPOConfig, PrefixSharingDPOTrainer

__all__ = ["PrefixSharingDPOConfig", "PrefixSharingDPOTrainer"]
