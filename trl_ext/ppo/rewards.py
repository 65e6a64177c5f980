"""Rule-based rewards in TRL's reward-function form, `func(prompts=..., completions=..., **kwargs) -> list[float]`.

A recipe names one by its dotted path (`reward_function: mypackage.rewards.score`) instead of a reward model; tests
pass the function itself to `PPOTrainer(reward_model=...)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def import_reward_function(path: str) -> Callable[..., list[float]]:
    """``"package.module.function"`` -> the function (as TRL's GRPO script reads `--reward_funcs`)."""
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(
            f"reward_function must be a dotted path such as trl_ext.testing.synthetic.toy_quality, got {path!r}"
        )
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"reward_function {path!r}: cannot import it ({error})") from error
