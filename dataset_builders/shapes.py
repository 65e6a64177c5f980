"""The input shapes: detection from the fields, vectorized validation, and normalization to canonical columns.

Validation runs on whole Arrow columns (``pyarrow.compute`` and numpy): every check yields a boolean mask of
bad rows and a function that words the problem for one row. The first bad row (in file order) becomes the
`DataError`; with ``on_error="drop"`` all bad rows are filtered out and counted instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import DataError, short
from .readers import Source

# The six input shapes, in the order README.md and docs/data.md list them.
SHAPES = ("pairwise_ab", "pairs", "pairs_with_lengths", "binary", "pairs_sft_target", "ranked")
# Public formats we import: Anthropic HH-RLHF transcripts -> pairs; UltraFeedback-style scored lists -> ranked.
IMPORT_FORMATS = ("hh_rlhf", "ultrafeedback")
# What SFT, PPO and online GRPO take directly.
PLAIN_SHAPES = ("prompt_completion", "messages", "prompts")
ALL_SHAPES = SHAPES + IMPORT_FORMATS + PLAIN_SHAPES

FIELDS = {
    "pairwise_ab": ("prompt", "response_a", "response_b", "preference"),
    "pairs": ("prompt", "chosen", "rejected"),
    "pairs_with_lengths": ("prompt", "chosen", "rejected", "chosen_length", "rejected_length"),
    "binary": ("prompt", "response", "label"),
    "pairs_sft_target": ("prompt", "chosen", "rejected", "sft_target"),
    "ranked": ("prompt", "responses", "ranking"),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "prompts": ("prompt",),
    "hh_rlhf": ("chosen", "rejected"),
    "ultrafeedback": ("prompt", "completions"),
}
PAIR_SHAPES = ("pairs", "pairs_with_lengths", "pairs_sft_target")
# A prompt's constraints, as IFEval rows carry them (instruction ids, one argument object each): read by reward
# functions (`trl_ext.rewards.instruction_following`), so every shape keeps them beside its own fields.
CONSTRAINT_FIELDS = ("instruction_id_list", "kwargs")
# the tool definitions a conversation was written against (JSON text): TRL's DPO, KTO, reward and SFT trainers hand
# a `tools` column to the chat template
TOOLS_FIELD = "tools"

GOOD_LABELS = ("good", "true", "1", "thumbs_up", "thumbs-up", "thumbs up", "thumbsup", "up", "\N{THUMBS UP SIGN}")
BAD_LABELS = (
    "bad",
    "false",
    "0",
    "thumbs_down",
    "thumbs-down",
    "thumbs down",
    "thumbsdown",
    "down",
    "\N{THUMBS DOWN SIGN}",
)
TIE_PREFERENCES = ("TIE", "EQUAL")


# --- detection --------------------------------------------------------------------------------------------------


def detect_columns(columns: list[str], first: dict | None, name: str) -> str:
    """The shape a set of columns says, judged by the fields that mark each shape (a shape with a field missing
    is still detected, so the error can name the missing field)."""
    cols = set(columns)
    if "completions" in cols:
        return "ultrafeedback"
    if cols & {"responses", "ranking"}:
        return "ranked"
    if cols & {"response_a", "response_b", "preference"}:
        return "pairwise_ab"
    if cols & {"chosen", "rejected"}:
        if "prompt" not in cols and first is not None and _looks_like_hh(first.get("chosen")):
            return "hh_rlhf"
        if "sft_target" in cols:
            return "pairs_sft_target"
        if cols & {"chosen_length", "rejected_length"}:
            return "pairs_with_lengths"
        return "pairs"
    if "label" in cols or "response" in cols:
        return "binary"
    if "messages" in cols:
        return "messages"
    if "completion" in cols:
        return "prompt_completion"
    if "prompt" in cols or "instruction" in cols:
        return "prompts"
    expected = "; ".join(f"{shape}: {', '.join(FIELDS[shape])}" for shape in SHAPES)
    raise DataError(
        name,
        f"cannot tell the shape from the fields {sorted(cols)}; expected one of {expected}. To read your fields as "
        f"ours, pass --columns {suggest_columns(columns)} (load(columns=...), recipe dataset_columns), and "
        "--shape (shape=) to name the shape",
    )


# words in other projects' field names that say which of our pair fields they hold
_FIELD_HINTS = {
    "prompt": ("prompt", "question", "instruction", "query", "input", "context", "history"),
    "chosen": ("chosen", "good", "better", "preferred", "accepted", "win", "positive"),
    "rejected": ("rejected", "bad", "worse", "dispreferred", "lose", "loser", "negative"),
}


def suggest_columns(columns: list[str]) -> str:
    """A `--columns` value for these fields: ours=yours for the pair fields whose names say which they are
    (`question,good_answer,bad_answer` -> `prompt=question,chosen=good_answer,rejected=bad_answer`), else an example."""
    picked: dict[str, str] = {}
    for ours, words in _FIELD_HINTS.items():
        match = next((c for c in columns if c not in picked.values() and any(w in c.lower() for w in words)), None)
        if match is not None:
            picked[ours] = match
    if len(picked) == len(_FIELD_HINTS):
        return ",".join(f"{ours}={yours}" for ours, yours in picked.items())
    return "prompt=YOUR_PROMPT,chosen=YOUR_BETTER,rejected=YOUR_WORSE"


def _looks_like_hh(value: object) -> bool:
    return isinstance(value, str) and "Assistant:" in value and "Human:" in value


def first_row(table: pa.Table) -> dict | None:
    return table.slice(0, 1).to_pylist()[0] if table.num_rows else None


# --- checks -----------------------------------------------------------------------------------------------------


@dataclass
class Check:
    """Rows where `bad` is true have a problem in `field`; `reason(i)` words it for row i."""

    field: str
    bad: np.ndarray
    reason: Callable[[int], str]


def _np(mask: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def _value(column: pa.ChunkedArray, i: int) -> object:
    return column[i].as_py()


def _is_text_type(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def is_messages_type(t: pa.DataType) -> bool:
    """A chat message list: a list of structs with a `role` field."""
    return (
        (pa.types.is_list(t) or pa.types.is_large_list(t))
        and pa.types.is_struct(t.value_type)
        and t.value_type.get_field_index("role") >= 0
    )


def _missing(column: pa.ChunkedArray, field: str) -> Check:
    return Check(field, _np(column.is_null()), lambda i: "missing")


def text_checks(column: pa.ChunkedArray, field: str) -> list[Check]:
    """A text field: a non-empty string, or a non-empty list of messages that each have a role and a content."""
    t = column.type
    if pa.types.is_null(t):
        return [_missing(column, field)]
    if _is_text_type(t):
        return [_missing(column, field), Check(field, _np(pc.equal(pc.binary_length(column), 0)), lambda i: "empty")]
    if is_messages_type(t):
        item = t.value_type
        content = item.field("content").type if item.get_field_index("content") >= 0 else pa.string()
        if not _is_text_type(item.field("role").type) or not (
            _is_text_type(content) or pa.types.is_null(content) or pa.types.is_list(content)
        ):
            return [
                _missing(column, field),
                Check(
                    field,
                    ~_np(column.is_null()),
                    lambda i: (
                        f"a message's role must be a string and its content text, got {short(_value(column, i))}"
                    ),
                ),
            ]
        lengths = _np_lengths(column)
        checks = [
            _missing(column, field),
            Check(field, _np(pc.equal(pc.list_value_length(column), 0)), lambda i: "empty"),
        ]
        flat = pc.list_flatten(column)
        bad_message = _np(pc.is_null(pc.struct_field(flat, "role")))
        if t.value_type.get_field_index("content") >= 0:
            bad_message |= _np(pc.is_null(pc.struct_field(flat, "content")))
        else:
            bad_message[:] = True
        checks.append(Check(field, _rows_with(bad_message, lengths), lambda i: _message_problem(_value(column, i))))
        return checks
    return [
        _missing(column, field),
        Check(
            field,
            ~_np(column.is_null()),
            lambda i: f"expected text (a string or a message list), got {short(_value(column, i))}",
        ),
    ]


def constraint_checks(table: pa.Table) -> list[Check]:
    """`instruction_id_list`: a list of instruction ids; `kwargs`: one argument object (or null) per id, or a JSON
    string of that list. Which ids a reward can check is the reward's business (`trl_ext.rewards`)."""
    names = table.column_names
    if "instruction_id_list" not in names:
        if "kwargs" in names:
            kwargs = table.column("kwargs")
            return [Check("instruction_id_list", ~_np(kwargs.is_null()), lambda i: "missing (kwargs has no ids)")]
        return []
    ids = table.column("instruction_id_list")
    t = ids.type
    if not ((pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_text_type(t.value_type)):
        return [
            Check(
                "instruction_id_list",
                np.ones(table.num_rows, dtype=bool),
                lambda i: f"expected a list of instruction ids (strings), got {short(_value(ids, i))}",
            )
        ]
    checks = []
    if "kwargs" in names:
        kwargs = table.column("kwargs")
        kt = kwargs.type
        if pa.types.is_list(kt) or pa.types.is_large_list(kt):
            mismatch = _np(pc.not_equal(pc.list_value_length(kwargs), pc.list_value_length(ids)))
            checks.append(
                Check(
                    "kwargs",
                    mismatch & ~_np(kwargs.is_null()),
                    lambda i: (
                        f"{len(_value(kwargs, i) or [])} argument object(s) for "
                        f"{len(_value(ids, i) or [])} instruction(s): kwargs needs one per instruction id"
                    ),
                )
            )
        elif not (_is_text_type(kt) or pa.types.is_null(kt)):
            checks.append(
                Check(
                    "kwargs",
                    ~_np(kwargs.is_null()),
                    lambda i: f"expected a list of argument objects, got {short(_value(kwargs, i))}",
                )
            )
    return checks


def _message_problem(messages: list) -> str:
    for k, message in enumerate(messages):
        for key in ("role", "content"):
            if message.get(key) is None:
                return f"message {k + 1} has no {key!r}"
    return "a message has no role or content"


def _np_lengths(column: pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _rows_with(flat_bad: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Map a mask over the flattened items of a list column back to its rows."""
    rows = np.zeros(len(lengths), dtype=bool)
    if flat_bad.any():
        parents = np.repeat(np.arange(len(lengths)), lengths)
        rows[parents[flat_bad]] = True
    return rows


def _preference_checks(column: pa.ChunkedArray, allow_ties: bool) -> list[Check]:
    if not _is_text_type(column.type):
        return [
            _missing(column, "preference"),
            Check(
                "preference", ~_np(column.is_null()), lambda i: f"expected 'A' or 'B', got {short(_value(column, i))}"
            ),
        ]
    norm = pc.utf8_upper(pc.utf8_trim_whitespace(column))
    tie = _np(pc.is_in(norm, pa.array(TIE_PREFERENCES)))
    other = ~_np(pc.is_in(norm, pa.array(["A", "B", *TIE_PREFERENCES]))) & ~_np(column.is_null())
    checks = [
        _missing(column, "preference"),
        Check("preference", other, lambda i: f"expected 'A' or 'B', got {short(_value(column, i))}"),
    ]
    if not allow_ties:
        checks.append(
            Check(
                "preference",
                tie,
                lambda i: (
                    f"{short(_value(column, i))} is a tie; pass allow_ties=True to accept ties (they make no pair)"
                ),
            )
        )
    return checks


def normalize_preference(column: pa.ChunkedArray) -> pa.ChunkedArray:
    norm = pc.utf8_upper(pc.utf8_trim_whitespace(column))
    return pc.if_else(pc.is_in(norm, pa.array(TIE_PREFERENCES)), "tie", norm)


def _label_checks(column: pa.ChunkedArray) -> list[Check]:
    t = column.type
    expected = "expected 'good' or 'bad' (or true/false, 1/0, thumbs up/down)"
    if pa.types.is_boolean(t):
        bad = np.zeros(len(column), dtype=bool)
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        bad = ~_np(pc.is_in(column, pa.array([0, 1], type=t)))
    elif _is_text_type(t):
        bad = ~_np(pc.is_in(pc.utf8_lower(pc.utf8_trim_whitespace(column)), pa.array(GOOD_LABELS + BAD_LABELS)))
    else:
        bad = np.ones(len(column), dtype=bool)
    bad &= ~_np(column.is_null())
    return [_missing(column, "label"), Check("label", bad, lambda i: f"{expected}, got {short(_value(column, i))}")]


def normalize_label(column: pa.ChunkedArray) -> pa.ChunkedArray:
    t = column.type
    if pa.types.is_boolean(t):
        return column
    if _is_text_type(t):
        return pc.is_in(pc.utf8_lower(pc.utf8_trim_whitespace(column)), pa.array(GOOD_LABELS))
    return pc.equal(column, pa.scalar(1, type=t))


def _length_checks(column: pa.ChunkedArray, field: str) -> list[Check]:
    t = column.type
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        bad = _np(pc.invert(pc.greater_equal(column, pa.scalar(0, type=t))))  # NaN compares false: caught too
    else:
        bad = np.ones(len(column), dtype=bool)
    bad &= ~_np(column.is_null())
    return [
        _missing(column, field),
        Check(
            field, bad, lambda i: f"expected a non-negative number (a declared length), got {short(_value(column, i))}"
        ),
    ]


def _responses_checks(column: pa.ChunkedArray) -> list[Check]:
    t = column.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not (
        _is_text_type(t.value_type) or is_messages_type(t.value_type) or pa.types.is_null(t.value_type)
    ):
        return [
            _missing(column, "responses"),
            Check(
                "responses",
                ~_np(column.is_null()),
                lambda i: f"expected a list of texts (strings or message lists), got {short(_value(column, i))}",
            ),
        ]
    lengths = _np_lengths(column)
    checks = [
        _missing(column, "responses"),
        Check(
            "responses",
            (lengths < 2) & ~_np(column.is_null()),
            lambda i: f"fewer than two responses ({len(_value(column, i))})",
        ),
    ]
    flat = pc.list_flatten(column)
    for item in text_checks(pa.chunked_array([flat]) if isinstance(flat, pa.Array) else flat, "responses"):
        rows = _rows_with(item.bad, lengths)
        checks.append(Check("responses", rows, lambda i: _response_problem(_value(column, i))))
    return checks


def _response_problem(responses: list) -> str:
    for k, response in enumerate(responses):
        if response is None:
            return f"response {k + 1} is missing"
        if len(response) == 0:
            return f"response {k + 1} is empty"
        if isinstance(response, list):
            problem = _message_problem(response)
            return f"response {k + 1}: {problem}"
    return "a response is missing or empty"


def _ranking_checks(
    column: pa.ChunkedArray, responses: pa.ChunkedArray, ranking_format: str
) -> tuple[list[Check], np.ndarray | None]:
    """Checks plus, for valid rows, the ranks as a flat int64 array (None if the column type is unusable)."""
    t = column.type
    n = (
        _np_lengths(responses)
        if (pa.types.is_list(responses.type) or pa.types.is_large_list(responses.type))
        else None
    )
    rule = (
        "ranking[i] is the rank of responses[i], 1 = best"
        if ranking_format == "ranks"
        else "ranking_format='order': response numbers (1-based) from best to worst"
    )
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not (
        pa.types.is_integer(t.value_type) or pa.types.is_floating(t.value_type) or pa.types.is_null(t.value_type)
    ):
        return [
            _missing(column, "ranking"),
            Check(
                "ranking",
                ~_np(column.is_null()),
                lambda i: f"expected a list of integer ranks ({rule}), got {short(_value(column, i))}",
            ),
        ], None
    lengths = _np_lengths(column)
    present = ~_np(column.is_null())
    checks = [_missing(column, "ranking")]
    if n is not None:
        checks.append(
            Check(
                "ranking",
                present & (lengths != n),
                lambda i: f"{len(_value(column, i))} ranks for {n[i]} responses ({rule})",
            )
        )
    flat = pc.list_flatten(column)
    if pa.types.is_null(t.value_type):  # e.g. [null, null]: every item missing
        flat = pc.cast(flat, pa.int64())
    values = pc.fill_null(flat, 0).to_numpy(zero_copy_only=False)
    item_bad = _np(flat.is_null())
    if pa.types.is_floating(t.value_type):
        item_bad |= values != np.floor(values)
    ranks = values.astype(np.int64) if len(values) else np.zeros(0, dtype=np.int64)
    if n is not None:
        parents = np.repeat(np.arange(len(lengths)), lengths)
        n_item = n[parents]
        item_bad |= (ranks < 1) | (ranks > n_item)
        if ranking_format == "order":
            # a permutation of 1..n: sorted within each row it reads 1, 2, ..., n
            order = np.lexsort((ranks, parents))
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            position = np.arange(len(ranks)) - starts[parents]
            item_bad[order] |= ranks[order] != position + 1
    checks.append(
        Check(
            "ranking",
            _rows_with(item_bad, lengths),
            lambda i: _ranking_problem(_value(column, i), _value(responses, i), rule, ranking_format),
        )
    )
    return checks, ranks


def _ranking_problem(ranking: list, responses: list | None, rule: str, ranking_format: str) -> str:
    n = len(responses or [])
    what = "response number" if ranking_format == "order" else "rank"
    for value in ranking:
        if value is None:
            return f"a {what} is missing in {short(ranking)} ({rule})"
        if value != int(value):
            return f"{what} {value} is not an integer ({rule})"
        if not 1 <= value <= n:
            return f"{what} {int(value)} is out of range 1..{n} in {short(ranking)} ({rule})"
    if ranking_format == "order":
        return f"{short(ranking)} is not an order of the {n} responses (each of 1..{n} once) ({rule})"
    return f"invalid ranking {short(ranking)} ({rule})"


# --- validation + normalization --------------------------------------------------------------------------------


@dataclass
class Validated:
    table: pa.Table  # canonical columns of the shape
    dropped: int
    problems: list[str]  # one message per dropped row (first 20 kept) or per problem found (inspect)
    problem_counts: dict[str, int]


def validate(
    source: Source, shape: str, on_error: str = "raise", allow_ties: bool = False, ranking_format: str = "ranks"
) -> Validated:
    """Check every row of `source` against `shape` and return the canonical columns: raise on the first bad row,
    or with on_error="drop" leave the bad rows out and describe them (one message per row, the first 20 kept;
    `problem_counts`: bad rows per field at fault)."""
    table = source.table
    if shape == "binary" and "response" not in table.column_names and "completion" in table.column_names:
        table = table.rename_columns(["response" if c == "completion" else c for c in table.column_names])
    fields = FIELDS[shape]
    missing = [f for f in fields if f not in table.column_names]
    if missing:
        raise source.error(
            f"missing (the {shape} shape needs {', '.join(fields)}; found {', '.join(table.column_names)})",
            index=0,
            field=missing[0],
        )
    checks: list[Check] = []
    ranks = None
    for field in fields:
        column = table.column(field)
        if field == "preference":
            checks += _preference_checks(column, allow_ties)
        elif field == "label":
            checks += _label_checks(column)
        elif field in ("chosen_length", "rejected_length"):
            checks += _length_checks(column, field)
        elif field == "responses":
            checks += _responses_checks(column)
        elif field == "ranking":
            ranking_checks, ranks = _ranking_checks(column, table.column("responses"), ranking_format)
            checks += ranking_checks
        else:  # text fields, `messages` included
            checks += text_checks(column, field)
    checks += constraint_checks(table)

    bad = np.zeros(table.num_rows, dtype=bool)
    counts: dict[str, int] = {"(unreadable)": len(source.dropped)} if source.dropped else {}
    for check in checks:  # a row is counted once, under the first field at fault
        new = check.bad & ~bad
        if new.any():
            counts[check.field] = counts.get(check.field, 0) + int(new.sum())
        bad |= check.bad
    problems: list[str] = list(source.dropped)
    if bad.any():
        if on_error != "drop":
            first = int(np.argmax(bad))
            check = next(c for c in checks if c.bad[first])
            raise source.error(check.reason(first), index=first, field=check.field)
        for i in np.flatnonzero(bad)[:20]:
            check = next(c for c in checks if c.bad[i])
            problems.append(str(source.error(check.reason(int(i)), index=int(i), field=check.field)))
    table = table.select(list(fields) + [c for c in (*CONSTRAINT_FIELDS, TOOLS_FIELD) if c in table.column_names])
    if bad.any():
        table = table.filter(pa.array(~bad))
        if ranks is not None:  # keep the flat ranks aligned with the kept rows
            lengths = _np_lengths(source.table.column("ranking"))
            ranks = ranks[np.repeat(~bad, lengths)]
    table = _normalize(table, shape, ranking_format, ranks)
    return Validated(table, int(bad.sum()) + len(source.dropped), problems, counts)


def _normalize(table: pa.Table, shape: str, ranking_format: str, ranks: np.ndarray | None) -> pa.Table:
    if table.num_rows == 0:  # every row dropped: columns may have any type, and there is nothing to normalize
        return table
    names = table.column_names
    if "preference" in names:
        table = table.set_column(
            names.index("preference"), "preference", normalize_preference(table.column("preference"))
        )
    if "label" in names:
        table = table.set_column(names.index("label"), "label", normalize_label(table.column("label")))
    if "ranking" in names and ranks is not None:
        lengths = _np_lengths(table.column("ranking"))
        if ranking_format == "order":
            ranks = order_to_ranks(ranks, lengths)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        ranking = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ranks, type=pa.int64()))
        table = table.set_column(names.index("ranking"), "ranking", ranking)
    return table


def order_to_ranks(order: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[best, second, ...] (1-based response numbers) -> rank of each response: the inverse permutation.
    For [1, 4, 2, 3]: response 1 is best, response 4 second, ... so the ranks are [1, 3, 4, 2]."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    parents = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(order)) - starts[parents]
    ranks = np.empty_like(order)
    ranks[starts[parents] + order - 1] = position + 1
    return ranks
