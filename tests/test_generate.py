"""The on-policy preference-data generator (`trl_ext.preference_data`, `recipes/generate.py`): shaping by hand, then
the tiny model end to end: every shape loads for the methods it serves, a seed fixes the file, a resumed run writes the
file an uninterrupted one does, the sidecar records what made it."""

import json

import pytest
from _recipe_utils import REPO_ROOT, load_recipe

import dataset_builders
from trl_ext import preference_data
from trl_ext.preference_data import competition_ranks, shape_rows

BASE = {"prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
ANSWERS, SCORES, LENGTHS = ["a", "b", "c", "d"], [0.5, 1.0, 0.5, 0.0], [3, 5, 7, 9]


def test_competition_ranks_share_a_rank_for_equal_scores():
    assert competition_ranks(SCORES) == [2, 1, 2, 4]
    assert competition_ranks([1.0, 1.0]) == [1, 1]


def test_shape_rows_by_hand():
    pairs = shape_rows("pairs", BASE, ANSWERS, SCORES, LENGTHS)
    assert pairs == [{**BASE, "chosen": "b", "rejected": "d", "chosen_score": 1.0, "rejected_score": 0.0}]
    with_lengths = shape_rows("pairs_with_lengths", BASE, ANSWERS, SCORES, LENGTHS)[0]
    assert (with_lengths["chosen_length"], with_lengths["rejected_length"]) == (5, 9)
    assert shape_rows("pairs_sft_target", BASE, ANSWERS, SCORES, LENGTHS)[0]["sft_target"] == "chosen"
    ranked = shape_rows("ranked", BASE, ANSWERS, SCORES, LENGTHS)
    assert ranked == [{**BASE, "responses": ANSWERS, "ranking": [2, 1, 2, 4], "scores": SCORES}]
    binary = shape_rows("binary", BASE, ANSWERS, SCORES, LENGTHS)
    assert [(r["response"], r["label"]) for r in binary] == [("b", "good"), ("d", "bad")]
    labelled = shape_rows("binary", BASE, ANSWERS, SCORES, LENGTHS, binary_threshold=0.5)
    assert [r["label"] for r in labelled] == ["good", "good", "good", "bad"]


def test_a_cut_answer_ranks_below_every_finished_one():
    finished = [True, False, True, True]  # "b" has the best reward but never ended
    pairs = shape_rows("pairs", BASE, ANSWERS, SCORES, LENGTHS, finished=finished)[0]
    assert (pairs["chosen"], pairs["rejected"], pairs["chosen_score"]) == ("a", "b", 0.5)
    ranked = shape_rows("ranked", BASE, ANSWERS, SCORES, LENGTHS, finished=finished)[0]
    assert ranked["ranking"] == [1, 4, 1, 3] and ranked["scores"] == SCORES
    labelled = shape_rows("binary", BASE, ANSWERS, SCORES, LENGTHS, binary_threshold=0.5, finished=finished)
    assert [r["label"] for r in labelled] == ["good", "bad", "good", "bad"]
    # two finished answers that tie, and a cut one: the finished ones still beat it
    assert shape_rows("pairs", BASE, ["x", "y", "z"], [0.0, 0.0, 1.0], [1, 1, 1], finished=[True, True, False])


def test_all_tied_answers_give_no_row():
    for shape in preference_data.SHAPES:
        assert shape_rows(shape, BASE, ["a", "b"], [0.5, 0.5], [1, 1]) == [], shape
        assert shape_rows(shape, BASE, ["a"], [1.0], [1]) == [], shape  # one finished answer: no preference


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="shape must be one of"):
        preference_data.GenerateArguments(shape="triples")
    with pytest.raises(ValueError, match="at least 2"):
        preference_data.GenerateArguments(num_generations=1)
    with pytest.raises(ValueError, match="binary only"):
        preference_data.GenerateArguments(shape="pairs", binary_threshold=0.5)


# --- the tiny model, end to end -------------------------------------------------------------------------------
CONFIG = REPO_ROOT / "recipes" / "configs" / "generate" / "tiny-cpu.yaml"
METHODS_OF = {
    "pairs": ("dpo", "reward", "kto", "orpo", "grpo", "sft"),
    "pairs_with_lengths": ("ipo", "dpo"),
    "pairs_sft_target": ("orpo",),
    "ranked": ("grpo", "dpo", "kto"),
    "binary": ("kto", "sft"),
}


def run(tmp_path, name="out.jsonl", *flags):
    out = tmp_path / name
    load_recipe("generate").main(["--config", str(CONFIG), "--output_path", str(out), "--max_prompts", "16",
                                  "--prompts_per_batch", "4", *flags])  # fmt: skip
    return out


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch, tiny_model_path):
    monkeypatch.chdir(REPO_ROOT)


@pytest.mark.parametrize("shape", list(METHODS_OF))
def test_each_shape_loads_for_the_methods_it_serves(tmp_path, shape):
    out = run(tmp_path, f"{shape}.jsonl", "--shape", shape)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows, "the tiny model's answers should differ in score on some prompts"
    assert dataset_builders.detect(out) == shape
    assert all(r["instruction_id_list"] and len(r["kwargs"]) == len(r["instruction_id_list"]) for r in rows)
    for method in METHODS_OF[shape]:
        options = {"count_lengths": "chars"} if method == "ipo" and shape != "pairs_with_lengths" else {}
        assert len(dataset_builders.load(out, method=method, **options)) > 0, method
    meta = json.loads((tmp_path / f"{shape}.jsonl.meta.json").read_text())
    assert meta["finished"] and meta["counts"]["rows"] == len(rows)
    assert meta["counts"]["answers"] == 16 * 4
    assert sum(meta["counts"]["skipped"].values()) + (len(rows) if shape not in ("binary",) else len(rows) // 2) == 16


def test_seeded_run_is_deterministic_and_the_sidecar_records_it(tmp_path):
    first, second = run(tmp_path, "a.jsonl"), run(tmp_path, "b.jsonl")
    assert first.read_bytes() == second.read_bytes()
    assert run(tmp_path, "c.jsonl", "--seed", "1").read_bytes() != first.read_bytes()
    meta = json.loads((tmp_path / "a.jsonl.meta.json").read_text())
    settings = meta["settings"]
    assert settings["model_name_or_path"] == "trl-ext/tiny-llama" and settings["reward_functions"] == [
        "instruction_following"
    ]
    assert settings["sampling"] == {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0}
    assert settings["seed"] == 0 and settings["num_generations"] == 4 and settings["shape"] == "pairs"
    assert "commit" in meta and "tree_clean" in meta and meta["versions"]["trl"]
    assert meta["speed"]["answers_per_second"] > 0 and "generate.py" in meta["command"]


def test_an_interrupted_run_resumes_to_the_uninterrupted_file(tmp_path, monkeypatch):
    reference = run(tmp_path, "reference.jsonl")
    calls = []
    score = preference_data.Scorer.__call__

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # two batches of 4 prompts written, then the process dies
            raise KeyboardInterrupt
        return score(self, *args, **kwargs)

    monkeypatch.setattr(preference_data.Scorer, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "resumed.jsonl")
    meta = json.loads((tmp_path / "resumed.jsonl.meta.json").read_text())
    assert meta["progress"]["prompts_done"] == 8 and not meta["finished"]
    with (tmp_path / "resumed.jsonl").open("a") as f:  # a half-written row after the last recorded batch
        f.write('{"prompt": "half')
    monkeypatch.setattr(preference_data.Scorer, "__call__", score)
    resumed = run(tmp_path, "resumed.jsonl")
    assert resumed.read_bytes() == reference.read_bytes()
    assert (
        json.loads((tmp_path / "resumed.jsonl.meta.json").read_text())["counts"]
        == json.loads((tmp_path / "reference.jsonl.meta.json").read_text())["counts"]
    )


def test_other_settings_on_an_existing_file_are_refused_in_one_line(tmp_path, capsys):
    run(tmp_path, "out.jsonl")
    capsys.readouterr()  # the first run's progress bar
    generate = load_recipe("generate")
    argv = ["--config", str(CONFIG), "--output_path", str(tmp_path / "out.jsonl"), "--max_prompts", "16",
            "--prompts_per_batch", "4", "--temperature", "0.7"]  # fmt: skip
    assert generate.run(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "temperature 1.0 -> 0.7" in error and "--overwrite true" in error
    generate.main([*argv, "--overwrite", "true"])  # starting again is explicit


def test_prompts_without_constraints_fail_before_a_model_loads(tmp_path, monkeypatch, capsys):
    from trl_ext import models

    monkeypatch.setattr(models, "load_policy", lambda *a, **k: pytest.fail("the model was loaded"))
    argv = ["--config", str(CONFIG), "--output_path", str(tmp_path / "o.jsonl"),
            "--dataset_path", "recipes/data/prompts.jsonl"]  # fmt: skip
    assert load_recipe("generate").run(argv) == 2
    assert "needs prompts with constraints" in capsys.readouterr().err


def test_inspect_shows_the_generated_shape_and_its_constraints(tmp_path):
    from dataset_builders.__main__ import main as data_main

    out = run(tmp_path, "ranked.jsonl", "--shape", "ranked")
    info = dataset_builders.inspect(out)
    assert info["shape"] == "ranked" and info["constraints"]["rows_with_constraints"] == info["valid_rows"]
    assert info["unused_fields"] == ["scores"]  # reported: the loaders say what a mapping leaves out
    assert data_main(["inspect", str(out)]) in (0, None)
