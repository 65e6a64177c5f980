"""Readers: every supported source becomes one Arrow table plus the means to name a row in an error message.

The fast path hands the file to Arrow (``pyarrow.json`` for JSONL, ``pyarrow.csv``, ``pyarrow.parquet``,
``datasets.load_from_disk``), so a million rows never become a million Python dicts. Only when Arrow refuses a
file (malformed JSON, a field that changes type between rows) do we parse it again in Python, to name the
offending line and field exactly.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import json5
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from .errors import DataError, short, short_json

logger = logging.getLogger("dataset_builders")

# Fields whose value is text: a string, or a chat message list (TRL's conversational form).
TEXT_FIELDS = ("prompt", "chosen", "rejected", "response", "response_a", "response_b", "completion", "sft_target")
# Fields that CSV cells carry JSON-encoded.
JSON_CELL_FIELDS = ("responses", "ranking", "completions", "messages", "chosen_length", "rejected_length")

_SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".jsonc": "jsonc",
    ".json5": "jsonc",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_JSONL_BLOCK_SIZE = 8 << 20  # Arrow reads JSONL in blocks; one row must fit in a block.
STREAM_BLOCK_SIZE = 1 << 20  # streamed JSONL: Arrow's blocks (small: its read-ahead is what peak memory pays for)
PIECE_BYTES = 16 << 20  # ...gathered into pieces of about this many Arrow bytes before they are checked and mapped


class StreamFailed(Exception):
    """Arrow's streaming JSONL reader refused a later block (a field changed type, malformed JSON): the caller
    starts again on the whole-file path, which names the line at fault."""


@dataclass
class Source:
    """A source read into Arrow.

    `table` holds the rows (for a streamed JSONL file: the first block only; `pieces()` yields the rest, so a
    large file is never in memory twice). `line_numbers`, when set, gives the 1-based line (or row) of each row;
    for JSONL read by Arrow it is computed only when an error needs it (`locate`), by one scan of the file.
    """

    name: str
    table: pa.Table
    unit: str = "row"
    line_numbers: np.ndarray | None = None
    path: Path | None = None
    dropped: list[str] = field(default_factory=list)  # messages for rows dropped while reading (on_error="drop")
    offset: int = 0  # index of this piece's first row in the whole source
    rest: Iterator[pa.RecordBatch] | None = field(default=None, repr=False)
    _line_cache: dict = field(default_factory=dict, repr=False)  # shared by the pieces of one source
    renamed: dict[str, str] = field(default_factory=dict)  # `columns=`: our field -> the source's, for errors

    def locate(self, index: int) -> int:
        index += self.offset
        if self.line_numbers is not None:
            return int(self.line_numbers[index])
        if self.unit == "line" and self.path is not None:
            if "lines" not in self._line_cache:
                self._line_cache["lines"] = _jsonl_line_numbers(self.path)
            return int(self._line_cache["lines"][index])
        return index + 1

    def error(self, reason: str, index: int | None = None, field: str | None = None) -> DataError:
        row = None
        if index is not None:
            try:
                row = self.locate(index)
            except IndexError:  # no such row (every row was dropped while reading): none to name
                row = None
        if field in self.renamed:  # name the user's own column, which is what they can find in their file
            return DataError(self.name, reason, row=row, field=self.renamed[field], unit=self.unit, read_as=field)
        return DataError(self.name, reason, row=row, field=field, unit=self.unit)

    def pieces(self) -> Iterator[Source]:
        """This source in pieces of rows, in order (one piece unless it is a streamed file)."""
        yield replace(self, rest=None)
        if self.rest is None:
            return
        offset = self.table.num_rows
        pending: list[pa.RecordBatch] = []
        size = 0
        while True:
            try:
                batch = next(self.rest)
                batch.validate(full=True)  # pyarrow 26 can build invalid arrays from objects of varying nesting
            except StopIteration:
                batch = None
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError) as e:
                raise StreamFailed(str(e)) from None
            if batch is not None:
                pending.append(batch)
                size += batch.nbytes
            # Arrow reads small blocks (little read-ahead memory); they are checked a few megabytes at a time, so
            # the per-piece work is paid per piece, not per block.
            if pending and (batch is None or size >= PIECE_BYTES):
                try:
                    table = pa.Table.from_batches(pending)
                except (pa.ArrowInvalid, pa.ArrowTypeError) as e:  # blocks whose inferred types differ
                    raise StreamFailed(str(e)) from None
                yield replace(self, table=table, offset=offset, rest=None, dropped=[])
                offset += table.num_rows
                pending, size = [], 0
            if batch is None:
                return


# --- entry point ------------------------------------------------------------------------------------------------


def read(source: Any, on_error: str = "raise", split: str | None = None, stream: bool = False) -> Source:
    """Read `source` (path, list of dicts, `datasets.Dataset`/`DatasetDict`, or Hub id) into a `Source`.

    With `stream=True` a JSONL file is read block by block (`Source.pieces`); the caller must be ready for
    `StreamFailed` and read again with `stream=False`."""
    import datasets

    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return Source("<Dataset>", _dataset_table(_pick_split(source, split, "<Dataset>"), "<Dataset>"))
    if isinstance(source, pa.Table):
        return Source("<Table>", source)
    if isinstance(source, (list, tuple)):
        return _rows_to_source(list(source), "<list>", "row", None, on_error)
    if isinstance(source, dict):
        return _rows_to_source([source], "<dict>", "row", None, on_error)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path, a list of dicts, a datasets.Dataset or a Hub id, not {type(source)}")

    path = Path(source)
    name = str(source)
    if path.is_dir():
        return _read_disk_folder(path, name, split)
    if not path.exists():
        if isinstance(source, str) and _HUB_ID.match(source) and _file_kind(path) is None:
            return _read_hub(source, split)
        raise DataError(name, "no such file or folder")
    kind = _file_kind(path)
    if kind is None:
        raise DataError(
            name,
            "unknown file type; expected .json, .jsonl, .jsonc, .csv or .parquet (optionally .gz), "
            "or a save_to_disk folder",
        )
    if kind == "jsonl" and stream:
        streamed = _stream_jsonl(path, name)
        if streamed is not None:
            return streamed
    reader = {
        "jsonl": _read_jsonl,
        "json": _read_json,
        "jsonc": _read_json,
        "csv": _read_csv,
        "parquet": _read_parquet,
    }
    try:
        return reader[kind](path, name, on_error)
    except UnicodeDecodeError as error:
        raise DataError(name, f"is not UTF-8 text (byte {error.start}: {error.reason}); save it as UTF-8") from None


def _file_kind(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return _SUFFIXES.get(suffixes[-1]) if suffixes else None


def _is_gz(path: Path) -> bool:
    return path.suffix.lower() == ".gz"


def _open_text(path: Path):
    if _is_gz(path):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")  # utf-8-sig: a byte-order mark is not data
    return open(path, encoding="utf-8-sig", newline="")


def _read_text(path: Path, name: str) -> str:
    try:
        with _open_text(path) as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise DataError(name, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (OSError, EOFError) as e:  # e.g. a truncated or not-really-gzip .gz
        raise DataError(name, f"cannot read the file ({e})") from None


# --- JSONL ------------------------------------------------------------------------------------------------------


def _starts_with_an_object(path: Path) -> bool:
    """True if the first non-blank line of the file starts with ``{``.

    pyarrow 26's JSON reader crashes the process (a segmentation fault, not an exception) on a file whose first
    non-blank line is ``null`` (reproduction: tests/test_dataset_builders_errors.py); anything but an object there is
    parsed line by line instead, which names the line.
    """
    try:
        # bytes, not text: a first line that is not UTF-8 must not send the file to Arrow unchecked
        with gzip.open(path, "rb") if _is_gz(path) else open(path, "rb") as f:
            for line in f:
                if line.strip():
                    return line.lstrip().startswith(b"{")  # a byte-order mark first: parsed line by line too
    except (OSError, EOFError):
        return True  # let the normal path report what is wrong with the file
    return True


def _read_jsonl(path: Path, name: str, on_error: str) -> Source:
    if not _starts_with_an_object(path):
        rows, lines, dropped = _parse_jsonl_lines(path, name, on_error)
        source = _rows_to_source(rows, name, "line", np.asarray(lines, dtype=np.int64), on_error, path=path)
        source.dropped[:0] = dropped
        return source
    try:
        with pa.input_stream(str(path), compression="gzip" if _is_gz(path) else None) as stream:
            table = pa_json.read_json(stream, read_options=pa_json.ReadOptions(block_size=_JSONL_BLOCK_SIZE))
        table.validate(full=True)  # pyarrow 26 can build an invalid table from objects of varying nesting
        return Source(name, table, unit="line", path=path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError) as arrow_error:
        # Arrow refuses: parse line by line, to name the line and the field (or drop the bad lines).
        logger.debug("Arrow could not read %s (%s); parsing it line by line", name, arrow_error)
        rows, lines, dropped = _parse_jsonl_lines(path, name, on_error)
        source = _rows_to_source(rows, name, "line", np.asarray(lines, dtype=np.int64), on_error, path=path)
        source.dropped[:0] = dropped
        return source


def _stream_jsonl(path: Path, name: str) -> Source | None:
    """The first block of a JSONL file as the table, the rest as a stream; None if Arrow refuses the start."""
    if not _starts_with_an_object(path):
        return None
    try:
        stream = pa.input_stream(str(path), compression="gzip" if _is_gz(path) else None)
        reader = pa_json.open_json(stream, read_options=pa_json.ReadOptions(block_size=STREAM_BLOCK_SIZE))
        first = reader.read_next_batch()
        first.validate(full=True)  # see _read_jsonl
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError, StopIteration):
        return None
    return Source(name, pa.Table.from_batches([first]), unit="line", path=path, rest=iter(reader))


def _parse_jsonl_lines(path: Path, name: str, on_error: str) -> tuple[list[dict], list[int], list[str]]:
    rows, lines, dropped = [], [], []
    try:
        with _open_text(path) as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    problem = None if isinstance(row, dict) else f"expected a JSON object, got {short_json(row)}"
                except json.JSONDecodeError as e:
                    problem = f"malformed JSON: {e.msg} (column {e.colno})"
                if problem is not None:
                    error = DataError(name, problem, row=number, unit="line")
                    if on_error != "drop":
                        raise error
                    dropped.append(str(error))
                    continue
                rows.append(row)
                lines.append(number)
    except UnicodeDecodeError as e:
        raise DataError(name, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (OSError, EOFError) as e:
        raise DataError(name, f"cannot read the file ({e})") from None
    return rows, lines, dropped


def _jsonl_line_numbers(path: Path) -> np.ndarray:
    """1-based line number of each JSON row (blank lines hold no row; Arrow skips them too)."""
    numbers = []
    # bytes: only newlines and blanks matter here, and a file that is not UTF-8 must still be countable
    with gzip.open(path, "rb") if _is_gz(path) else open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                numbers.append(number)
    return np.asarray(numbers, dtype=np.int64)


# --- JSON and JSON with comments ------------------------------------------------------------------------------


def _read_json(path: Path, name: str, on_error: str) -> Source:
    text = _read_text(path, name)
    if not text.strip():
        raise DataError(name, "the file is empty")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = _parse_lenient_json(text, name)
        if isinstance(value, _JsonLines):
            return _rows_to_source(value.rows, name, "line", np.asarray(value.lines), on_error, path=path)
    rows = value if isinstance(value, list) else [value]
    return _rows_to_source(rows, name, "row", None, on_error, path=path)


@dataclass
class _JsonLines:
    rows: list
    lines: list[int]


def _parse_lenient_json(text: str, name: str) -> Any:
    """JSON as people paste it: JSONL saved as .json; `//` and `/* */` comments and trailing commas (JSON5);
    several objects separated by commas with no enclosing brackets (wrapped in [ ] and parsed again)."""
    lines = _try_json_lines(text)
    if lines is not None:
        return lines
    try:
        return json5.loads(text)
    except ValueError as plain_error:
        error = plain_error
    if not text.lstrip().startswith("["):
        try:
            return json5.loads("[" + text + "\n]")
        except ValueError as wrapped_error:
            error = wrapped_error
    match = re.match(r"<string>:(\d+) (.*)", str(error))
    if match:
        raise DataError(name, f"malformed JSON: {match.group(2)}", row=int(match.group(1)), unit="line") from None
    raise DataError(name, f"malformed JSON: {error}") from None


def _try_json_lines(text: str) -> _JsonLines | None:
    rows, lines = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            return None
        if not isinstance(row, dict):
            return None
        rows.append(row)
        lines.append(number)
    return _JsonLines(rows, lines) if len(rows) > 1 else None


# --- CSV --------------------------------------------------------------------------------------------------------


def _read_csv(path: Path, name: str, on_error: str) -> Source:
    # Every cell is read as a string (a prompt "42" is text); structured fields are JSON-encoded in their cells.
    with _open_text(path) as f:
        header = next(csv.reader(f), None)
    if not header:
        raise DataError(name, "the file is empty (no header row)")
    convert = pa_csv.ConvertOptions(column_types={column: pa.string() for column in header}, strings_can_be_null=False)
    try:
        table = pa_csv.read_csv(str(path), convert_options=convert)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(name, f"malformed CSV: {str(e).splitlines()[0]}") from None
    dropped, kept, numbers = [], [], []
    for index, row in enumerate(table.to_pylist()):
        try:
            kept.append(_decode_csv_row(row, name, index + 1))
            numbers.append(index + 1)
        except DataError as e:
            if on_error != "drop":
                raise
            dropped.append(str(e))
    source = _rows_to_source(kept, name, "row", numbers, on_error, path=path)
    source.dropped[:0] = dropped
    return source


def _decode_csv_row(row: dict, name: str, number: int) -> dict:
    out = {}
    for key, cell in row.items():
        if key in JSON_CELL_FIELDS:
            if cell.strip() == "":
                out[key] = None
                continue
            try:
                out[key] = json.loads(cell)
            except json.JSONDecodeError as e:
                raise DataError(
                    name, f"cell is not valid JSON ({e.msg}): {short(cell)}", row=number, field=key
                ) from None
        elif key in TEXT_FIELDS and cell.lstrip().startswith("[{"):
            out[key] = _maybe_messages(cell)
        else:
            out[key] = cell
    return out


def _maybe_messages(cell: str) -> Any:
    try:
        value = json.loads(cell)
    except json.JSONDecodeError:
        return cell
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
        return value
    return cell


# --- Parquet, save_to_disk folders, datasets, Hub -------------------------------------------------------------


def _read_parquet(path: Path, name: str, on_error: str) -> Source:
    try:
        if _is_gz(path):
            with gzip.open(path, "rb") as f:
                return Source(name, pq.read_table(pa.BufferReader(f.read())))
        return Source(name, pq.read_table(path))
    except (pa.ArrowInvalid, OSError, EOFError) as e:
        raise DataError(name, f"not a readable Parquet file ({str(e).splitlines()[0]})") from None


def _read_disk_folder(path: Path, name: str, split: str | None) -> Source:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise DataError(name, "a folder, but not one written by Dataset.save_to_disk") from None
    return Source(name, _dataset_table(_pick_split(loaded, split, name), name))


def _read_hub(repo_id: str, split: str | None) -> Source:
    import datasets

    try:
        loaded = datasets.load_dataset(repo_id, split=split or "train")
    except Exception as e:  # network, authentication, unknown id, offline mode: all end here
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise DataError(
            repo_id,
            f"could not load it from the Hugging Face Hub ({type(e).__name__}: {short(first_line, 160)}); "
            "check the id and your connection (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE must be unset), or pass a local path",
        ) from None
    return Source(repo_id, _dataset_table(loaded, repo_id))


def _pick_split(loaded: Any, split: str | None, name: str) -> Any:
    import datasets

    if not isinstance(loaded, datasets.DatasetDict):
        return loaded
    if split is None and len(loaded) == 1:
        return next(iter(loaded.values()))
    split = split or "train"
    if split not in loaded:
        raise DataError(name, f"no split {split!r}; splits found: {', '.join(loaded)} (pass split=...)")
    return loaded[split]


def _dataset_table(dataset: Any, name: str) -> pa.Table:
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        raise DataError(name, f"expected a datasets.Dataset, got {type(dataset).__name__}")
    if dataset._indices is not None:  # a select/shuffle view: materialize the rows it points to
        dataset = dataset.flatten_indices()
    return dataset.data.table


# --- Python rows -> Arrow, with exact errors --------------------------------------------------------------------


def _rows_to_source(rows: list, name: str, unit: str, numbers: Any, on_error: str, path: Path | None = None) -> Source:
    """Build the table from Python rows; where Arrow refuses, name the first row at fault (or drop it)."""
    numbers = list(range(1, len(rows) + 1)) if numbers is None else [int(n) for n in numbers]
    dropped: list[str] = []

    def reject(i: int, reason: str, field_name: str | None = None) -> None:
        error = DataError(name, reason, row=numbers[i], field=field_name, unit=unit)
        if on_error != "drop":
            raise error
        dropped.append(str(error))

    keep = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            reject(i, f"expected a JSON object, got {short_json(row)}")
            continue
        try:
            rows[i] = _joined_surrogates(row)
        except _LoneSurrogate as lone:
            reject(i, "holds a lone UTF-16 surrogate (half of an escaped character), which is not text", lone.field)
            continue
        keep.append(i)
    rows, numbers = [rows[i] for i in keep], [numbers[i] for i in keep]

    coerced = False
    while True:
        if not rows:
            raise DataError(name, "no rows" + (f" (all {len(dropped)} dropped)" if dropped else ""))
        try:
            table = pa.Table.from_pylist(rows)
            break
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError) as arrow_error:
            if not coerced:
                coerced = True
                if _labels_to_strings(rows):
                    continue
            bad = _inconsistent_rows(rows) or _first_nested_misfit(rows)
            if not bad:
                raise DataError(name, f"cannot build a table from the rows ({arrow_error})") from None
            for i, field_name, reason in bad:  # raises at the first unless on_error="drop"
                reject(i, reason, field_name)
            drop = {i for i, _, _ in bad}
            rows = [row for i, row in enumerate(rows) if i not in drop]
            numbers = [n for i, n in enumerate(numbers) if i not in drop]
    return Source(name, table, unit=unit, line_numbers=np.asarray(numbers, dtype=np.int64), path=path, dropped=dropped)


_SURROGATE = re.compile("[\ud800-\udfff]")


class _LoneSurrogate(ValueError):
    def __init__(self, field: str | None):
        super().__init__(field)
        self.field = field


def _joined_surrogates(value: Any, field: str | None = None) -> Any:
    """`value` with escaped astral characters made whole: JSON5 (and JSON written by Python's `json.dumps`) can carry
    an emoji as the two escapes ``\\ud83d\\ude00``, which some parsers decode one half at a time. A half without its
    partner raises `_LoneSurrogate` naming the top-level field."""
    if isinstance(value, str):
        if not _SURROGATE.search(value):
            return value
        try:
            return value.encode("utf-16", "surrogatepass").decode("utf-16")
        except UnicodeDecodeError:
            raise _LoneSurrogate(field) from None
    if isinstance(value, dict):  # keys too: a field name can carry an escaped emoji
        return {
            _joined_surrogates(k, field) if isinstance(k, str) else k: _joined_surrogates(
                v, field if field is not None else str(k)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_joined_surrogates(v, field) for v in value]
    return value


def _labels_to_strings(rows: list[dict]) -> bool:
    """A label or preference column may mix spellings ("good", true, 1): each is fine, but an Arrow column holds
    one type, so write them all as strings and let validation judge each value. True if anything changed."""
    changed = False
    for key in ("label", "preference"):
        kinds = {_kind(row.get(key)) for row in rows} - {None}
        if len(kinds) > 1:
            for row in rows:
                value = row.get(key)
                if value is not None and not isinstance(value, str):
                    row[key] = json.dumps(value)
            changed = True
    return changed


def _kind(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        if value and all(isinstance(m, dict) for m in value):
            return "a message list" if all("role" in m for m in value) else "a list of objects"
        if value and all(isinstance(v, str) for v in value):
            return "a list of strings"
        if value and all(isinstance(v, list) for v in value):
            return "a list of lists"
        return "a list"
    return type(value).__name__


def _inconsistent_rows(rows: list[dict]) -> list[tuple[int, str, str]]:
    """Each row (index, field, reason) whose field holds a value Arrow cannot put in one column with the rest:
    text that is not a string or message list, or a different kind of value than the rest of the column."""
    kinds: dict[str, Counter] = {}
    for row in rows:
        for key, value in row.items():
            kind = _kind(value)
            if kind is not None:
                kinds.setdefault(key, Counter())[kind] += 1
    usual = {}
    for key, counts in kinds.items():
        if key in TEXT_FIELDS:
            counts = Counter({k: n for k, n in counts.items() if k in ("a string", "a message list")}) or counts
        usual[key] = counts.most_common(1)[0][0]
    found = []
    for i, row in enumerate(rows):
        for key, value in row.items():
            reason = _value_problem(key, value, usual.get(key))
            if reason is not None:
                found.append((i, key, reason))
                break
    return found


def _first_nested_misfit(rows: list[dict]) -> list[tuple[int, str, str]]:
    """The first row whose field holds a value shaped differently inside (a nested field that is a number in earlier
    rows and a string here, ...) from the rows before it: the smallest prefix of the column Arrow refuses, found by
    bisection."""

    def fits(values: list) -> bool:
        try:
            pa.array(values)
            return True
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
            return False

    for key in dict.fromkeys(k for row in rows for k in row):
        values = [row.get(key) for row in rows]
        if fits(values):
            continue
        lo, hi = 1, len(values)  # values[:lo] fits, values[:hi] does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(values[:mid]) else (lo, mid)
        i = hi - 1
        return [(i, key, f"holds a value shaped differently inside from the rows before it ({short(values[i])}); use one form per field")]  # fmt: skip
    return []


def _value_problem(key: str, value: Any, usual: str | None) -> str | None:
    kind = _kind(value)
    if kind is None:
        return None
    if key in TEXT_FIELDS and kind not in ("a string", "a message list"):
        return f"expected text (a string or a message list), got {short(value)}"
    if key == "responses" and kind == "a list" and any(not isinstance(v, (str, list)) for v in value):
        bad = next(v for v in value if not isinstance(v, (str, list)))
        return f"expected a list of texts (strings or message lists), got an item {short(bad)}"
    if key in ("chosen_length", "rejected_length") and kind != "a number":
        return f"expected a non-negative number (a declared length), got {short(value)}"
    if key == "ranking" and isinstance(value, list) and any(_kind(v) not in (None, "a number") for v in value):
        return f"expected a list of integer ranks, got {short(value)}"
    if isinstance(value, list) and len({_kind(v) for v in value} - {None}) > 1:
        mixed = " and ".join(sorted({_kind(v) for v in value} - {None}))
        return f"a list mixing {mixed}: {short(value)}"
    if usual is not None and kind != usual and not (kind == "a list" and usual.startswith("a list")):
        return f"{kind} here but {usual} in other rows ({short(value)}); use one form per field"
    return None


__all__ = ["Source", "StreamFailed", "read", "TEXT_FIELDS"]
