"""dataset_builders: every shape in every file form, detection, sources, and the canonical columns."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dataset_builders
from dataset_builders import DataError, detect, load
from trl_ext.toy.synthetic import ToyTask

FORMS = ("json", "jsonl", "jsonc", "csv", "parquet", "jsonl.gz", "csv.gz", "json.gz", "save_to_disk")


def write_form(rows: list[dict], form: str, directory: Path, stem: str = "data") -> Path:
    """Write `rows` as `form`: the way a person (or a tool) would save them."""
    directory.mkdir(parents=True, exist_ok=True)
    if form == "save_to_disk":
        path = directory / f"{stem}_disk"
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
        return path
    if form == "parquet":
        path = directory / f"{stem}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    base = form.removesuffix(".gz")
    if base == "jsonl":
        text = "".join(json.dumps(row) + "\n" for row in rows)
    elif base == "json":
        text = json.dumps(rows, indent=2)
    elif base == "jsonc":
        # as pasted from a blog post: comments, objects separated by commas, no brackets, a trailing comma
        body = ",\n/* next example */\n".join(json.dumps(row, indent=2) for row in rows)
        text = "// examples copied from the docs\n" + body + ",  // trailing comma\n"
    elif base == "csv":
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
        text = buffer.getvalue()
    else:
        raise ValueError(form)
    path = directory / f"{stem}.{form}"
    if form.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def canonical(shape: str, row: dict) -> dict:
    """What `load(source)` (no method) must give for one valid input row, written out independently."""
    if shape == "pairwise_ab":
        return {**row, "preference": row["preference"].strip().upper()}
    if shape == "binary":
        label = row["label"]
        good = label if isinstance(label, bool) else str(label).strip().lower() in ("good", "true", "1", "thumbs up")
        return {"prompt": row["prompt"], "response": row["response"], "label": good}
    return dict(row)


# --- every shape x every file form ------------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shape", dataset_builders.SHAPES)
def test_every_shape_in_every_form(shape, form, tmp_path):
    rows = ToyTask(seed=3).rows(shape, 12)
    path = write_form(rows, form, tmp_path)
    assert detect(path) == shape
    assert detect(str(path)) == shape
    dataset = load(path)
    assert dataset.column_names == list(dataset_builders.FIELDS[shape])
    assert dataset.to_list() == [canonical(shape, row) for row in rows]


@pytest.mark.parametrize("form", ("jsonl", "json", "jsonc", "csv", "parquet", "save_to_disk"))
@pytest.mark.parametrize("shape", dataset_builders.SHAPES)
def test_conversational_shapes_in_every_form(shape, form, tmp_path):
    rows = ToyTask(seed=4, conversational=True).rows(shape, 6)
    dataset = load(write_form(rows, form, tmp_path))
    assert dataset.to_list() == [canonical(shape, row) for row in rows]
    assert dataset[0]["prompt"][0]["role"] == "user"


@pytest.mark.parametrize("kind,shape", [("sft", "prompt_completion"), ("prompts", "prompts")])
def test_plain_shapes(kind, shape, tmp_path):
    rows = ToyTask(seed=0).rows(kind, 5)
    path = write_form(rows, "jsonl", tmp_path)
    assert detect(path) == shape
    assert load(path).to_list() == rows
    messages = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    assert detect(messages) == "messages"
    assert load(messages, method="sft").to_list() == messages


def test_in_memory_sources_match_files(tmp_path):
    rows = ToyTask(seed=1).rows("pairs", 10)
    expected = load(write_form(rows, "jsonl", tmp_path))
    assert load(rows).to_list() == expected.to_list()
    assert load(datasets.Dataset.from_list(rows)).to_list() == expected.to_list()
    assert load(datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})).to_list() == expected.to_list()
    # a view (select/shuffle) is read through its indices, not the underlying table
    view = datasets.Dataset.from_list(rows).select([3, 1])
    assert load(view).to_list() == [rows[3], rows[1]]


def test_json_single_object_and_jsonl_saved_as_json(tmp_path):
    row = {"prompt": "p", "chosen": "c", "rejected": "r"}
    single = tmp_path / "one.json"
    single.write_text(json.dumps(row))
    assert load(single).to_list() == [row]
    lines = tmp_path / "lines.json"
    lines.write_text(json.dumps(row) + "\n" + json.dumps({**row, "chosen": "c2"}) + "\n")
    assert [r["chosen"] for r in load(lines)] == ["c", "c2"]


def test_jsonc_comments_and_trailing_commas(tmp_path):
    path = tmp_path / "pasted.jsonc"
    path.write_text(
        """[
  // the first example
  {"prompt": "Sky?", "chosen": "Blue.", "rejected": "Green.",},  /* trailing comma inside */
  {"prompt": "Sea?", "chosen": "Wet.", "rejected": "Dry."},
]"""
    )
    assert load(path).to_list() == [
        {"prompt": "Sky?", "chosen": "Blue.", "rejected": "Green."},
        {"prompt": "Sea?", "chosen": "Wet.", "rejected": "Dry."},
    ]


def test_csv_keeps_text_verbatim(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('prompt,chosen,rejected\n42,"[INST] not json","true"\n')
    assert load(path).to_list() == [{"prompt": "42", "chosen": "[INST] not json", "rejected": "true"}]


def test_extra_columns_are_dropped_and_label_spellings(tmp_path):
    rows = [
        {"id": 1, "prompt": "p", "response": "r", "label": "Good"},
        {"id": 2, "prompt": "p", "response": "r", "label": " thumbs down "},
        {"id": 3, "prompt": "p", "response": "r", "label": "\N{THUMBS UP SIGN}"},
        {"id": 4, "prompt": "p", "response": "r", "label": "false"},
        {"id": 5, "prompt": "p", "response": "r", "label": "1"},
    ]
    assert load(rows)["label"] == [True, False, True, False, True]
    assert load([{"prompt": "p", "response": "r", "label": v} for v in (True, False)])["label"] == [True, False]
    assert load([{"prompt": "p", "response": "r", "label": v} for v in (1, 0)])["label"] == [True, False]
    # TRL's unpaired form (completion instead of response) reads as binary too
    assert load([{"prompt": "p", "completion": "r", "label": True}], method="kto").to_list() == [
        {"prompt": "p", "completion": "r", "label": True}
    ]


def test_preference_is_case_insensitive():
    rows = [{"prompt": "p", "response_a": "a", "response_b": "b", "preference": v} for v in ("a", " B ", "A")]
    assert load(rows)["preference"] == ["A", "B", "A"]


def test_declared_lengths_kept_as_given():
    rows = [{"prompt": "p", "chosen": "c", "rejected": "rr", "chosen_length": 7.5, "rejected_length": 0}]
    assert load(rows, method="ipo").to_list() == [
        {"prompt": "p", "chosen": "c", "rejected": "rr", "chosen_length": 7.5, "rejected_length": 0.0}
    ]


def test_trl_helpers_accept_the_output():
    from trl.data_utils import is_conversational, maybe_extract_prompt

    for conversational in (False, True):
        rows = ToyTask(seed=2, conversational=conversational).rows("ranked", 4)
        for example in load(rows, method="dpo"):
            assert is_conversational(example) is conversational
            assert maybe_extract_prompt(example) == example  # explicit prompt, same form everywhere


def test_detect_unknown_fields():
    with pytest.raises(DataError, match=r"<list>: cannot tell the shape from the fields \['foo'\]"):
        detect([{"foo": 1}])


def test_unknown_option_and_bad_option_value():
    rows = [{"prompt": "p", "chosen": "c", "rejected": "r"}]
    with pytest.raises(TypeError, match="unknown option 'pair_stratgy'"):
        load(rows, pair_stratgy="adjacent")
    with pytest.raises(ValueError, match="pair_strategy='sideways'"):
        load(rows, pair_strategy="sideways")
    with pytest.raises(ValueError, match="method must be one of"):
        load(rows, method="ppo2")


# --- large JSONL files are streamed block by block --------------------------------------------------------------


@pytest.fixture
def small_blocks(monkeypatch):
    """Stream JSONL in 2 KB blocks, each its own piece, so a small file arrives in many pieces."""
    from dataset_builders import readers

    monkeypatch.setattr(readers, "STREAM_BLOCK_SIZE", 2048)
    monkeypatch.setattr(readers, "PIECE_BYTES", 1)  # every block its own piece


@pytest.mark.parametrize("method", dataset_builders.METHODS)
@pytest.mark.parametrize("shape", dataset_builders.SHAPES)
def test_streamed_pieces_give_the_same_rows(shape, method, tmp_path, small_blocks):
    rows = ToyTask(seed=11).rows(shape, 120)
    path = write_form(rows, "jsonl", tmp_path)
    from dataset_builders.readers import read

    assert sum(1 for _ in read(path, stream=True).pieces()) > 3
    options = {"count_lengths": "chars"}
    try:
        expected = load(rows, method=method, **options).to_list()
    except DataError as refusal:  # e.g. binary -> dpo: refused the same way
        with pytest.raises(DataError, match=str(refusal).split(": ", 1)[1][:40]):
            load(path, method=method, **options)
        return
    assert load(path, method=method, **options).to_list() == expected


def test_streamed_bad_row_in_a_later_block(tmp_path, small_blocks):
    rows = ToyTask(seed=12).rows("pairs", 100)
    rows[77]["rejected"] = ""
    path = write_form(rows, "jsonl", tmp_path)
    with pytest.raises(DataError, match=rf"^{path}: line 78, field 'rejected': empty$"):
        load(path)
    dataset, report = dataset_builders.load_with_report(path, on_error="drop")
    assert len(dataset) == 99 and report.dropped == 1 and report.rows_in == 100


def test_streamed_type_change_in_a_later_block_falls_back(tmp_path, small_blocks):
    rows = ToyTask(seed=13).rows("pairs", 100)
    rows[90]["prompt"] = 12345  # Arrow's first block said string: the stream stops, the whole-file path names it
    path = write_form(rows, "jsonl", tmp_path)
    with pytest.raises(
        DataError, match=rf"^{path}: line 91, field 'prompt': expected text \(a string or a message list\), got 12345$"
    ):
        load(path)
    assert len(load(path, on_error="drop")) == 99


def test_streamed_blocks_gathered_into_pieces_give_the_same_rows_and_lines(tmp_path, monkeypatch):
    from dataset_builders import readers

    monkeypatch.setattr(readers, "STREAM_BLOCK_SIZE", 2048)
    monkeypatch.setattr(readers, "PIECE_BYTES", 8192)  # several blocks per piece
    rows = ToyTask(seed=13).rows("pairs", 200)
    path = write_form(rows, "jsonl", tmp_path)
    pieces = list(readers.read(path, stream=True).pieces())
    assert 2 < len(pieces) < sum(1 for _ in readers.pa_json.open_json(path, read_options=readers.pa_json.ReadOptions(block_size=2048)))  # fmt: skip
    assert load(path, method="dpo").to_list() == load(rows, method="dpo").to_list()
    rows[150]["chosen"] = ""
    path = write_form(rows, "jsonl", tmp_path)
    with pytest.raises(DataError, match=rf"^{path}: line 151, field 'chosen': empty$"):
        load(path)
