"""The one exception the package raises for bad data, and the one-line message format it uses."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data. The message is one line naming the source, the row and the field.

    Rows are 1-based; for JSONL files the number is the line number in the file.

    Attributes:
        source: the file, Hub id, ``"<list>"`` or ``"<Dataset>"`` the data came from.
        row: 1-based row (or line) number, or ``None`` when the problem concerns the whole source.
        field: the field at fault, or ``None``.
        reason: what is wrong, and where it helps, how to fix it.
        unit: ``"line"`` (JSONL) or ``"row"``.

    Example:
        >>> DataError("pairs.jsonl", "empty", row=3, field="chosen", unit="line")
        DataError("pairs.jsonl: line 3, field 'chosen': empty")
    """

    def __init__(
        self,
        source: str,
        reason: str,
        row: int | None = None,
        field: str | None = None,
        unit: str = "row",
        read_as: str | None = None,
    ):
        self.source, self.reason, self.row, self.field, self.unit = source, reason, row, field, unit
        super().__init__(format_problem(source, reason, row, field, unit, read_as))


def format_problem(
    source: str,
    reason: str,
    row: int | None = None,
    field: str | None = None,
    unit: str = "row",
    read_as: str | None = None,
) -> str:
    """`read_as`: the field of ours that `field` (the source's own name, mapped with `columns=`) is read as."""
    where = [f"{unit} {row}"] if row is not None else []
    if field is not None:
        where.append(f"field {field!r}" + (f" (read as {read_as!r})" if read_as else ""))
    prefix = f"{source}: " + (", ".join(where) + ": " if where else "")
    # One line, always: values quoted into the reason may carry newlines.
    return (prefix + reason).replace("\r", "\\r").replace("\n", "\\n")


def short(value: object, limit: int = 60) -> str:
    """repr of a value, cut to `limit` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_json(value: object, limit: int = 60) -> str:
    """A value as JSON (``null``, ``[1, 2]``), cut to `limit` characters; `short` for what JSON cannot write."""
    import json

    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return short(value, limit)
    return text if len(text) <= limit else text[: limit - 3] + "..."
