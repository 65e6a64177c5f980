"""`python -m dataset_builders inspect|convert` (also installed as `trl-ext-data`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from dataset_builders import load
from dataset_builders.__main__ import main
from trl_ext.toy.synthetic import ToyTask


@pytest.fixture
def ranked_file(tmp_path):
    return ToyTask(seed=7).write_jsonl("ranked", 20, tmp_path / "ranked.jsonl")


def test_inspect_text(ranked_file, capsys):
    assert main(["inspect", str(ranked_file)]) == 0
    out = capsys.readouterr().out
    assert "shape:    ranked" in out
    assert "rows:     20 (20 valid)" in out
    assert "responses (count)" in out and "min 4  mean 4  max 4" in out
    assert "problems: 0" in out
    assert "dpo     yes" in out and "ipo     needs an option" in out and "--count-lengths chars" in out  # named


def test_inspect_json_reports_every_problem(tmp_path, capsys):
    path = tmp_path / "ab.jsonl"
    rows = [
        {"prompt": "p", "response_a": "a", "response_b": "b", "preference": "A"},
        {"prompt": "p", "response_a": "a", "response_b": "b", "preference": "C"},
        {"prompt": "p", "response_a": "", "response_b": "b", "preference": "B"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{oops\n")
    assert main(["inspect", str(path), "--json"]) == 1  # problems found: non-zero, for scripts and CI
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == "pairwise_ab"
    assert (info["rows"], info["valid_rows"], info["problem_count"]) == (4, 1, 3)
    assert sorted(info["problems"]) == sorted(
        [
            f"{path}: line 4: malformed JSON: Expecting property name enclosed in double quotes (column 2)",
            f"{path}: line 2, field 'preference': expected 'A' or 'B', got 'C'",
            f"{path}: line 3, field 'response_a': empty",
        ]
    )
    assert info["problems_by_field"] == {"(unreadable)": 1, "preference": 1, "response_a": 1}
    assert info["methods"]["reward"] == "yes"
    assert info["methods"]["kto"] == "yes"


@pytest.mark.parametrize("output", ["out.jsonl", "out.parquet", "out_dir"])
def test_convert_writes_what_load_gives(ranked_file, tmp_path, output, capsys):
    target = tmp_path / output
    assert (
        main(
            [
                "convert",
                str(ranked_file),
                "--method",
                "dpo",
                "--pair-strategy",
                "best_vs_rest",
                "--output",
                str(target),
            ]
        )
        == 0
    )
    assert f"wrote 60 rows (prompt, chosen, rejected) to {target}" in capsys.readouterr().out
    expected = load(ranked_file, method="dpo", pair_strategy="best_vs_rest").to_list()
    assert load(target).to_list() == expected  # the written file reads back as pairs, row for row
    assert load(target, method="dpo").to_list() == expected


def test_convert_kto_prints_class_weights(tmp_path, capsys):
    path = ToyTask(seed=8).write_jsonl("binary", 40, tmp_path / "binary.jsonl")
    assert main(["convert", str(path), "--method", "kto", "--output", str(tmp_path / "kto.jsonl")]) == 0
    out = capsys.readouterr().out
    weights = json.loads(out.split("kto: ", 1)[1].splitlines()[0])
    assert weights["n_desirable"] + weights["n_undesirable"] == 40
    assert 1 <= weights["ratio"] <= 4 / 3
    assert load(tmp_path / "kto.jsonl").column_names == ["prompt", "response", "label"]


def test_convert_ipo_with_count_lengths(tmp_path):
    path = ToyTask(seed=9).write_jsonl("pairs", 5, tmp_path / "pairs.jsonl")
    out = tmp_path / "ipo.jsonl"
    assert main(["convert", str(path), "--method", "ipo", "--count-lengths", "chars", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["chosen_length"] == len(r["chosen"]) for r in rows)


def test_convert_bad_data_one_line_no_traceback(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"})
        + "\n"
        + json.dumps({"prompt": "p", "chosen": "c", "rejected": ""})
        + "\n"
    )
    assert main(["convert", str(path), "--method", "dpo", "--output", str(tmp_path / "o.jsonl")]) == 1
    err = capsys.readouterr().err
    assert err == f"{path}: line 2, field 'rejected': empty\n"
    assert not (tmp_path / "o.jsonl").exists()
    # dropping is explicit, and counted
    assert (
        main(["convert", str(path), "--method", "dpo", "--on-error", "drop", "--output", str(tmp_path / "o.jsonl")])
        == 0
    )
    assert "wrote 1 rows (prompt, chosen, rejected)" in capsys.readouterr().out


def test_convert_refusal(tmp_path, capsys):
    path = ToyTask(seed=1).write_jsonl("binary", 4, tmp_path / "binary.jsonl")
    assert main(["convert", str(path), "--method", "dpo", "--output", str(tmp_path / "o.jsonl")]) == 1
    assert capsys.readouterr().err.startswith(f"{path}: cannot build dpo data from the binary shape")


def test_push_to_hub_offline_fails_cleanly(ranked_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(
        [
            "convert",
            str(ranked_file),
            "--method",
            "grpo",
            "--output",
            str(tmp_path / "g.jsonl"),
            "--push-to-hub",
            "me/ranked",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("me/ranked: push to the Hub failed (") and "\n" not in err


def test_python_dash_m_subprocess(ranked_file, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    ok = subprocess.run([sys.executable, "-m", "dataset_builders", "inspect", str(ranked_file), "--json"],
                        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["shape"] == "ranked"
    bad = tmp_path / "bad.json"
    bad.write_text('[{"prompt": "p", "chosen": "c", "rejected": "r"},\n {"prompt": "p"}]')
    failed = subprocess.run([sys.executable, "-m", "dataset_builders", "convert", str(bad), "--method", "dpo", "--output", "x.jsonl"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)  # fmt: skip
    assert failed.returncode == 1
    assert failed.stderr == f"{bad}: row 2, field 'chosen': missing\n"
    assert "Traceback" not in failed.stderr


def test_unknown_field_names_get_the_columns_flag_that_reads_them(tmp_path, capsys):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "2+2?", "good_answer": "4", "bad_answer": "5"}) + "\n")
    assert main(["inspect", str(path)]) == 1
    err = capsys.readouterr().err
    assert "--columns prompt=question,chosen=good_answer,rejected=bad_answer" in err and "--shape" in err
    assert "shape=..." not in err  # the flag, not only the Python argument
    assert main(["inspect", str(path), "--columns", "prompt=question,chosen=good_answer,rejected=bad_answer"]) == 0


def test_a_mapped_field_is_named_as_the_file_names_it(tmp_path):
    from dataset_builders import DataError

    path = tmp_path / "qa.jsonl"
    rows = [{"question": "2+2?", "good_answer": "4", "bad_answer": "5"}, {"question": "3+3?", "good_answer": "6"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"line 2, field 'bad_answer' \(read as 'rejected'\): missing"):
        load(path, method="dpo", columns={"prompt": "question", "chosen": "good_answer", "rejected": "bad_answer"})
