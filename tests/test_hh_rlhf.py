"""HH-RLHF transcripts and UltraFeedback-style scored lists: the two public formats dataset_builders imports."""

from __future__ import annotations

import gzip
import json

import pytest
from conftest import TEST_DATA

from dataset_builders import DataError, detect, load, load_with_report
from dataset_builders.importers import hh_messages

HH_FILE = TEST_DATA / "hh-rlhf-harmless-test.jsonl.gz"  # all 2,312 rows of the real harmless-base test split


@pytest.fixture(scope="module")
def hh_rows() -> list[dict]:
    with gzip.open(HH_FILE, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_hh_standard_every_row_round_trips(hh_rows):
    assert len(hh_rows) == 2312
    assert detect(HH_FILE) == "hh_rlhf"
    dataset, report = load_with_report(HH_FILE, method="dpo")
    assert (report.rows_in, report.rows_out, report.dropped) == (2312, 2312, 0)
    for row, original in zip(dataset, hh_rows, strict=True):
        assert row["prompt"] + row["chosen"] == original["chosen"]
        assert row["prompt"] + row["rejected"] == original["rejected"]
        assert row["prompt"].endswith("\n\nAssistant:")  # the prompt stops at the assistant turn where they part
        assert row["chosen"] != row["rejected"]


def test_hh_conversational_every_row_round_trips(hh_rows):
    from trl.data_utils import is_conversational

    dataset = load(HH_FILE, method="dpo", conversational=True)
    assert len(dataset) == 2312
    for row, original in zip(dataset, hh_rows, strict=True):
        assert is_conversational(row)
        assert row["prompt"] + row["chosen"] == hh_messages(original["chosen"])
        assert row["prompt"] + row["rejected"] == hh_messages(original["rejected"])
        assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"


@pytest.mark.parametrize(
    "method,rows", [("reward", 2312), ("kto", 4624), ("grpo", 2312), ("sft", 2312), ("ppo", 2312)]
)
def test_hh_serves_other_methods(method, rows):
    assert len(load(HH_FILE, method=method)) == rows


# --- the messy cases, by hand -----------------------------------------------------------------------------------


def _transcript(*turns: str) -> str:
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


@pytest.mark.parametrize(
    "chosen,rejected,prompt,chosen_part,rejected_part",
    [
        # the usual case: same conversation, the last assistant turn differs
        (_transcript("Hi", "Hello!", "Joke?", "Sure: ..."), _transcript("Hi", "Hello!", "Joke?", "No."),
         _transcript("Hi", "Hello!", "Joke?") + "\n\nAssistant:", " Sure: ...", " No."),
        # both answers start alike: the prompt still stops at the turn marker, not inside the answer
        (_transcript("Q", "Yes, I can."), _transcript("Q", "Yes, but no."),
         "\n\nHuman: Q\n\nAssistant:", " Yes, I can.", " Yes, but no."),
        # an empty final answer (real: the annotator preferred saying nothing)
        ("\n\nHuman: Address?\n\nAssistant: ", "\n\nHuman: Address?\n\nAssistant: It is ...",
         "\n\nHuman: Address?\n\nAssistant:", " ", " It is ..."),
        # an inline "Human:" inside an answer is text, not a turn
        (_transcript("Q", "A.  Human: more?"), _transcript("Q", "B."), "\n\nHuman: Q\n\nAssistant:", " A.  Human: more?", " B."),
    ],
)  # fmt: skip
def test_hh_split_by_hand(chosen, rejected, prompt, chosen_part, rejected_part):
    row = load([{"chosen": chosen, "rejected": rejected}], method="dpo")[0]
    assert row == {"prompt": prompt, "chosen": chosen_part, "rejected": rejected_part}


def test_hh_conversational_by_hand():
    chosen = _transcript("Hi", "Hello!", "Joke?", "Sure.")
    rejected = _transcript("Hi", "Hello!", "Joke?", "No.")
    row = load([{"chosen": chosen, "rejected": rejected}], method="dpo", conversational=True)[0]
    assert row == {
        "prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Joke?"}],
        "chosen": [{"role": "assistant", "content": "Sure."}],
        "rejected": [{"role": "assistant", "content": "No."}],
    }  # fmt: skip


def test_hh_identical_transcripts_are_an_error(tmp_path):
    path = tmp_path / "hh.jsonl"
    same = _transcript("Q", "A")
    path.write_text(json.dumps({"chosen": _transcript("Q", "A"), "rejected": _transcript("Q", "B")}) + "\n"
                    + json.dumps({"chosen": same, "rejected": same}) + "\n")  # fmt: skip
    with pytest.raises(
        DataError, match=rf"^{path}: line 2, field 'rejected': chosen and rejected transcripts are identical"
    ):
        load(path)


# --- UltraFeedback-style scored lists -----------------------------------------------------------------------------

ULTRAFEEDBACK = [
    {
        "source": "evol_instruct",
        "instruction": "Name a colour.",
        "models": ["m1", "m2", "m3"],
        "completions": [
            {
                "model": "m1",
                "response": "Blue.",
                "overall_score": 7.5,
                "annotations": {"helpfulness": {"Rating": "4"}},
            },
            {
                "model": "m2",
                "response": "Dunno.",
                "overall_score": 2.0,
                "annotations": {"helpfulness": {"Rating": "1"}},
            },
            {"model": "m3", "response": "Red.", "overall_score": 7.5, "annotations": {"helpfulness": {"Rating": "5"}}},
        ],
    }
]


def test_ultrafeedback_to_ranked(tmp_path):
    path = tmp_path / "uf.jsonl"
    path.write_text(json.dumps(ULTRAFEEDBACK[0]) + "\n")
    assert detect(path) == "ultrafeedback"
    # higher score, better rank; equal scores tie
    assert load(path).to_list() == [
        {"prompt": "Name a colour.", "responses": ["Blue.", "Dunno.", "Red."], "ranking": [1, 3, 1]}
    ]
    pairs = load(path, method="dpo")
    assert {(r["chosen"], r["rejected"]) for r in pairs} == {("Blue.", "Dunno."), ("Red.", "Dunno.")}


def test_ultrafeedback_score_key_and_errors():
    rows = [{"prompt": "p", "completions": [{"text": "a", "rating": 1}, {"text": "b", "rating": 3}]}]
    assert load(rows)["ranking"] == [[2, 1]]
    assert load(rows, score_key="rating")["responses"] == [["a", "b"]]
    bad = [{"prompt": "p", "completions": [{"response": "a", "overall_score": 1}, {"response": "b"}]}]
    with pytest.raises(DataError, match=r"<list>: row 1, field 'completions': completion 2: no numeric score"):
        load(bad)
    with pytest.raises(DataError, match=r"<list>: row 1, field 'responses': fewer than two responses \(1\)"):
        load([{"prompt": "p", "completions": [{"response": "a", "overall_score": 1}]}])
