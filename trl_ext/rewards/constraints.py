"""Prompts with constraints: user requests with IFEval-style instructions attached, as IFEval builds its prompts.

Each request gets one or more instructions drawn at random (never two that IFEval's `INSTRUCTION_CONFLICTS` says
conflict), each with its arguments drawn by the instruction's own `build_description()` and described by the
instruction's own text; the row carries them as IFEval rows do (`instruction_id_list`, `kwargs`), so
`instruction_following` checks answers against exactly what the prompt asked. Seeded: the same requests, seed and
settings give the same file.

    trl-ext constraints recipes/data/hh-rlhf-harmless-test.jsonl.gz --output prompts.jsonl --max_requests 200
    python -m trl_ext.rewards.constraints my_prompts.jsonl --output prompts.jsonl --constraints_per_prompt 1-2

Requests are the first user turn of each row's prompt (an HH-RLHF transcript's first human turn); repeated requests
are kept once (the count is reported).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checkers import (
    ConstraintError,
    ifeval_instructions,
    registry,
    seeded_random,
    text_of,
    unsupported_reason,
)

logger = logging.getLogger(__name__)

# Arguments a checker cannot draw itself: they come from the request.
_FROM_REQUEST = {"combination:repeat_prompt": "prompt_to_repeat"}
# IFEval draws `nth_paragraph` up to 5 whatever `num_paragraphs` is; a paragraph past the last cannot be satisfied.
_DRAWS = 20


def default_instructions() -> tuple[str, ...]:
    """IFEval's instruction types that can be checked here (all 25 but those whose checkers need NLTK data)."""
    return tuple(i for i in ifeval_instructions() if unsupported_reason(i) is None)


def conflicts() -> dict[str, set[str]]:
    """IFEval's `INSTRUCTION_CONFLICTS` made symmetric (A conflicts with B => B with A; each with itself), as
    IFEval's own `conflict_make` does, on a copy."""
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS, conflict_make

    return conflict_make(copy.deepcopy(INSTRUCTION_CONFLICTS))


def _valid(instruction_id: str, arguments: dict[str, Any]) -> bool:
    if instruction_id == "length_constraints:nth_paragraph_first_word":
        return arguments["nth_paragraph"] <= arguments["num_paragraphs"]
    return True


def build_instruction(instruction_id: str, request: str) -> tuple[str, dict[str, Any]]:
    """One instruction's description and arguments, drawn by its checker (from the global `random`: seed it)."""
    checker_class = registry()[instruction_id]
    for _ in range(_DRAWS):
        checker = checker_class(instruction_id)
        if instruction_id in _FROM_REQUEST:
            description = checker.build_description(**{_FROM_REQUEST[instruction_id]: request})
        else:
            try:
                description = checker.build_description()
            except (ValueError, TypeError) as error:
                raise ConstraintError(
                    f"instruction {instruction_id!r} needs arguments from the request ({error})"
                ) from None
        arguments = checker.get_instruction_args() or {}
        if _valid(instruction_id, arguments):
            return description, arguments
    raise ConstraintError(f"instruction {instruction_id!r}: no satisfiable arguments in {_DRAWS} draws")


def parse_count(value: str | int) -> tuple[int, int]:
    """``"2"`` -> (2, 2); ``"1-3"`` -> (1, 3)."""
    text = str(value).strip()
    low, _, high = text.partition("-")
    try:
        bounds = (int(low), int(high or low))
    except ValueError:
        raise ValueError(f"constraints_per_prompt: expected N or N-M, got {value!r}") from None
    if not 1 <= bounds[0] <= bounds[1]:
        raise ValueError(f"constraints_per_prompt: expected 1 <= N <= M, got {value!r}")
    return bounds


def attach_constraints(
    requests: Sequence[str],
    *,
    seed: int = 0,
    constraints_per_prompt: str | int = "1-3",
    instructions: Sequence[str] | None = None,
    conversational: bool = True,
) -> list[dict[str, Any]]:
    """IFEval-shaped rows: ``{"prompt", "instruction_id_list", "kwargs"}`` for each request.

    The prompt is the request, a blank line, then each instruction's description on its own line (as a one-message
    user conversation when `conversational`). Row i draws from its own seed (`seed`, i), so a row does not change
    when other requests are added after it.
    """
    low, high = parse_count(constraints_per_prompt)
    pool = list(instructions or default_instructions())
    for instruction_id in pool:
        reason = unsupported_reason(instruction_id)
        if reason is not None:
            raise ConstraintError(f"instruction {instruction_id!r}: {reason}")
    table = conflicts()
    rows = []
    for index, request in enumerate(requests):
        rng = random.Random(f"{seed}/{index}")
        wanted = rng.randint(low, high)
        chosen: list[str] = []
        for instruction_id in rng.sample(pool, len(pool)):
            if len(chosen) == wanted:
                break
            if not any(instruction_id in table.get(c, {c}) for c in chosen):  # symmetric: each side lists the other
                chosen.append(instruction_id)
        descriptions, arguments = [], []
        with seeded_random(rng.randrange(2**32)):
            for instruction_id in chosen:
                description, args = build_instruction(instruction_id, request)
                descriptions.append(description)
                arguments.append(args)
        text = request.rstrip() + "\n\n" + "\n".join(descriptions)
        rows.append(
            {
                "prompt": [{"role": "user", "content": text}] if conversational else text,
                "instruction_id_list": chosen,
                "kwargs": arguments,
            }
        )
    return rows


def read_requests(source: str, max_requests: int | None = None, skip_requests: int = 0) -> tuple[list[str], int]:
    """The first user turn of each row's prompt (any shape with a prompt; HH-RLHF transcripts parsed into turns),
    repeats kept once, the first `skip_requests` distinct ones left out: ``(requests, repeats left out)``.

    Requests are counted after repeats are removed, so ``--max_requests N`` and ``--skip_requests N`` on the same
    file split it by request: no request is on both sides (a training file and a held-out file)."""
    import dataset_builders

    prompts = dataset_builders.load(source, method="ppo", conversational=True)["prompt"]
    seen: dict[str, None] = {}
    repeats = 0
    for prompt in prompts:
        request = text_of(prompt[:1] if isinstance(prompt, list) else prompt).strip()
        if not request:
            continue
        if request in seen:
            repeats += 1
            continue
        seen[request] = None
        if max_requests is not None and len(seen) >= skip_requests + max_requests:
            break
    return list(seen)[skip_requests:], repeats


def write_jsonl(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trl-ext constraints",
        description="Attach IFEval-style constraints to user requests (prompt + instruction_id_list + kwargs rows).",
    )
    parser.add_argument("requests", help="any data file with a prompt (first user turn used), e.g. HH-RLHF pairs")
    parser.add_argument("--output", required=True, help="JSONL file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--constraints_per_prompt", default="1-3", help="N or N-M (drawn uniformly), default 1-3")
    parser.add_argument(
        "--instructions", nargs="+", help="instruction ids to draw from (default: IFEval's types checkable here)"
    )
    parser.add_argument("--exclude", nargs="+", default=[], help="instruction ids never drawn")
    parser.add_argument("--max_requests", type=int, help="use only the first N distinct requests")
    parser.add_argument(
        "--skip_requests",
        type=int,
        default=0,
        help="leave out the first N distinct requests (a held-out file: --skip_requests = the training file's N)",
    )
    parser.add_argument(
        "--conversational", choices=("true", "false"), default="true", help="prompt as a user message (default)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from dataset_builders.errors import DataError

    args = make_parser().parse_args(argv)
    try:
        pool = [i for i in (args.instructions or default_instructions()) if i not in set(args.exclude)]
        if not pool:
            raise ConstraintError("no instruction left to draw from (--instructions minus --exclude)")
        if args.skip_requests < 0:
            raise ValueError(f"--skip_requests must be >= 0, got {args.skip_requests}")
        requests, repeats = read_requests(args.requests, args.max_requests, args.skip_requests)
        rows = attach_constraints(
            requests,
            seed=args.seed,
            constraints_per_prompt=args.constraints_per_prompt,
            instructions=pool,
            conversational=args.conversational == "true",
        )
    except (ConstraintError, DataError, ValueError, FileNotFoundError) as error:
        print(f"trl-ext constraints: error: {error}", file=sys.stderr)
        return 2
    write_jsonl(rows, args.output)
    counts: dict[str, int] = {}
    for row in rows:
        for instruction_id in row["instruction_id_list"]:
            counts[instruction_id] = counts.get(instruction_id, 0) + 1
    print(
        f"{args.output}: {len(rows)} prompts with {sum(counts.values())} constraints "
        f"({len(counts)} instruction types); {repeats} repeated request(s) left out"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
