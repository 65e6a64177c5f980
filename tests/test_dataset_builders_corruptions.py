"""Silent corruptions and crashes on data as people have it (issue: data layouts), each fixed with a test that fails
on the old code: a prompt repeated inside conversational answers, a dropped `system` column, a JSONL file starting
with `null` (a pyarrow segfault), escaped astral characters in JSON with comments."""

import json
import subprocess
import sys
import textwrap

import pytest

import dataset_builders
from dataset_builders import DataError

Q = "What is 2+2?"
USER, FOUR, FIVE = (
    {"role": "user", "content": Q},
    {"role": "assistant", "content": "4"},
    {"role": "assistant", "content": "5"},
)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ultrafeedback_binarized_layout_does_not_double_the_user_turn(tmp_path):
    """HuggingFaceH4/ultrafeedback_binarized (Zephyr, the alignment-handbook) and axolotl's chatml.ultra: a string
    prompt and full conversations. prompt + chosen must be the conversation once."""
    row = {"prompt": Q, "chosen": [USER, FOUR], "rejected": [USER, FIVE], "prompt_id": "x1", "score_chosen": 8.0}
    ds = dataset_builders.load(write_jsonl(tmp_path / "ufb.jsonl", [row]), method="dpo")
    assert ds[0]["prompt"] == [USER] and ds[0]["chosen"] == [FOUR] and ds[0]["rejected"] == [FIVE]
    assert ds[0]["prompt"] + ds[0]["chosen"] == row["chosen"]  # the source conversation, exactly


def test_a_message_prompt_repeated_at_the_head_of_the_answers_is_taken_off_them(tmp_path):
    row = {"prompt": [USER], "chosen": [USER, FOUR], "rejected": [USER, FIVE]}
    ds = dataset_builders.load(write_jsonl(tmp_path / "p.jsonl", [row]), method="dpo")
    assert ds[0]["prompt"] + ds[0]["chosen"] == [USER, FOUR] and ds[0]["rejected"] == [FIVE]


def test_a_string_prompt_that_disagrees_with_the_conversations_is_refused(tmp_path):
    row = {"prompt": "Another question", "chosen": [USER, FOUR], "rejected": [USER, FIVE]}
    with pytest.raises(DataError, match=r"line 1, field 'prompt': .*two questions"):
        dataset_builders.load(write_jsonl(tmp_path / "p.jsonl", [row]), method="dpo")


def test_a_system_column_heads_the_prompt_as_a_system_message(tmp_path):
    rows = [{"system": "You are terse.", "prompt": "Hi", "chosen": "Hello", "rejected": "Go away"},
            {"system": "", "prompt": "Yo", "chosen": "Hey", "rejected": "No"}]  # fmt: skip
    ds = dataset_builders.load(write_jsonl(tmp_path / "s.jsonl", rows), method="dpo")
    assert ds[0]["prompt"] == [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]
    assert ds[1]["prompt"] == [{"role": "user", "content": "Yo"}]  # no system value: none invented
    assert "system" not in ds.column_names  # its content is in the prompt


@pytest.mark.parametrize("text", ["null\n", '\n\nnull\n{"prompt": "a"}\n', "[1, 2]\n", '"text"\n'])
def test_a_jsonl_file_that_does_not_start_with_an_object_is_one_line_not_a_crash(tmp_path, text):
    path = tmp_path / "x.jsonl"
    path.write_text(text)
    code = f"import dataset_builders\ntry:\n    dataset_builders.load({str(path)!r}, method='dpo')\nexcept dataset_builders.DataError as e:\n    print('DataError:', e)\n"  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"the process died (status {done.returncode}): {done.stderr[-500:]}"
    assert done.stdout.startswith(f"DataError: {path}: line ") and "expected a JSON object" in done.stdout


def test_pyarrow_json_reader_segfault_reproduction(tmp_path):
    """Minimal reproduction, ready to report upstream: pyarrow's JSON reader kills the process on a file whose first
    line is `null`. If this starts failing, pyarrow fixed it and `_starts_with_an_object` can go."""
    import pyarrow

    path = tmp_path / "x.jsonl"
    path.write_text("null\n")
    code = textwrap.dedent(f"""
        import pyarrow.json as j
        j.read_json({str(path)!r})
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode < 0, (
        f"pyarrow {pyarrow.__version__} no longer crashes: {done.returncode} {done.stderr[-300:]}"
    )


def test_escaped_astral_characters_in_json_with_comments(tmp_path):
    """Python's json.dumps writes an emoji as two escapes; json5 decodes them one half at a time."""
    path = tmp_path / "e.jsonc"
    path.write_text('// pasted\n{"prompt": "hi \\ud83d\\ude00", "chosen": "a", "rejected": "b"}\n')
    assert dataset_builders.load(path, method="dpo")[0]["prompt"] == "hi \U0001f600"
    path.write_text('// pasted\n{"prompt": "hi \\ud83d", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(DataError, match=r"row 1, field 'prompt': .*lone UTF-16 surrogate"):
        dataset_builders.load(path, method="dpo")
