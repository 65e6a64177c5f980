"""Rule-based rewards in TRL's reward-function form, `func(prompts=..., completions=..., **kwargs) -> list[float]`.

A recipe names one by its dotted path (`reward_function: trl_ext.ppo.rewards.toy_quality`) instead of a reward
model; tests pass the function itself to `PPOTrainer(reward_model=...)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from trl_ext.synthetic import quality


def _text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]  # a chat message list


def toy_quality(prompts: list, completions: list, **kwargs) -> list[float]:
    """The known-truth score of `trl_ext.synthetic.ToyTask`: the fraction of good words in each completion."""
    return [quality(_text(c)) for c in completions]


def import_reward_function(path: str) -> Callable[..., list[float]]:
    """``"package.module.function"`` -> the function (as TRL's GRPO script reads `--reward_funcs`)."""
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(
            f"reward_function must be a dotted path such as trl_ext.ppo.rewards.toy_quality, got {path!r}"
        )
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"reward_function {path!r}: cannot import it ({error})") from error
