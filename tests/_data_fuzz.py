"""A generator of random data for `dataset_builders.load`: rows built from the fields every shape and layout uses
(and others), values of every type (nested, empty, NaN, huge, control characters, lone surrogates, emoji), written in
every file form (JSONL, JSON, JSON with comments, CSV, Parquet, gzip, raw bytes), sometimes a valid row with one field
changed. `run_case(seed, folder)` must return a Dataset or raise `DataError`: anything else is a bug."""

from __future__ import annotations

import copy
import csv
import gzip
import io
import json
import math
import random
from pathlib import Path
from typing import Any

import dataset_builders
from dataset_builders import METHODS, DataError
from dataset_builders.formats import FORMATS
from dataset_builders.shapes import FIELDS

KNOWN_FIELDS = sorted({f for fields in FIELDS.values() for f in fields} | {f for fmt in FORMATS for f in fmt.marks}
                      | {"system", "history", "input", "output", "id", "score", "completions", "messages", "kto_tag"})  # fmt: skip
ODD_TEXT = ["", " ", "\x00", "\x1f\x7f", "\ud800", "\udc00x", "😀", "\U0001f600" * 3, "漢字", "\u202e", "\r\n",
            "Human:", "\n\nHuman: hi\n\nAssistant: yo", "NaN", "null", "true", "1", "A", "b", "tie", "good", "👍",
            "x" * 5000, "\ufeff", '{"a": 1}', "[1, 2]", "\\u0000"]  # fmt: skip
ROLES = ["user", "assistant", "system", "tool", "", None, 1, "human", "gpt"]


def random_text(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(ODD_TEXT)
    return "".join(rng.choice(ODD_TEXT[:20] + ["a", "b", " "]) for _ in range(rng.randint(1, 6)))


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(12 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, 2, -1, 3, 10**30, -(10**20), 2**63, 7])
    if kind == 3:
        return rng.choice([0.5, math.nan, math.inf, -math.inf, -0.0, 1e308, 1.0, 2.5])
    if kind in (4, 5, 6):
        return random_text(rng)
    if kind == 7:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == 8:
        return [random_message(rng) for _ in range(rng.randint(0, 4))]
    if kind == 9:
        return random_message(rng)
    if kind == 10:
        return {rng.choice(KNOWN_FIELDS + ["answer", "rank", "value", "from", "text", "replies"]): random_value(rng, depth + 1)
                for _ in range(rng.randint(0, 3))}  # fmt: skip
    return [random_text(rng) for _ in range(rng.randint(0, 4))]


def random_message(rng: random.Random) -> dict[str, Any]:
    message: dict[str, Any] = {}
    if rng.random() < 0.9:
        message["role"] = rng.choice(ROLES)
    if rng.random() < 0.9:
        message["content"] = random_text(rng) if rng.random() < 0.8 else random_value(rng, 2)
    if rng.random() < 0.1:
        message["from"], message["value"] = rng.choice(["human", "gpt", "x"]), random_text(rng)
    return message


def valid_rows(rng: random.Random) -> list[dict[str, Any]]:
    """Valid rows of a shape or a layout, to be mutated."""
    fmt = rng.choice(FORMATS)
    if rng.random() < 0.5:
        return [copy.deepcopy(fmt.example) for _ in range(rng.randint(1, 3))]
    shape_rows = {
        "pairs": {"prompt": "Q", "chosen": "a", "rejected": "b"},
        "pairwise_ab": {"prompt": "Q", "response_a": "a", "response_b": "b", "preference": "A"},
        "binary": {"prompt": "Q", "response": "a", "label": True},
        "ranked": {"prompt": "Q", "responses": ["a", "b", "c"], "ranking": [2, 1, 3]},
        "pairs_with_lengths": {"prompt": "Q", "chosen": "a", "rejected": "bb", "chosen_length": 1, "rejected_length": 2},
        "pairs_sft_target": {"prompt": "Q", "chosen": "a", "rejected": "b", "sft_target": "chosen"},
        "messages": {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "a"}]},
        "hh": {"chosen": "\n\nHuman: Q\n\nAssistant: a", "rejected": "\n\nHuman: Q\n\nAssistant: b"},
        "ultrafeedback": {"instruction": "Q", "completions": [{"response": "a", "overall_score": 3}, {"response": "b", "overall_score": 5}]},
    }  # fmt: skip
    row = rng.choice(list(shape_rows.values()))
    return [copy.deepcopy(row) for _ in range(rng.randint(1, 3))]


def random_rows(rng: random.Random) -> list[Any]:
    mode = rng.random()
    if mode < 0.5:  # a valid layout with some fields changed, removed or added
        rows = valid_rows(rng)
        for row in rows:
            for _ in range(rng.randint(1, 3)):
                action = rng.random()
                keys = list(row)
                if action < 0.5 and keys:
                    row[rng.choice(keys)] = random_value(rng)
                elif action < 0.7 and keys:
                    row.pop(rng.choice(keys))
                else:
                    row[rng.choice(KNOWN_FIELDS + [random_text(rng)])] = random_value(rng)
        return rows
    if mode < 0.9:  # rows with the same fields, random values
        keys = rng.sample(KNOWN_FIELDS, rng.randint(1, 5))
        return [{k: random_value(rng) for k in keys} for _ in range(rng.randint(1, 5))]
    return [random_value(rng) for _ in range(rng.randint(0, 3))]  # not even objects


def _dumps(value: Any, rng: random.Random) -> str:
    return json.dumps(value, ensure_ascii=rng.random() < 0.5, allow_nan=True)


def write(rows: list[Any], rng: random.Random, folder: Path) -> Any:
    """The rows as a list, or a file of some form (the path)."""
    form = rng.choice(["list", "jsonl", "jsonl", "json", "jsonc", "csv", "parquet", "gz", "raw"])
    if form == "list":
        return rows
    path = folder / f"data.{ {'gz': 'jsonl.gz', 'raw': 'jsonl'}.get(form, form) }"
    try:
        if form in ("jsonl", "gz"):
            text = "".join(_dumps(r, rng) + "\n" for r in rows)
            data = text.encode("utf-8", "surrogatepass")
            path.write_bytes(gzip.compress(data) if form == "gz" else data)
        elif form == "json":
            path.write_bytes(_dumps(rows, rng).encode("utf-8", "surrogatepass"))
        elif form == "jsonc":
            path.write_bytes(("// comment\n" + _dumps(rows, rng) + "\n/* end */").encode("utf-8", "surrogatepass"))
        elif form == "csv":
            buffer = io.StringIO()
            keys = list(dict.fromkeys(k for r in rows if isinstance(r, dict) for k in r))
            writer = csv.writer(buffer)
            writer.writerow(keys)
            for r in rows:
                if isinstance(r, dict):
                    writer.writerow([v if isinstance(v, str) else _dumps(v, rng) for v in (r.get(k) for k in keys)])
            path.write_bytes(buffer.getvalue().encode("utf-8", "surrogatepass"))
        elif form == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist([r for r in rows if isinstance(r, dict)]), path)
        else:  # raw: a JSONL file cut, spliced or with stray bytes
            data = "".join(_dumps(r, rng) + "\n" for r in rows).encode("utf-8", "surrogatepass")
            cut = rng.randrange(len(data) + 1)
            junk = rng.choice([b"", b"\xff\xfe", b"\x00", b"{", b"\n\n", b"]", "\ufeff".encode()])
            path.write_bytes(data[:cut] + junk + data[cut:] if rng.random() < 0.5 else data[:cut])
    except Exception:  # the writer itself refused (e.g. Arrow on mixed types): use the list
        return rows
    return path


def run_case(seed: int, folder: Path) -> tuple[str, str | None]:
    """One case: returns (outcome, description); outcome 'ok', 'data_error' or 'bug' (with the exception)."""
    rng = random.Random(seed)
    rows = random_rows(rng)
    source = write(rows, rng, folder)
    method = rng.choice([None, *METHODS])
    options: dict[str, Any] = {}
    if rng.random() < 0.3:
        options["on_error"] = "drop"
    if rng.random() < 0.1:
        options["format"] = rng.choice(FORMATS).name
    if rng.random() < 0.1:
        options["conversational"] = True
    try:
        dataset_builders.load(source, method=method, **options)
        return "ok", None
    except DataError as error:
        text = str(error)
        if "\n" in text.strip():
            return "bug", f"seed {seed}: DataError over several lines: {text[:300]!r}"
        return "data_error", None
    except Exception as error:  # noqa: BLE001 - the point: any other exception is a bug
        return "bug", f"seed {seed}: {type(error).__name__}: {str(error)[:300]} (method={method}, options={options})"


def main(argv: list[str] | None = None) -> int:
    """`python tests/_data_fuzz.py START COUNT`: run the cases, print one line per bug, exit 1 if any. The seed in
    progress is written to $DATA_FUZZ_PROGRESS (if set) first, so a crash of the process names it."""
    import logging
    import os
    import sys
    import tempfile

    args = sys.argv[1:] if argv is None else argv
    start, count = int(args[0]), int(args[1])
    logging.disable(logging.WARNING)
    progress = os.environ.get("DATA_FUZZ_PROGRESS")
    outcomes: dict[str, int] = {}
    bugs = []
    for seed in range(start, start + count):
        if progress:
            Path(progress).write_text(str(seed))
        with tempfile.TemporaryDirectory() as folder:
            outcome, description = run_case(seed, Path(folder))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if description:
            bugs.append(description)
    print(f"{count} cases from seed {start}: {outcomes}")
    for bug in bugs:
        print(bug)
    return 1 if bugs else 0


if __name__ == "__main__":
    raise SystemExit(main())
