"""Verifiable instruction following: IFEval's and IFBench's checkers, through the `if-verifiable` package.

A prompt carries its constraints as data, as IFEval rows do: `instruction_id_list` (e.g.
``["punctuation:no_comma", "length_constraints:number_words"]``) and `kwargs` (one argument object per instruction,
e.g. ``[{}, {"num_words": 120, "relation": "less than"}]``). An answer is checked by the library's own checkers
(Google's IFEval verifiers and AllenAI's IFBench verifiers, as `if_verifiable.common.evaluate_instructions` runs
them): strict (the answer as written) and loose (IFEval's variants: first/last line or markdown `*` removed).

Offline, six instruction types cannot be checked: their checkers need NLTK data (`punkt`/`punkt_tab`, `stopwords`,
`averaged_perceptron_tagger_eng`) that no package ships and that cannot be downloaded here (`NEEDS_NLTK_DATA`).
They are supported where that data is installed (`python -m nltk.downloader punkt punkt_tab stopwords
averaged_perceptron_tagger_eng`): `supported_instructions()` probes for it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

# Instruction types whose checkers need NLTK data that `if-verifiable` does not ship (it tries to download it).
NEEDS_NLTK_DATA = {
    "length_constraints:number_sentences": "punkt",  # IFEval
    "change_case:capital_word_frequency": "punkt_tab",  # IFEval
    "format:title_case": "punkt_tab",  # IFBench
    "ratio:stop_words": "stopwords",  # IFBench
    "words:start_verb": "punkt_tab, averaged_perceptron_tagger_eng",  # IFBench
    "words:words_position": "punkt_tab",  # IFBench
}
_PROBE_TEXT = "Hello world. This is a test of the checker. It has three sentences."
CONSTRAINT_FIELDS = ("instruction_id_list", "kwargs")


class ConstraintError(ValueError):
    """A prompt's constraints cannot be checked (unknown or unsupported instruction, malformed arguments)."""


@functools.cache
def _registries() -> tuple[dict[str, type], dict[str, type]]:
    """IFEval's and IFBench's instruction registries (id -> checker class); their ids do not overlap.

    Imported on first use: the library imports NLTK and langdetect (about 1.5 s). Its IFBench module calls
    `nltk.download` at import time for data it uses in four checkers; a reward must not reach the network (and
    on an offline machine each attempt waits for a connection), so that call is a no-op while it is imported.
    """
    import langdetect
    import nltk

    download = nltk.download
    nltk.download = lambda *args, **kwargs: False
    try:
        from if_verifiable.ifbench.instructions_registry import INSTRUCTION_DICT as ifbench
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT as ifeval
    finally:
        nltk.download = download
    # langdetect draws at random unless seeded: the same answer would score differently from run to run
    langdetect.DetectorFactory.seed = 0
    return dict(ifeval), dict(ifbench)


def registry() -> dict[str, type]:
    """Every instruction id `if-verifiable` knows (IFEval's 25 and IFBench's 58) -> its checker class."""
    ifeval, ifbench = _registries()
    return {**ifeval, **ifbench}


def ifeval_instructions() -> tuple[str, ...]:
    """IFEval's instruction ids, sorted."""
    return tuple(sorted(_registries()[0]))


def ifbench_instructions() -> tuple[str, ...]:
    """IFBench's instruction ids, sorted."""
    return tuple(sorted(_registries()[1]))


@contextlib.contextmanager
def seeded_random(seed: int) -> Iterator[None]:
    """The checkers draw their arguments from the global `random` module: seed it for the block, then restore it."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


@functools.cache
def _nltk_data_available(instruction_id: str) -> bool:
    checker = registry()[instruction_id](instruction_id)
    with seeded_random(0):
        checker.build_description()
    try:
        checker.check_following(_PROBE_TEXT)
    except LookupError:  # NLTK's "Resource ... not found"
        return False
    return True


def unsupported_reason(instruction_id: str) -> str | None:
    """None if answers can be checked against `instruction_id` here, else why not (one clause)."""
    if instruction_id not in registry():
        return "not an IFEval or IFBench instruction id"
    if instruction_id in NEEDS_NLTK_DATA and not _nltk_data_available(instruction_id):
        data = NEEDS_NLTK_DATA[instruction_id]
        return f"its checker needs NLTK data ({data}) that is not installed (python -m nltk.downloader {data})"
    return None


def supported_instructions() -> tuple[str, ...]:
    """The instruction ids that can be checked on this machine (sorted)."""
    return tuple(i for i in sorted(registry()) if unsupported_reason(i) is None)


def normalize_kwargs(instruction_id_list: Sequence[str], kwargs: Any) -> list[dict[str, Any]]:
    """One argument object per instruction, with unset (None) fields removed.

    Accepts what the rows hold: a list of objects (from Arrow, each with every key any instruction uses, None where
    unused), a JSON string of that list, or None / an empty list when no instruction takes arguments.
    """
    n = len(instruction_id_list)
    if isinstance(kwargs, str):
        kwargs = json.loads(kwargs) if kwargs.strip() else None
    if kwargs is None or (isinstance(kwargs, (list, tuple)) and len(kwargs) == 0):
        return [{} for _ in range(n)]
    if not isinstance(kwargs, (list, tuple)) or len(kwargs) != n:
        raise ConstraintError(f"kwargs must hold one object per instruction ({n}), got {kwargs!r}")
    out = []
    for item in kwargs:
        if isinstance(item, str):
            item = json.loads(item) if item.strip() else {}
        if item is None:
            item = {}
        if not isinstance(item, dict):
            raise ConstraintError(f"kwargs: each item must be an object of arguments, got {item!r}")
        out.append({k: v for k, v in item.items() if v is not None})
    return out


def check_constraints(instruction_id_list: Any, kwargs: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """Validated ``(instruction ids, argument objects)`` for one prompt; `ConstraintError` names what is wrong."""
    if isinstance(instruction_id_list, str):
        instruction_id_list = [instruction_id_list]
    if not isinstance(instruction_id_list, (list, tuple)) or not all(isinstance(i, str) for i in instruction_id_list):
        raise ConstraintError(f"instruction_id_list must be a list of instruction ids, got {instruction_id_list!r}")
    ids = list(instruction_id_list)
    for instruction_id in ids:
        reason = unsupported_reason(instruction_id)
        if reason is not None:
            raise ConstraintError(f"instruction {instruction_id!r}: {reason}")
    return ids, normalize_kwargs(ids, kwargs)


@dataclass(frozen=True)
class Verdict:
    """Whether one answer follows each of its prompt's instructions, strict and loose (IFEval's two readings)."""

    instruction_ids: tuple[str, ...]
    strict: tuple[bool, ...]
    loose: tuple[bool, ...]

    @property
    def fraction(self) -> float:
        """Instruction level: the fraction of the prompt's instructions followed (strict)."""
        return sum(self.strict) / len(self.strict) if self.strict else 0.0

    @property
    def all_followed(self) -> bool:
        """Prompt level: every instruction followed (strict)."""
        return bool(self.strict) and all(self.strict)


def verify(answer: str, instruction_id_list: Any, kwargs: Any, prompt: str = "") -> Verdict:
    """Check `answer` against the prompt's instructions. An empty answer follows none of them."""
    from if_verifiable.common import evaluate_instructions

    ids, arguments = check_constraints(instruction_id_list, kwargs)
    if not ids:
        raise ConstraintError("no constraints: instruction_id_list is empty")
    results, _ = evaluate_instructions(answer, ids, arguments, prompt, registry())
    if not results:  # empty (or thinking-only) answer: the library returns no results
        return Verdict(tuple(ids), (False,) * len(ids), (False,) * len(ids))
    return Verdict(tuple(ids), tuple(r.strict_pass for r in results), tuple(r.loose_pass for r in results))


def text_of(value: Any, role: str | None = None) -> str:
    """The text of a prompt or completion: a string, or the content of the last message (of `role`, if given)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return str(value.get("content") or "")
    if isinstance(value, (list, tuple)):
        messages = [m for m in value if isinstance(m, dict) and (role is None or m.get("role") == role)]
        return str(messages[-1].get("content") or "") if messages else ""
    return "" if value is None else str(value)


def _columns(n: int, instruction_id_list: Any, kwargs: Any, name: str) -> tuple[list, list]:
    if instruction_id_list is None:
        raise ConstraintError(
            f"{name} needs prompts with constraints: the data has no instruction_id_list / kwargs fields (IFEval rows; "
            "make them with `trl-ext constraints REQUESTS --output prompts.jsonl`)"
        )
    if kwargs is None:
        kwargs = [None] * n
    if len(instruction_id_list) != n or len(kwargs) != n:
        raise ConstraintError(f"{name}: {n} completions but {len(instruction_id_list)} constraint rows")
    return list(instruction_id_list), list(kwargs)


def verdicts(prompts: Sequence[Any], completions: Sequence[Any], instruction_id_list: Any, kwargs: Any) -> list[Verdict]:  # fmt: skip
    """`verify` for each (prompt, completion) with its row's constraints (TRL's column form: one entry per completion)."""
    ids, arguments = _columns(len(completions), instruction_id_list, kwargs, "instruction_following")
    return [
        verify(text_of(c, "assistant"), i, a, text_of(p, "user"))
        for p, c, i, a in zip(prompts, completions, ids, arguments)
    ]


def instruction_following(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    instruction_id_list: Sequence[Any] | None = None,
    kwargs: Sequence[Any] | None = None,
    **columns: Any,
) -> list[float]:
    """TRL reward function: the fraction of each prompt's instructions its completion follows (strict), in [0, 1].

    Completions are text or message lists (TRL's conversational form); `instruction_id_list` and `kwargs` are the
    data's columns, which TRL's `GRPOTrainer` (and `trl_ext.PPOTrainer`) pass to reward functions.

    Example:
        >>> instruction_following(["Say hi."], ["hi there"], [["change_case:english_lowercase", "punctuation:no_comma"]], [[{}, {}]])
        [1.0]
    """
    return [v.fraction for v in verdicts(prompts, completions, instruction_id_list, kwargs)]


def instruction_following_strict(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    instruction_id_list: Sequence[Any] | None = None,
    kwargs: Sequence[Any] | None = None,
    **columns: Any,
) -> list[float]:
    """TRL reward function: 1.0 if the completion follows every instruction of its prompt (strict), else 0.0."""
    return [float(v.all_followed) for v in verdicts(prompts, completions, instruction_id_list, kwargs)]
