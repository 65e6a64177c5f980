"""Reward functions in TRL's form, `func(prompts, completions, **columns) -> list[float]`, usable wherever a reward
model is: PPO (`recipes/ppo.py`), online GRPO (`recipes/grpo.py --mode online`, as TRL's `reward_funcs`) and the
preference-data generator (`recipes/generate.py`).

A config names them in `reward_functions`: a name from `REWARD_FUNCTIONS`, or the dotted import path of your own
function (`mypackage.rewards.score`). `reward_weights` weighs each reward as TRL's GRPO does: one weight per reward,
the reward model first (when there is one), then `reward_functions` in order.

    reward_functions: [instruction_following]   # the fraction of the prompt's IFEval constraints followed
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from trl_ext.errors import ConfigError

from .checkers import (
    CONSTRAINT_FIELDS,
    ConstraintError,
    check_constraints,
    instruction_following,
    instruction_following_strict,
    supported_instructions,
    verify,
)

RewardFunc = Callable[..., list[float]]

# name -> (function, the data columns it reads besides prompts and completions)
REWARD_FUNCTIONS: dict[str, tuple[RewardFunc, tuple[str, ...]]] = {
    "instruction_following": (instruction_following, CONSTRAINT_FIELDS),
    "instruction_following_strict": (instruction_following_strict, CONSTRAINT_FIELDS),
}

__all__ = [
    "CONSTRAINT_FIELDS",
    "REWARD_FUNCTIONS",
    "ConstraintError",
    "check_constraints",
    "check_reward_columns",
    "import_reward_function",
    "instruction_following",
    "instruction_following_strict",
    "resolve_reward_functions",
    "reward_weights",
    "supported_instructions",
    "verify",
]


def import_reward_function(path: str) -> RewardFunc:
    """``"package.module.function"`` -> the function (as TRL's GRPO script reads `--reward_funcs`)."""
    module, _, name = path.rpartition(".")
    if not module:
        raise ConfigError(
            f"reward function {path!r}: not a known name ({', '.join(REWARD_FUNCTIONS)}) nor a dotted path such as "
            "trl_ext.toy.synthetic.toy_quality"
        )
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"reward function {path!r}: cannot import it ({error})") from error


def resolve_reward_functions(names: Sequence[str] | str | None) -> list[RewardFunc]:
    """Config names (or dotted paths) -> the functions; empty strings are ignored (`--reward_functions ""` clears
    a YAML list from the command line)."""
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    return [REWARD_FUNCTIONS[n][0] if n in REWARD_FUNCTIONS else import_reward_function(n) for n in names if n]


def reward_weights(weights: Sequence[float] | None, n_rewards: int) -> list[float]:
    """One weight per reward (all 1.0 when not given); a count that does not match is an error."""
    if weights is None:
        return [1.0] * n_rewards
    weights = [float(w) for w in weights]
    if len(weights) != n_rewards:
        raise ConfigError(
            f"reward_weights has {len(weights)} value(s) for {n_rewards} reward(s) (the reward model first, if any, "
            "then reward_functions in order)"
        )
    return weights


def check_reward_columns(functions: Sequence[RewardFunc], dataset: Any, source: str = "the data") -> None:
    """Before a model is loaded: every named reward finds the columns it reads, and every row's constraints can be
    checked here (`ConstraintError`, one line naming the row)."""
    needed = {c for f in functions for name, (g, cols) in REWARD_FUNCTIONS.items() if g is f for c in cols}
    if not needed:
        return
    columns = getattr(dataset, "column_names", None) or []
    if "instruction_id_list" not in columns:
        raise ConstraintError(
            f"{source}: instruction_following needs prompts with constraints (instruction_id_list and kwargs fields, "
            "as IFEval rows carry them); make them with `trl-ext constraints REQUESTS --output prompts.jsonl`"
        )
    kwargs = dataset["kwargs"] if "kwargs" in columns else [None] * len(dataset)
    for row, (ids, arguments) in enumerate(zip(dataset["instruction_id_list"], kwargs), start=1):
        try:
            ids, _ = check_constraints(ids, arguments)
        except ConstraintError as error:
            raise ConstraintError(f"{source}, row {row}: {error}") from None
        if not ids:
            raise ConstraintError(f"{source}, row {row}: instruction_id_list is empty (no constraint to check)")
