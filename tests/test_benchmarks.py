"""The benchmark scripts run, at toy sizes, and report figures that add up (their real numbers are in the docs).

No timing is asserted: speed is measured by running the scripts, not by tests.
"""

import importlib.util
import json
import re
import subprocess
import sys

import pytest
from _recipe_utils import REPO_ROOT

BENCHMARKS = REPO_ROOT / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_ipo_overhead_reports_the_ratio_of_the_medians(tmp_path, monkeypatch):
    # A fake clock: each trainer's step takes exactly the time given below, whatever the machine does, so the
    # reported medians and ratio are known in advance.
    module = _load("ipo_overhead")
    clock = {"now": 0.0}
    step_seconds = {"trl": [0.010, 0.030, 0.010, 0.011, 0.500], "length_aware": [0.013, 0.012, 0.014, 0.900, 0.013]}
    build = module.build

    def timed_build(kind, *args):
        trainer = build(kind, *args)
        real_step, durations = trainer.training_step, iter(step_seconds[kind])

        def training_step(*a, **k):
            out = real_step(*a, **k)
            clock["now"] += next(durations)
            return out

        trainer.training_step = training_step
        return trainer

    monkeypatch.setattr(module, "build", timed_build)
    monkeypatch.setattr(module.time, "perf_counter", lambda: clock["now"])
    out = tmp_path / "ipo.json"
    result = module.main(["--steps", "4", "--warmup", "1", "--rows", "32", "--json", str(out)])
    # warm-up step (the first duration) untimed; medians of [0.030, 0.010, 0.011, 0.500] and [0.012, 0.014, 0.900,
    # 0.013]: 20.5 ms and 13.5 ms
    assert result["median_step_ms"] == {"trl": 20.5, "length_aware": 13.5}
    assert result["ratio"] == pytest.approx(13.5 / 20.5, abs=1e-4)
    assert result["target"] == 1.05 and result["within_target"] is True
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))


def test_grpo_offline_online_counts_the_same_samples_per_step(tmp_path):
    out = tmp_path / "grpo.json"
    result = _load("grpo_offline_online").main(["--steps", "2", "--warmup", "1", "--groups", "2", "--json", str(out)])
    offline, online = result["offline"], result["online"]
    assert offline["samples_per_step"] == online["samples_per_step"] == 2 * 4  # groups x 4 responses = prompts x 4
    assert offline["steps_timed"] == online["steps_timed"] == 2
    ratio = offline["samples_per_s"] / online["samples_per_s"]
    assert result["ratio_offline_over_online"] == pytest.approx(ratio, abs=0.01)
    assert 0 < online["mean_completion_tokens"] <= 24  # --max_completion_length
    assert result["reward_model_training_s"] > 0


def test_builders_benchmark_converts_every_row(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "builders.py"),
            "--rows",
            "500",
            "--repeat",
            "1",
            "--shapes",
            "pairs",
            "ranked",
        ]
        + ["--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {
        m.group(1): m.groups()[1:]
        for m in re.finditer(
            r"^(\w+) -> \w+\s+[\d.]+\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+[\d,]+\s+([\d,]+)", done.stdout, re.M
        )
    }
    assert set(rows) == {"pairs", "ranked"}, done.stdout
    for _raw_s, _ours_s, ratio, rows_out in rows.values():
        assert rows_out == "500"  # one output row per input row for these mappings, nothing dropped
        assert float(ratio) > 0


def test_ranked_lists_runs_every_way_and_sharing_changes_the_cost_not_the_result(tmp_path, capsys):
    module = _load("ranked_lists")
    result = module.main(["--quick", "--rows", "8", "--test-rows", "4", "--groups", "4", "--workdir", str(tmp_path),
                          "--methods", "dpo_all_pairs", "plackett_luce", "--json", str(tmp_path / "r.json")])  # fmt: skip
    records = {(r["method"], r["prefix_sharing"]): r for r in result["records"]}
    assert sorted(records) == [("dpo_all_pairs", False), ("dpo_all_pairs", True),
                               ("plackett_luce", False), ("plackett_luce", True)]  # fmt: skip
    for method in ("dpo_all_pairs", "plackett_luce"):
        shared, unshared = records[(method, True)], records[(method, False)]
        # the same loss, so the same training: the held-out figures agree; only the work differs
        assert shared["kendall_tau"] == pytest.approx(unshared["kendall_tau"], abs=1e-6)
        assert shared["optimizer_steps"] == unshared["optimizer_steps"] == 2
        assert 0 < shared["token_forwards"] < unshared["token_forwards"]
    # 8 groups of 4: all-pairs DPO runs 6 pairs (12 sequences) per group, listwise 4 sequences
    assert (
        records[("dpo_all_pairs", False)]["token_forwards"] > 2.5 * records[("plackett_luce", False)]["token_forwards"]
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(
        r"listwise\+prefix vs all-pairs DPO: speedup \d+\.\d\d x, Kendall tau -?\d\.\d{3} vs -?\d\.\d{3}", last
    )
    assert json.loads((tmp_path / "r.json").read_text())["meta"]["prompt_ratio"]["long"] >= 4


def test_memory_benchmark_records_a_config_with_its_provenance(tmp_path, capsys):
    """benchmarks/memory.py on one config at one decoder layer: a record with the categories, how and where it was
    measured, the commit; the README table row for its method."""
    memory = _load("memory")
    output = tmp_path / "memory.json"
    assert memory.main(["--configs", "dpo/qlora-12gb", "--roles", "config", "--num_layers", "1", "--output",
                        str(output)]) == 0  # fmt: skip
    (record,) = json.loads(output.read_text())
    assert record["config"] == "dpo/qlora-12gb" and record["num_layers"] == 1 and record["role"] == "config"
    assert record["peak_bytes"] == sum(record["categories"].values()) > 2**30  # the 3B model's fp32 embeddings
    assert record["commit"] and "versions" in record and "MemTracker" in record["how"]
    assert "| dpo | - | " in capsys.readouterr().out  # the 24 GB column is empty, the 12 GB one filled


@pytest.mark.slow
def test_gpu_memory_benchmark_runs_its_real_weight_path_on_the_cpu(tmp_path, capsys):
    """benchmarks/gpu_memory.py's path with real random 4-bit weights (bitsandbytes' Params4bit, as transformers
    quantizes), here on the CPU at one layer of Qwen2.5-0.5B: it trains and reports a rate (a GPU run adds the peak)."""
    gpu_memory = _load("gpu_memory")
    output = tmp_path / "gpu.json"
    assert gpu_memory.main(["--device", "cpu", "--model", "Qwen/Qwen2.5-0.5B", "--num_layers", "1", "--configs",
                            "dpo/qlora-12gb", "--output", str(output)]) == 0  # fmt: skip
    (record,) = json.loads(output.read_text())
    assert "error" not in record and record["tokens_per_second"] > 0
    assert record["extra"]["train_seconds"] > 0 and record["how"].startswith("the recipe's own trainer on the device")


def test_instruction_following_results_carry_every_field_and_add_up():
    module = _load("instruction_following")
    paths = sorted((BENCHMARKS / "results").glob("instruction_following-*.json"))
    assert paths, "benchmarks/results/instruction_following-quick.json is shipped"
    for path in paths:
        rows = json.loads(path.read_text())
        assert isinstance(rows, list) and rows, path
        for row in rows:
            assert not [f for f in module.FIELDS if f not in row], (path, row.get("method"))
            assert row["method"] in module.METHOD_BY_KEY
            for key in ("base_strict", "trained_strict", "base_instruction", "trained_instruction"):
                assert 0.0 <= row[key] <= 1.0, key
            assert row["gain"] == pytest.approx(row["trained_strict"] - row["base_strict"])
            assert row["paired_se"] > 0 and row["held_out_prompts"] >= 100 and row["train_seconds"] > 0
            assert isinstance(row["commit"], str) and isinstance(row["tree_clean"], bool)
        assert len({r["commit"] for r in rows}) == 1, "every part of a results file comes from one commit"


def test_instruction_following_table_has_one_line_per_method():
    module = _load("instruction_following")
    row = dict.fromkeys(module.FIELDS, 0.5) | {"method": "dpo", "seed": 0, "held_out_prompts": 128, "gain": 0.25}
    meta = {"machine": "2 CPU cores", "git": {"commit": "abc", "clean": True}, "versions": {"trl": "1.16.0"},
            "command": "python benchmarks/instruction_following.py --quick", "wall_s": 600}  # fmt: skip
    table = module.markdown([row, dict(row, seed=1, gain=0.35)], meta)
    lines = [line for line in table.splitlines() if line.startswith("| dpo |")]
    assert len(lines) == 1 and "| 2 |" in lines[0] and "+0.300 +- 0.500" in lines[0]
    assert "`abc` (tree clean)" in table and "128 held-out prompts" in table


def test_instruction_following_reuse_reads_the_training_time_from_the_card(tmp_path):
    module = _load("instruction_following")
    (tmp_path / "README.md").write_text(
        "| metric | value |\n|---|---|\n| train_loss | 0.4 |\n| train_runtime | 2248.22 |\n"
    )
    assert module.trained_seconds(tmp_path) == 2248.22
    with pytest.raises(SystemExit, match="no trained adapter"):
        module.trained_seconds(tmp_path / "missing")
