"""dataset_builders: every kind of bad input gives one line naming the file, the row (line for JSONL) and the field;
rows are dropped only with on_error="drop", and counted."""

from __future__ import annotations

import json

import pytest

from dataset_builders import DataError, load, load_with_report

GOOD_PAIR = {"prompt": "p", "chosen": "c", "rejected": "r"}
GOOD_AB = {"prompt": "p", "response_a": "a", "response_b": "b", "preference": "A"}
GOOD_BIN = {"prompt": "p", "response": "x", "label": "good"}
GOOD_RANKED = {"prompt": "p", "responses": ["x", "y", "z"], "ranking": [1, 2, 3]}
MSG = [{"role": "assistant", "content": "c"}]

# (case id, the bad row (placed on line 3 of a JSONL file, after a good row and a blank line), field, reason)
BAD_ROWS = [
    ("missing field", {"prompt": "p", "rejected": "r"}, "chosen", "missing"),
    ("null field", {**GOOD_PAIR, "chosen": None}, "chosen", "missing"),
    ("empty string", {**GOOD_PAIR, "rejected": ""}, "rejected", "empty"),
    ("empty message list", {**GOOD_PAIR, "chosen": MSG, "rejected": []}, "rejected", "empty"),
    (
        "message without content",
        {**GOOD_PAIR, "chosen": MSG, "rejected": [{"role": "assistant"}]},
        "rejected",
        "message 1 has no 'content'",
    ),
    ("number as text", {**GOOD_PAIR, "prompt": 42}, "prompt", "expected text (a string or a message list), got 42"),
    (
        "list of strings as text",
        {**GOOD_PAIR, "chosen": ["a", "b"]},
        "chosen",
        "expected text (a string or a message list), got ['a', 'b']",
    ),
    (
        "object as text",
        {**GOOD_PAIR, "chosen": {"text": "c"}},
        "chosen",
        "expected text (a string or a message list), got {'text': 'c'}",
    ),
    ("preference C", {**GOOD_AB, "preference": "C"}, "preference", "expected 'A' or 'B', got 'C'"),
    ("preference number", {**GOOD_AB, "preference": 1}, "preference", "expected 'A' or 'B', got '1'"),
    (
        "preference tie",
        {**GOOD_AB, "preference": "tie"},
        "preference",
        "'tie' is a tie; pass allow_ties=True to accept ties (they make no pair)",
    ),
    (
        "label other",
        {**GOOD_BIN, "label": "meh"},
        "label",
        "expected 'good' or 'bad' (or true/false, 1/0, thumbs up/down), got 'meh'",
    ),
    (
        "label 2",
        {**GOOD_BIN, "label": 2},
        "label",
        "expected 'good' or 'bad' (or true/false, 1/0, thumbs up/down), got '2'",
    ),
    (
        "ranking too short",
        {**GOOD_RANKED, "ranking": [1, 2]},
        "ranking",
        "2 ranks for 3 responses (ranking[i] is the rank of responses[i], 1 = best)",
    ),
    (
        "rank out of range",
        {**GOOD_RANKED, "ranking": [1, 2, 4]},
        "ranking",
        "rank 4 is out of range 1..3 in [1, 2, 4] (ranking[i] is the rank of responses[i], 1 = best)",
    ),
    (
        "rank zero",
        {**GOOD_RANKED, "ranking": [0, 1, 2]},
        "ranking",
        "rank 0 is out of range 1..3 in [0, 1, 2] (ranking[i] is the rank of responses[i], 1 = best)",
    ),
    (
        "rank not an integer",
        {**GOOD_RANKED, "ranking": [1, 2.5, 3]},
        "ranking",
        "rank 2.5 is not an integer (ranking[i] is the rank of responses[i], 1 = best)",
    ),
    (
        "ranking of strings",
        {**GOOD_RANKED, "ranking": ["1", "2", "3"]},
        "ranking",
        "expected a list of integer ranks, got ['1', '2', '3']",
    ),
    ("one response", {"prompt": "p", "responses": ["x"], "ranking": [1]}, "responses", "fewer than two responses (1)"),
    ("empty response", {**GOOD_RANKED, "responses": ["x", "", "z"]}, "responses", "response 2 is empty"),
    (
        "negative length",
        {**GOOD_PAIR, "chosen_length": -1, "rejected_length": 3},
        "chosen_length",
        "expected a non-negative number (a declared length), got -1",
    ),
    (
        "length as text",
        {**GOOD_PAIR, "chosen_length": 2, "rejected_length": "three"},
        "rejected_length",
        "expected a non-negative number (a declared length), got 'three'",
    ),
]


def _good_for(bad: dict) -> dict:
    if "response_a" in bad:
        return GOOD_AB
    if "label" in bad:
        return GOOD_BIN
    if "responses" in bad:
        return GOOD_RANKED
    if "chosen_length" in bad:
        return {**GOOD_PAIR, "chosen_length": 1, "rejected_length": 1}
    if isinstance(bad.get("chosen"), list) and bad["chosen"] and isinstance(bad["chosen"][0], dict):
        return {**GOOD_PAIR, "chosen": MSG, "rejected": MSG}  # a conversational file
    return GOOD_PAIR


@pytest.mark.parametrize("case,bad,field,reason", BAD_ROWS, ids=[c[0] for c in BAD_ROWS])
def test_bad_row_in_jsonl_names_the_line_and_field(case, bad, field, reason, tmp_path):
    path = tmp_path / "data.jsonl"
    good = _good_for(bad)
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(DataError) as error:
        load(path)
    message = str(error.value)
    assert message == f"{path}: line 3, field '{field}': {reason}"
    assert "\n" not in message
    assert (error.value.row, error.value.field) == (3, field)


@pytest.mark.parametrize("case,bad,field,reason", BAD_ROWS[:12], ids=[c[0] for c in BAD_ROWS[:12]])
def test_bad_row_in_json_and_lists_names_the_row(case, bad, field, reason, tmp_path):
    rows = [_good_for(bad), bad]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(DataError) as error:
        load(path)
    assert str(error.value).startswith(f"{path}: row 2, field '{field}': ")
    with pytest.raises(DataError, match=rf"^<list>: row 2, field '{field}': "):
        load(rows)


def test_malformed_jsonl(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GOOD_PAIR) + "\n" + '{"prompt": "p", "chosen": "c" "rejected": "r"}\n')
    with pytest.raises(DataError) as error:
        load(path)
    assert str(error.value) == f"{path}: line 2: malformed JSON: Expecting ',' delimiter (column 31)"


def test_malformed_json_and_jsonc(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"prompt": "p", "chosen": "c", "rejected": "r"},\n  {"prompt": "p" "chosen": "c"}\n]')
    with pytest.raises(DataError, match=rf'^{path}: line 3: malformed JSON: Unexpected """ at column 18$'):
        load(path)
    pasted = tmp_path / "pasted.jsonc"
    pasted.write_text('// two examples\n{"prompt": "p", "chosen": "c", "rejected": "r"},\n{"prompt": "p", chosen: }\n')
    with pytest.raises(DataError, match=rf"^{pasted}: line 3: malformed JSON: "):
        load(pasted)


def test_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text(json.dumps(GOOD_PAIR) + "\n[1, 2]\n")
    with pytest.raises(DataError, match=rf"^{path}: line 2: expected a JSON object, got \[1, 2\]$"):
        load(path)


def test_missing_column_names_the_field(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "c"}) + "\n")
    with pytest.raises(
        DataError,
        match=rf"^{path}: line 1, field 'rejected': missing \(the pairs shape needs prompt, chosen, rejected; found prompt, chosen\)$",
    ):
        load(path)


def test_csv_rows_and_bad_json_cells(tmp_path):
    path = tmp_path / "ranked.csv"
    path.write_text('prompt,responses,ranking\np,"[""x"", ""y""]","[1, 2]"\nq,"[""x"", ""y""]","[1, 2"\n')
    with pytest.raises(DataError, match=rf"^{path}: row 2, field 'ranking': cell is not valid JSON"):
        load(path)
    path.write_text("prompt,chosen,rejected\np,c,r\np,,r\n")
    with pytest.raises(DataError, match=rf"^{path}: row 2, field 'chosen': empty$"):
        load(path)


def test_mixed_text_forms_in_one_column(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        json.dumps(GOOD_PAIR) + "\n" + json.dumps({**GOOD_PAIR, "chosen": MSG}) + "\n" + json.dumps(GOOD_PAIR) + "\n"
    )
    with pytest.raises(
        DataError, match=rf"^{path}: line 2, field 'chosen': a message list here but a string in other rows"
    ):
        load(path)


def test_order_format_must_be_a_permutation():
    with pytest.raises(DataError, match=r"row 1, field 'ranking': \[1, 1, 2\] is not an order of the 3 responses"):
        load([{**GOOD_RANKED, "ranking": [1, 1, 2]}], ranking_format="order")


def test_unreadable_sources(tmp_path):
    with pytest.raises(DataError, match=rf"^{tmp_path / 'nope.jsonl'}: no such file or folder$"):
        load(tmp_path / "nope.jsonl")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes.txt: unknown file type"):
        load(tmp_path / "notes.txt")
    (tmp_path / "empty.json").write_text("  ")
    with pytest.raises(DataError, match=r"empty.json: the file is empty"):
        load(tmp_path / "empty.json")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match=r"folder: a folder, but not one written by Dataset.save_to_disk"):
        load(tmp_path / "folder")
    (tmp_path / "bin.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"bin.jsonl.gz: cannot read the file"):
        load(tmp_path / "bin.jsonl.gz")


def test_hub_id_offline_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as error:
        load("trl-ext-tests/no-such-dataset")
    message = str(error.value)
    assert message.startswith("trl-ext-tests/no-such-dataset: could not load it from the Hugging Face Hub (")
    assert "\n" not in message


# --- dropping: only on request, always counted ------------------------------------------------------------------


def test_drop_bad_rows_counts_and_reports(tmp_path, caplog):
    path = tmp_path / "some_bad.jsonl"
    lines = [
        json.dumps(GOOD_PAIR),
        json.dumps({**GOOD_PAIR, "chosen": ""}),
        "{not json",
        json.dumps({**GOOD_PAIR, "prompt": 3}),
        json.dumps({**GOOD_PAIR, "prompt": "kept"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 3: malformed JSON"):
        load(path)  # not without asking (reading comes before the row checks, so line 3 is named first)
    dataset, report = load_with_report(path, method="dpo", on_error="drop")
    assert dataset["prompt"] == ["p", "kept"]
    assert report.dropped == 3 and report.rows_in == 5 and report.rows_out == 2
    assert sorted(report.problems) == sorted(
        [
            f"{path}: line 3: malformed JSON: Expecting property name enclosed in double quotes (column 2)",
            f"{path}: line 4, field 'prompt': expected text (a string or a message list), got 3",
            f"{path}: line 2, field 'chosen': empty",
        ]
    )
    assert "dropped 3 invalid row(s)" in caplog.text


def test_drop_in_arrow_path_keeps_line_numbers(tmp_path):
    path = tmp_path / "ranked.jsonl"
    rows = [GOOD_RANKED, {**GOOD_RANKED, "ranking": [1, 2, 9]}, {**GOOD_RANKED, "prompt": "last"}]
    path.write_text("\n\n".join(json.dumps(r) for r in rows) + "\n")
    dataset, report = load_with_report(path, on_error="drop")
    assert dataset["prompt"] == ["p", "last"] and dataset["ranking"] == [[1, 2, 3], [1, 2, 3]]
    assert report.problems == [
        f"{path}: line 3, field 'ranking': rank 9 is out of range 1..3 in [1, 2, 9] (ranking[i] is the rank of responses[i], 1 = best)"
    ]


def test_everything_dropped_is_an_error():
    with pytest.raises(DataError, match="no rows left"):
        load([{**GOOD_PAIR, "chosen": ""}], on_error="drop")
