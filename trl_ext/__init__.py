"""trl_ext: thin extensions over TRL for aligning a model on one consumer GPU.

Trainers TRL 1.16 lacks (each a small subclass or a short trainer on TRL's machinery):

- `LengthAwareIPOTrainer` / `LengthAwareIPOConfig`: IPO with length normalization and a length-regularized target.
- `RankedGRPOTrainer` / `RankedGRPOConfig`: offline GRPO (and Plackett-Luce) on human-ranked response lists.
- `PPOTrainer` / `PPOConfig`: PPO with a critic and a reward model, QLoRA-friendly (one 4-bit base, several roles).
- `ORPOTrainer`: TRL's experimental ORPO trainer tokenizing chat data as TRL's DPOTrainer does (one end of turn per
  answer; long prompts truncated from the start instead of leaving an empty answer).

Names are imported lazily so `import trl_ext` stays cheap.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "LengthAwareIPOConfig": "trl_ext.ipo",
    "LengthAwareIPOTrainer": "trl_ext.ipo",
    "RankedGRPOConfig": "trl_ext.ranked_grpo",
    "RankedGRPOTrainer": "trl_ext.ranked_grpo",
    "PPOConfig": "trl_ext.ppo",
    "PPOTrainer": "trl_ext.ppo",
    "ORPOTrainer": "trl_ext.orpo",
    "ToyTask": "trl_ext.toy.synthetic",
    "resolve_model_name": "trl_ext.models",
    "TINY_MODEL_ID": "trl_ext.toy.tiny",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trl_ext' has no attribute {name!r}")
