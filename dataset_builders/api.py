"""`load`, `detect`, `kto_class_weights`: the public functions."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc
from datasets.fingerprint import generate_random_fingerprint

from .convert import METHODS, PAIR_STRATEGIES, Refusal, convert, harmonize, keeps_constraints
from .errors import DataError
from .formats import BY_NAME, Format, _score_ratio, apply_format, describe, detect_format
from .importers import extract_implicit_prompt, import_source, split_shared_prompt, system_into_prompt
from .readers import Source, StreamFailed, read
from .shapes import (
    ALL_SHAPES,
    CONSTRAINT_FIELDS,
    IMPORT_FORMATS,
    PAIR_SHAPES,
    TOOLS_FIELD,
    detect_columns,
    first_row,
    is_messages_type,
    validate,
)

logger = logging.getLogger("dataset_builders")

OPTIONS = {
    "on_error": ("raise", "drop"),
    "pair_strategy": PAIR_STRATEGIES,
    "ranking_format": ("ranks", "order"),
    "allow_ties": (True, False),
    "grpo_mode": ("offline", "online"),
    "count_lengths": ("chars", "tokens"),
    "tokenizer": None,  # a name for AutoTokenizer.from_pretrained, or a tokenizer object
    "conversational": (True, False),
    "split": None,  # for Hub ids, DatasetDicts and save_to_disk folders holding several splits
    "score_key": None,  # UltraFeedback-style import: the completion field holding the score
    "sft_target_rejected": ("refuse", "swap"),  # orpo: what sft_target "rejected" means (see resolve_sft_target)
    "format": None,  # another project's layout by name (formats.BY_NAME); detected when its fields are unambiguous
    "prefer": ("better", "safer"),  # PKU-SafeRLHF: which of its two preferences to train on
    "min_score_ratio": None,  # Stanford SHP: keep pairs whose score_ratio is at least this (its authors train on 2)
    "columns": None,  # {our field: the source's field}: rename before anything else
    "message_tags": None,  # LLaMA-Factory sharegpt tags (role_tag, content_tag, user_tag, ...), from dataset_info.json
    "dataset_name": None,  # the entry of a LLaMA-Factory dataset_info.json given as the source
}


@dataclass
class LoadReport:
    """What `load` did: rows in and out, rows dropped (only with on_error="drop") and why, rows that the mapping
    leaves out by design (ties make no pair, ...), and for KTO the class counts and suggested weights."""

    source: str
    shape: str
    method: str | None
    rows_in: int = 0
    rows_out: int = 0
    dropped: int = 0
    problems: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    kto: dict[str, Any] | None = None
    format: str | None = None  # another project's layout, when the rows were converted from one
    unused_fields: list[str] = field(default_factory=list)  # source fields that layout's mapping does not use

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_options(options: dict[str, Any]) -> None:
    for key, value in options.items():
        if key not in OPTIONS:
            raise TypeError(f"unknown option {key!r}; options are: {', '.join(OPTIONS)}")
        if key == "format" and value is not None and value not in BY_NAME:
            raise ValueError(f"option format={value!r}: expected one of {', '.join(BY_NAME)}")
        if (
            key == "columns"
            and value is not None
            and (
                not isinstance(value, dict)
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
            )
        ):
            raise ValueError(f"option columns: expected {{our field: your field}} (strings), got {value!r}")
        if (
            key == "min_score_ratio"
            and value is not None
            and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1)
        ):
            raise ValueError(
                f"option min_score_ratio={value!r}: expected a number of at least 1 (SHP's authors use 2)"
            )
        allowed = OPTIONS[key]
        if allowed is not None and value is not None and value not in allowed:
            raise ValueError(f"option {key}={value!r}: expected one of {allowed}")


def _tag_hint(src: Source, unused: set[str]) -> str:
    """For a refusal of rows that carry no preference: the unused true/false columns, which may be the label (as
    LLaMA-Factory's kto_tag, whose column each dataset_info.json names)."""
    first = first_row(src.table) or {}
    flags = sorted(c for c in unused if isinstance(first.get(c), bool))
    if not flags:
        return ""
    return (f"; the column(s) {', '.join(flags)} hold true/false: if one is the label (LLaMA-Factory's kto_tag), "
            f"pass --columns label={flags[0]} (dataset_columns in a recipe) or the dataset_info.json entry")  # fmt: skip


def shp_ratio_note(table: pa.Table, ratio: float = 2.0) -> str:
    """How many SHP pairs the filter its authors recommend keeps (they trained on pairs with a 2+ score ratio)."""
    ratios = [_score_ratio(row) for row in table.select([c for c in ("score_ratio", "score_A", "score_B") if c in table.column_names]).to_pylist()]  # fmt: skip
    kept = sum(r is not None and r >= ratio for r in ratios)
    return (f"min_score_ratio={ratio:g} (SHP's authors train on pairs with a 2+ score ratio) would keep {kept} of "
            f"{table.num_rows} pairs")  # fmt: skip


def _check_sft_target_rejected(piece: Source, choice: str) -> None:
    """ORPO imitates and prefers one answer. `sft_target: "rejected"` asks to imitate the rejected one, which ORPO
    can only do by also preferring it over the chosen one, against the row's label: refused unless asked for."""
    if choice == "swap" or "sft_target" not in piece.table.column_names:
        return
    target = piece.table.column("sft_target")
    if not pa.types.is_string(target.type) and not pa.types.is_large_string(target.type):
        return
    keyword = pc.utf8_lower(pc.utf8_trim_whitespace(target))
    hits = pc.indices_nonzero(pc.fill_null(pc.equal(keyword, "rejected"), False))
    if len(hits):
        raise piece.error(
            'sft_target "rejected" for orpo: ORPO trains one answer to be both imitated and preferred, so it would '
            "prefer the rejected answer over the chosen one, against this row's preference. Use dpo/ipo for the "
            'preference, or pass sft_target_rejected="swap" (CLI: --sft-target-rejected swap) to train on the swapped '
            f"pair on purpose ({len(hits)} such row(s))",
            int(hits[0].as_py()),
            "sft_target",
        )


def _rename_columns(src: Source, columns: dict[str, str] | None) -> Source:
    """`columns={"prompt": "Question", ...}`: the source's fields renamed to ours (a field we name that is missing
    is an error naming the fields there are; a field of ours already present is replaced by the mapped one)."""
    if not columns:
        return src
    table = src.table
    names = table.column_names
    for ours, theirs in columns.items():
        if theirs not in names:
            raise DataError(src.name, f"columns: no field {theirs!r} to use as {ours!r} (fields: {', '.join(names)})")
    renamed = {theirs: ours for ours, theirs in columns.items()}
    clashing = [n for n in names if n in columns and n not in renamed]
    table = table.drop_columns(clashing) if clashing else table
    table = table.rename_columns([renamed.get(n, n) for n in table.column_names])
    return replace(src, table=table, renamed={**src.renamed, **columns})


def _format_and_shape(src: Source, shape: str | None, options: dict[str, Any]) -> tuple[Format | None, str]:
    """The other project's layout these rows are in (named by `format=`, else detected unless a shape was given) and
    the shape they are read as: the layout's, else the one given or detected from the fields."""
    name = options.get("format")
    if name is not None:
        fmt = BY_NAME[name]
    elif shape is None:
        fmt = detect_format(src.table.column_names, first_row(src.table))
    else:
        fmt = None
    if fmt is not None and not fmt.refusal:
        return fmt, fmt.shape
    return fmt, _resolve_shape(src, shape)


def _resolve_shape(src: Source, shape: str | None) -> str:
    if shape is None:
        return detect_columns(src.table.column_names, first_row(src.table), src.name)
    if shape not in ALL_SHAPES:
        raise ValueError(f"shape must be one of {ALL_SHAPES}, got {shape!r}")
    return shape


def _implicit_prompt(src: Source, shape: str) -> Source:
    """The prompt the rows hold implicitly, then the `system` column in front of it. In this order: a string prompt
    beside conversations that repeat it is split off them first (the shared turns), and a prompt shared by chosen
    and rejected is taken off them (TRL's implicit prompt, conversational or text), so that the system message goes
    in front of the prompt the pair really has, not in front of a copy of its user turn."""
    if shape in PAIR_SHAPES:
        src = split_shared_prompt(src)
        columns = src.table.column_names
        if "prompt" not in columns and {"chosen", "rejected"} <= set(columns):  # one missing: validation names it
            src = extract_implicit_prompt(src)
    return system_into_prompt(src)


# fields a shape reads besides its own (FIELDS): a system message (into the prompt), TRL's `completion` for binary,
# UltraFeedback's `instruction`
_ALSO_READ = {"binary": {"completion", "system"}, "ultrafeedback": {"instruction"}}


def _unused_columns(table: pa.Table, shape: str) -> set[str]:
    """Columns with a value somewhere that the shape's mapping does not read: reported, never dropped silently."""
    from .shapes import FIELDS

    read_fields = (
        set(FIELDS.get(shape, ())) | {"system", TOOLS_FIELD} | _ALSO_READ.get(shape, set()) | set(CONSTRAINT_FIELDS)
    )
    return {c for c in table.column_names if c not in read_fields and table.column(c).null_count < table.num_rows}


def _hint_format(src: Source, shape: str) -> None:
    """`shape=` named on rows of another project's layout: the missing field's error says which `format=` reads them."""
    from .shapes import FIELDS

    columns = src.table.column_names
    missing = [f for f in FIELDS.get(shape, ()) if f not in columns]
    fmt = detect_format(columns, first_row(src.table)) if missing else None
    if fmt is not None and not fmt.refusal:
        raise src.error(
            f"missing (the {shape} shape needs {', '.join(FIELDS[shape])}); these rows look like {fmt.project}: "
            f"pass format={fmt.name} (CLI --format, recipe dataset_format) instead of shape={shape}",
            index=0,
            field=missing[0],
        )


def _dataset_info_entry(source: Any, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A LLaMA-Factory `dataset_info.json` as the source: the entry `dataset_name` names, read with its column map."""
    from .llamafactory import entry_source, is_dataset_info

    if not is_dataset_info(source):
        return source, options
    options = dict(options)
    data, entry_options = entry_source(source, options.pop("dataset_name", None))
    return data, {**entry_options, **options}  # options given explicitly win


def _source_name(source: Any) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else f"<{type(source).__name__}>"


def detect(source: Any) -> str:
    """The shape of `source` from its fields: one of pairwise_ab, pairs, pairs_with_lengths, binary,
    pairs_sft_target, ranked; or hh_rlhf / ultrafeedback (public formats `load` imports); or prompt_completion,
    messages, prompts (what SFT / PPO take directly)."""
    return _format_and_shape(read(source, stream=True), None, {})[1]  # a streamed file: its first block is enough


def load_with_report(
    source: Any, method: str | None = None, shape: str | None = None, **options: Any
) -> tuple[datasets.Dataset, LoadReport]:
    """`load`, also returning the `LoadReport`."""
    _check_options(options)
    if method is not None and method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    source, options = _dataset_info_entry(source, options)
    on_error = options.get("on_error") or "raise"
    try:
        try:
            src = read(source, on_error=on_error, split=options.get("split"), stream=True)
            return _load(src, method, shape, options)
        except StreamFailed as failure:  # a later block of a JSONL file: start again on the whole-file path
            logger.debug("streaming %s stopped (%s); reading it whole", source, failure)
            return _load(read(source, on_error=on_error, split=options.get("split")), method, shape, options)
    except UnicodeDecodeError as error:  # Arrow can hold bytes that are not UTF-8 (a field name, a value) until used
        raise DataError(_source_name(source), f"is not UTF-8 text ({error.reason}); save it as UTF-8") from None


def _load(
    src: Source, method: str | None, shape: str | None, options: dict[str, Any]
) -> tuple[datasets.Dataset, LoadReport]:
    on_error = options.get("on_error") or "raise"
    src = _rename_columns(src, options.get("columns"))
    fmt, shape = _format_and_shape(src, shape, options)
    report = LoadReport(source=src.name, shape=shape, method=method, format=fmt.name if fmt else None)
    outputs = []
    unused: set[str] = set()
    for piece in src.pieces():  # one piece, or the blocks of a streamed JSONL file, in order
        report.rows_in += piece.table.num_rows + len(piece.dropped)
        piece_shape = shape
        if piece.offset:  # a later block of a streamed file: the same renaming as the first
            piece = _rename_columns(piece, options.get("columns"))
        if fmt is not None:
            piece, piece_unused, problems, left_out = apply_format(piece, fmt, options, on_error)
            unused |= piece_unused
            for reason, count in left_out.items():
                report.skipped[reason] = report.skipped.get(reason, 0) + count
            report.dropped += len(problems)
            report.problems += problems[: max(0, 20 - len(report.problems))]
        else:
            unused |= _unused_columns(piece.table, shape)
            if shape in IMPORT_FORMATS:
                piece, piece_shape = import_source(piece, shape, options)
        if fmt is None:
            _hint_format(piece, piece_shape)
        piece = _implicit_prompt(piece, piece_shape)
        if method == "orpo" and piece_shape == "pairs_sft_target":
            _check_sft_target_rejected(piece, options.get("sft_target_rejected") or "refuse")
        checked = validate(
            piece,
            piece_shape,
            on_error=on_error,
            allow_ties=bool(options.get("allow_ties")),
            ranking_format=options.get("ranking_format") or "ranks",
        )
        report.dropped += checked.dropped
        report.problems += checked.problems[: max(0, 20 - len(report.problems))]
        if checked.table.num_rows == 0:
            continue  # a block whose every row was dropped adds nothing (and its columns may have any type)
        table = harmonize(checked.table, conversational=bool(options.get("conversational")))
        if not keeps_constraints(method, options):
            unused |= {c for c in CONSTRAINT_FIELDS if c in table.column_names}
        if method is not None:
            try:
                had_tools = TOOLS_FIELD in table.column_names
                table = convert(table, piece_shape, method, options, src.name, report.skipped)
                if had_tools and TOOLS_FIELD not in table.column_names:
                    unused.add(TOOLS_FIELD)  # a trainer that does not read them, or a mapping that moves rows
            except Refusal as refusal:
                raise DataError(src.name, str(refusal) + _tag_hint(src, unused)) from None
        outputs.append(table)
    report.unused_fields = sorted(unused)
    if fmt is not None:
        logger.info("%s: read as %s", src.name, describe(fmt))
    if report.unused_fields:
        logger.info(
            "%s: field(s) the %s mapping does not use, left out of the training data: %s",
            src.name,
            fmt.name if fmt else shape,
            ", ".join(report.unused_fields),
        )
    if report.dropped:
        logger.warning(
            "%s: dropped %d invalid row(s) (on_error='drop'); first: %s", src.name, report.dropped, report.problems[0]
        )
    if sum(t.num_rows for t in outputs) == 0:  # every row dropped, or left out by the mapping
        raise DataError(
            src.name,
            f"no rows left for {method or shape} (read {report.rows_in}, dropped {report.dropped}, left out {report.skipped})",
        )
    table = outputs[0] if len(outputs) == 1 else pa.concat_tables(outputs, promote_options="permissive")
    # datasets would hash the whole table for a fingerprint (a copy, and seconds for a million rows); the rows
    # live in memory, so no cache file is keyed on it and a random one is what datasets itself falls back to.
    dataset = datasets.Dataset(table, fingerprint=generate_random_fingerprint())
    if method == "kto" and "chosen" in table.column_names:
        from trl.data_utils import unpair_preference_dataset

        dataset = unpair_preference_dataset(dataset)
    for reason, count in report.skipped.items():
        logger.info("%s: %d row(s) left out by the %s mapping: %s", src.name, count, method, reason)
    if method == "kto":
        # the table, when it already holds the labels: `with_format` deep-copies the dataset (0.2 s per 1M rows)
        report.kto = kto_class_weights(table if "label" in table.column_names else dataset)
        # in the report; logged at debug level only: a recipe weighs (and logs) the rows it trains on, after its split
        logger.debug("%s: KTO classes %s", src.name, report.kto)
    report.rows_out = dataset.num_rows
    return dataset, report


def load(source: Any, method: str | None = None, shape: str | None = None, **options: Any) -> datasets.Dataset:
    """Read `source`, check every row, and return a `datasets.Dataset` with exactly the columns `method`'s trainer
    takes (or, with no method, the canonical columns of the shape).

    Args:
        source: a path (.json, .jsonl, .jsonc, .csv, .parquet, any of them .gz, or a save_to_disk folder), a list
            of dicts, a `datasets.Dataset`, or a Hub dataset id.
        method: one of sft, reward, ppo, dpo, ipo, kto, orpo, grpo.
        shape: skip detection and read the data as this shape.
        **options:
            on_error: "raise" (default: the first bad row raises `DataError`) or "drop" (bad rows are dropped,
                counted and logged).
            pair_strategy: ranked -> pairs: "all_pairs" (default; "best_vs_worst" for kto), "adjacent",
                "best_vs_rest", "best_vs_worst". Ties make no pair.
            ranking_format: "ranks" (default: ranking[i] is the rank of responses[i], 1 = best) or "order"
                (response numbers, 1-based, from best to worst).
            allow_ties: pairwise_ab rows with preference "tie" are accepted (they make no pair).
            grpo_mode: "offline" (default: prompt, responses, ranking) or "online" (prompt only).
            count_lengths: ipo without declared lengths: "chars" or "tokens" (with `tokenizer`).
            conversational: wrap plain strings as chat messages (HH-RLHF: parse the transcript into turns).
            split: the split of a Hub id or DatasetDict (default "train").
            score_key: UltraFeedback-style import: the score field of each completion.
            sft_target_rejected: orpo, rows whose `sft_target` is "rejected": "refuse" (default: an error naming
                the row, since ORPO's one answer is both imitated and preferred) or "swap" (train on the swapped pair:
                the rejected answer becomes the preferred one, explicitly against the row's label).

    Raises:
        DataError: one line naming the source, the row (line for JSONL) and the field.

    Example:
        >>> ds = load([{"prompt": "2+2?", "chosen": "4", "rejected": "5"}], method="dpo")
        >>> ds.column_names
        ['prompt', 'chosen', 'rejected']
    """
    return load_with_report(source, method=method, shape=shape, **options)[0]


def kto_class_weights(dataset: datasets.Dataset | pa.Table) -> dict[str, Any]:
    """Counts of desirable/undesirable examples and the `desirable_weight`/`undesirable_weight` that put the
    KTO paper's balance ratio desirable_weight * n_desirable / (undesirable_weight * n_undesirable) in [1, 4/3].

    One weight stays 1.0; the other is the smallest change that brings the ratio to the nearest end of the
    range (upweight desirable examples when they are the minority, undesirable ones when they exceed 4/3).

    Example:
        >>> kto_class_weights(datasets.Dataset.from_dict({"label": [True] * 10 + [False] * 30}))["desirable_weight"]
        3.0
    """
    # the arrow format respects a select/shuffle/train_test_split view (an indices mapping) and stays columnar
    labels = (
        dataset.with_format("arrow")["label"] if isinstance(dataset, datasets.Dataset) else dataset.column("label")
    )
    n_desirable = int(pc.sum(labels).as_py() or 0)
    n_undesirable = len(labels) - n_desirable
    desirable_weight = undesirable_weight = 1.0
    if n_desirable and n_undesirable:
        raw = n_desirable / n_undesirable
        if raw < 1:
            desirable_weight = math.ceil(n_undesirable / n_desirable * 1e4) / 1e4  # ratio just >= 1
        elif raw > 4 / 3:
            undesirable_weight = math.ceil(raw * 0.75 * 1e4) / 1e4  # ratio just <= 4/3
    ratio = (desirable_weight * n_desirable / (undesirable_weight * n_undesirable)) if n_undesirable else None
    if not n_desirable or not n_undesirable:
        logger.warning(
            "KTO needs both desirable and undesirable examples; found %d and %d", n_desirable, n_undesirable
        )
    return {
        "n_desirable": n_desirable,
        "n_undesirable": n_undesirable,
        "desirable_weight": desirable_weight,
        "undesirable_weight": undesirable_weight,
        "ratio": ratio,
    }


def inspect(source: Any, shape: str | None = None, **options: Any) -> dict[str, Any]:
    """What `python -m dataset_builders inspect` prints: the shape, row count, columns, whether the text is
    conversational, length statistics (characters), the problems found (all of them, counted; the first few
    quoted) and which methods the data can serve. Raises `DataError` only when the source cannot be read."""
    _check_options(options)
    source, options = _dataset_info_entry(source, options)
    src = _rename_columns(read(source, on_error="drop", split=options.get("split")), options.get("columns"))
    fmt, shape = _format_and_shape(src, shape, options)
    info: dict[str, Any] = {"source": src.name, "shape": shape, "rows": src.table.num_rows + len(src.dropped)}
    format_problems: list[str] = []
    if fmt is not None:
        info["format"] = describe(fmt)
        if fmt.name == "shp" and options.get("min_score_ratio") is None:
            info["notes"] = [shp_ratio_note(src.table)]
        src, unused, format_problems, left_out = apply_format(src, fmt, options, on_error="drop")
        info["unused_fields"] = sorted(unused)
        if left_out:
            info["left_out"] = left_out  # what the layout's own project leaves out by design
        info["rows_converted"] = src.table.num_rows  # a message tree can hold several ranked groups
    else:
        info["unused_fields"] = sorted(_unused_columns(src.table, shape))
        if shape in ("hh_rlhf", "ultrafeedback"):
            src, info["imported_as"] = import_source(src, shape, options)
    src = _implicit_prompt(src, info.get("imported_as", shape))
    checked = validate(
        src,
        info.get("imported_as", shape),
        on_error="drop",
        allow_ties=bool(options.get("allow_ties")),
        ranking_format=options.get("ranking_format") or "ranks",
    )
    info["columns"] = src.table.column_names
    info["valid_rows"] = (src.table.num_rows if fmt is not None else info["rows"]) - checked.dropped
    info["problem_count"] = checked.dropped + len(format_problems)
    info["problems"] = (format_problems + checked.problems)[:20]
    if checked.dropped:
        info["problems_by_field"] = checked.problem_counts
    if info["valid_rows"] > 0:  # statistics and methods from the valid rows
        table = harmonize(checked.table, conversational=bool(options.get("conversational")))
        from trl.data_utils import is_conversational

        info["conversational"] = is_conversational(first_row(table) or {})
        info["lengths"] = _length_stats(table)
        if "instruction_id_list" in table.column_names:
            info["constraints"] = _constraint_stats(table)
        if "chosen" in table.column_names:
            same = (
                pc.equal(table.column("chosen"), table.column("rejected"))
                if pa.types.is_string(table.column("chosen").type)
                else None
            )
            n_same = int(pc.sum(same).as_py() or 0) if same is not None else 0
            if n_same:
                info["warnings"] = [f"{n_same} row(s) have identical chosen and rejected (no preference signal)"]
        info["methods"] = _methods(table, info.get("imported_as", shape), options, src.name)
    return info


def _constraint_stats(table: pa.Table) -> dict[str, Any]:
    """Rows with constraints, constraints per row, and how often each instruction id appears."""
    ids = table.column("instruction_id_list")
    per_row = _np_list_lengths(ids)
    counts = pc.value_counts(pc.list_flatten(ids)).to_pylist()
    return {
        "rows_with_constraints": int((per_row > 0).sum()),
        "per_prompt": _summary(per_row),
        "instructions": {c["values"]: int(c["counts"]) for c in sorted(counts, key=lambda c: -c["counts"])},
    }


def _np_list_lengths(column: pa.ChunkedArray):
    return pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)


def _length_stats(table: pa.Table) -> dict[str, dict[str, float]]:
    from .convert import text_lengths

    stats = {}
    for name in table.column_names:
        if name in ("preference", "label", "ranking", "sft_target", *CONSTRAINT_FIELDS):  # not text to measure
            continue
        column = table.column(name)
        if name == "responses":
            stats["responses (count)"] = _summary(pc.list_value_length(column).to_numpy(zero_copy_only=False))
            column = pc.list_flatten(column)
        elif name in ("chosen_length", "rejected_length"):
            stats[name + " (declared)"] = _summary(column.to_numpy(zero_copy_only=False))
            continue
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or is_messages_type(column.type):
            stats[name + " (chars)"] = _summary(
                text_lengths(pa.chunked_array([column]) if isinstance(column, pa.Array) else column).to_numpy()
            )
    return stats


def _summary(values: Any) -> dict[str, float]:
    import numpy as np

    values = np.asarray(values, dtype=float)
    if not len(values):
        return {}
    return {"min": float(values.min()), "mean": round(float(values.mean()), 2), "max": float(values.max())}


def _methods(table: pa.Table, shape: str, options: dict[str, Any], name: str) -> dict[str, str]:
    """Each method -> "yes" or why not, by running the mapping on a few rows."""
    sample = table.slice(0, 16)
    out = {}
    for method in METHODS:
        try:
            convert(sample, shape, method, dict(options), name, {})
            out[method] = "yes"
        except (Refusal, DataError, ValueError) as e:
            if isinstance(e, Refusal):
                out[method] = "no: " + str(e).split(": ", 1)[-1]
            else:  # e.g. ipo without declared lengths: what is missing, and the option that supplies it
                out[method] = "needs an option: " + (e.reason if isinstance(e, DataError) else str(e))
    return out
