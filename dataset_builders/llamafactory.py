"""LLaMA-Factory's `dataset_info.json`: an entry names a file (or Hub dataset), its formatting (alpaca or sharegpt),
whether it holds preferences (`ranking`), its column names and, for sharegpt, its message tags. `entry_source` turns
an entry into what `load` takes: the source, and the options (`format`, `columns`, `message_tags`) that read it as
LLaMA-Factory would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import DataError

# LLaMA-Factory's column names (dataset_info "columns" keys) -> the fields our layouts read
_ALPACA = {"prompt": "instruction", "query": "input", "response": "output", "history": "history", "system": "system",
           "chosen": "chosen", "rejected": "rejected", "kto_tag": "kto_tag"}  # fmt: skip
_SHAREGPT = {"messages": "conversations", "system": "system", "tools": "tools", "chosen": "chosen",
             "rejected": "rejected", "kto_tag": "kto_tag"}  # fmt: skip
_ALPACA_DEFAULTS = {"prompt": "instruction", "query": "input", "response": "output"}
_SHAREGPT_DEFAULTS = {"messages": "conversations"}


def is_dataset_info(source: Any) -> bool:
    return isinstance(source, (str, Path)) and Path(source).name == "dataset_info.json"


def entry_source(info_path: str | Path, name: str | None) -> tuple[str, dict[str, Any]]:
    """(the data source, the `load` options) for the entry `name` of a LLaMA-Factory `dataset_info.json`."""
    info_path = Path(info_path)
    where = str(info_path)
    try:
        info = json.loads(info_path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as error:
        raise DataError(where, f"cannot read this dataset_info.json ({error})") from None
    if not isinstance(info, dict) or not info:
        raise DataError(where, "expected an object of dataset entries")
    if name is None:
        raise DataError(where, f"name the entry with dataset_name= (CLI --dataset-name); entries: {', '.join(info)}")
    entry = info.get(name)
    if not isinstance(entry, dict):
        raise DataError(where, f"no entry {name!r}; entries: {', '.join(info)}")
    if entry.get("file_name"):
        source = str(info_path.parent / entry["file_name"])
    elif entry.get("hf_hub_url"):
        source = entry["hf_hub_url"]
    else:
        raise DataError(where, f"entry {name!r}: only file_name and hf_hub_url sources can be read here")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise DataError(where, f"entry {name!r}: formatting {formatting!r} (expected alpaca or sharegpt)")
    declared = entry.get("columns") or {}
    ours = _ALPACA if formatting == "alpaca" else _SHAREGPT
    columns_in = {**(_ALPACA_DEFAULTS if formatting == "alpaca" else _SHAREGPT_DEFAULTS), **declared}
    unknown = sorted(set(declared) - set(ours))
    if unknown:
        raise DataError(where, f"entry {name!r}: columns {unknown} are not read here (known: {', '.join(ours)})")
    columns = {ours[k]: v for k, v in columns_in.items() if v and ours[k] != v}
    if formatting == "alpaca":
        if "kto_tag" in declared:
            fmt = "llamafactory_kto"
        elif {"chosen", "rejected"} <= set(declared):
            fmt = "llamafactory_alpaca_pairs"
        elif entry.get("ranking"):
            fmt = "llamafactory_alpaca_ranking"
        else:
            fmt = "llamafactory_alpaca"
    elif "kto_tag" in declared:
        fmt = "llamafactory_kto"
    elif entry.get("ranking") or {"chosen", "rejected"} <= set(declared):
        fmt = "llamafactory_sharegpt_pairs"
    else:
        fmt = "llamafactory_sharegpt"
    options: dict[str, Any] = {"format": fmt}
    if columns:
        options["columns"] = columns
    if formatting == "sharegpt" and entry.get("tags"):
        options["message_tags"] = dict(entry["tags"])
    return source, options
