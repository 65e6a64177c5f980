"""Instruction following as IFEval scores it: greedy answers to prompts with constraints, checked by IFEval's own
checkers (`trl_ext.rewards`), base vs trained on the same prompts.

- prompt-level strict pass rate: the fraction of prompts whose answer follows *every* constraint (IFEval's
  "prompt-level strict accuracy"); instruction-level: the fraction of all constraints followed;
- an answer cut at `max_new_tokens` (no end of turn) or empty counts as following nothing: a model cannot pass by
  rambling past the limit, and the cut count is reported;
- the gain is paired: each prompt's trained result minus its base result, with the standard error of that mean
  (`paired_gain`), since both models answer the same prompts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from trl_ext.rewards.checkers import text_of, verify

from .generation import Generations, generate

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Answers:
    """Greedy answers to constraint prompts and their verdicts (one entry per prompt, in order)."""

    completions: list[str]
    followed: list[tuple[bool, ...]]  # per prompt: strict verdict of each of its constraints
    finished: list[bool]  # ended with an end-of-turn token before max_new_tokens
    lengths: list[int]  # tokens, end-of-turn excluded

    @property
    def prompt_strict(self) -> list[float]:
        """1.0 where the answer followed every constraint of its prompt (IFEval's prompt-level strict)."""
        return [float(all(f)) for f in self.followed]

    @property
    def instruction_strict(self) -> float:
        """The fraction of all constraints followed (IFEval's instruction-level strict)."""
        total = sum(len(f) for f in self.followed)
        return sum(sum(f) for f in self.followed) / total if total else float("nan")

    def summary(self) -> dict[str, float]:
        n = len(self.followed)
        return {
            "prompts": n,
            "prompt_strict": sum(self.prompt_strict) / n if n else float("nan"),
            "instruction_strict": self.instruction_strict,
            "mean_length_tokens": sum(self.lengths) / n if n else float("nan"),
            "cut_at_max_new_tokens": sum(not f for f in self.finished),
        }


def score_answers(rows: Sequence[dict[str, Any]], completions: Sequence[str], finished: Sequence[bool], lengths: Sequence[int]) -> Answers:  # fmt: skip
    """Verdicts for answers to `rows` (each with `prompt`, `instruction_id_list`, `kwargs`): a cut or empty answer
    follows nothing."""
    followed = []
    for row, answer, done in zip(rows, completions, finished, strict=True):
        ids = list(row["instruction_id_list"])
        if not done or not answer.strip():
            followed.append((False,) * len(ids))
            continue
        verdict = verify(answer, ids, row.get("kwargs"), prompt=text_of(row["prompt"]))
        followed.append(tuple(verdict.strict))
    return Answers(list(completions), followed, list(finished), list(lengths))


@torch.no_grad()
def answer_constraint_prompts(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict[str, Any]],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "greedy answers",
) -> Answers:
    """Greedy answers (as IFEval is scored) to each row's prompt, checked against its constraints."""
    generated: Generations = generate(
        model,
        tokenizer,
        [row["prompt"] for row in rows],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        do_sample=False,
        seed=None,
        progress=progress,
        desc=desc,
    )
    lengths = [len(ids) - int(done) for ids, done in zip(generated.completion_ids, generated.finished)]
    return score_answers(rows, generated.completions, generated.finished, lengths)


def paired_gain(base: Sequence[float], trained: Sequence[float]) -> dict[str, float]:
    """Mean of trained - base over the same items, and the standard error of that mean (sample sd / sqrt(n))."""
    if len(base) != len(trained):
        raise ValueError(f"paired_gain: {len(base)} base results but {len(trained)} trained results")
    n = len(base)
    if n == 0:
        return {"gain": float("nan"), "paired_se": float("nan"), "n": 0}
    diffs = [t - b for b, t in zip(base, trained)]
    mean = sum(diffs) / n
    variance = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else float("nan")
    return {"gain": mean, "paired_se": math.sqrt(variance / n) if n > 1 else float("nan"), "n": n}
