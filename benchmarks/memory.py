"""Measured tensor memory of every method's QLoRA configs at the real Qwen2.5 shapes, on the CPU.

For each `qlora-24gb` / `qlora-12gb` config (online GRPO and PPO included) this runs the recipe's own trainer for
real optimizer steps with fake weights of the config's model (`memory_harness.measure_recipe`, beside this script: every decoder layer,
4-bit NF4 as configured, LoRA, gradient checkpointing, the configured optimizer, every sequence at its maximum
length, generation to max_new_tokens) and records the peak by category.

Two more sets feed the planner's test (`tests/test_plan.py`): *calibration* runs (Qwen2.5-0.5B and -1.5B shapes at
each config's settings), from which `trl_ext.plan` takes its per-method activation constants, and *held-out* runs
(the configs' models at sequence lengths no fit used) that the planner must predict within 10%.

    python benchmarks/memory.py                      # everything (~20-30 minutes on 2 cores), writes results
    python benchmarks/memory.py --configs dpo/qlora-12gb --no-write
    python benchmarks/memory.py --linearity dpo/qlora-24gb   # 1-4 decoder layers: each category linear in layers?

Writes benchmarks/results/memory.json (a list of records: config, model, peak_bytes, categories, how, where) and
prints a Markdown table (README's "Memory" section is built from it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from trl_ext.methods import PLANNED

sys.path.insert(0, str(Path(__file__).resolve().parent))  # memory_harness, beside this script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "memory.json"
GIB = 2**30

METHODS = tuple(PLANNED)  # trl_ext.methods: every recipe, GRPO online as its own entry


def config_path(name: str) -> Path:
    """``dpo/qlora-24gb`` -> recipes/configs/dpo/qlora-24gb.yaml; ``grpo-online/qlora-24gb`` -> ...-online.yaml."""
    method, size = name.split("/")
    if method == "grpo-online":
        return ROOT / "recipes" / "configs" / "grpo" / f"{size}-online.yaml"
    return ROOT / "recipes" / "configs" / method / f"{size}.yaml"


def config_names() -> list[str]:
    return [f"{method}/{size}" for size in ("qlora-24gb", "qlora-12gb") for method in METHODS]


# Calibration: two small shapes; held out: the configs' own models at other sequence lengths.
CALIBRATION_MODELS = ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-1.5B")
HELD_OUT_LENGTHS = {
    "sft/qlora-12gb": {"max_length": 1024},
    "dpo/qlora-24gb": {"max_length": 2048},
    "kto/qlora-12gb": {"max_length": 512},
    "orpo/qlora-24gb": {"max_length": 512},
    "reward/qlora-12gb": {"max_length": 2048},
    "grpo/qlora-24gb": {"max_completion_length": 256},
    "grpo-online/qlora-12gb": {"max_completion_length": 384},
    "ppo/qlora-24gb": {"max_completion_length": 128},
}


def provenance() -> dict[str, object]:
    import bitsandbytes
    import peft
    import torch
    import transformers
    import trl

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "tree_clean": git("status", "--porcelain", "--untracked-files=no") == "",
        "versions": {
            "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "peft": peft.__version__, "bitsandbytes": bitsandbytes.__version__,
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
    }  # fmt: skip


def measure(name: str, *, model: str | None = None, overrides: dict | None = None, role: str, layers=None) -> dict:
    from memory_harness import measure_recipe

    measurement = measure_recipe(config_path(name), model=model, overrides=overrides, num_layers=layers)
    record = measurement.to_dict()
    record.update(config=name, role=role, overrides=overrides or {})
    print(
        f"{role:12s} {name:24s} {record['model']:24s} L={record['num_layers']:2d} {json.dumps(overrides or {}):34s} "
        f"peak {record['peak_bytes'] / GIB:6.2f} GiB  ({record['seconds']:.0f} s)",
        flush=True,
    )
    return record


def table(records: list[dict]) -> str:
    """Markdown: one row per method, the 24 GB and 12 GB configs' measured peaks and their largest categories."""
    from trl_ext.model_shapes import CUDA_OVERHEAD_BYTES

    by_config = {r["config"]: r for r in records if r["role"] == "config"}
    lines = [
        "| method | `qlora-24gb` (7B) | `qlora-12gb` (3B; online GRPO 1.5B) | largest categories (24 GB config) |",
        "|---|---|---|---|",
    ]
    for method in METHODS:
        cells = []
        for size in ("qlora-24gb", "qlora-12gb"):
            record = by_config.get(f"{method}/{size}")
            if record is None:
                cells.append("-")
                continue
            peak = record["peak_bytes"] / GIB
            cells.append(f"{peak:.1f} (+{CUDA_OVERHEAD_BYTES / GIB:.1f} = {peak + CUDA_OVERHEAD_BYTES / GIB:.1f})")
        record = by_config.get(f"{method}/qlora-24gb")
        top = ""
        if record is not None:
            ranked = sorted(record["categories"].items(), key=lambda kv: -kv[1])[:3]
            top = ", ".join(f"{key} {value / GIB:.1f}" for key, value in ranked if value > 0)
        lines.append(f"| {method} | {cells[0]} | {cells[1]} | {top} |")
    return "\n".join(lines)


def detail_table(records: list[dict]) -> str:
    """Markdown for docs/recipes.md: every config's categories at the peak, the planner's prediction and its error,
    then the held-out lengths."""
    from trl_ext.model_shapes import CUDA_OVERHEAD_BYTES
    from trl_ext.plan import predict

    lines = [
        "| config | model | parameters | optimizer | activations | temporaries | **peak tensors** | + 1.5 allowance "
        "| planner | error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for record in records:
        if record["role"] not in ("config", "held-out"):
            continue
        c = {k: v / GIB for k, v in record["categories"].items()}
        peak = record["peak_bytes"] / GIB
        planned = predict(config_path(record["config"]), overrides=record.get("overrides")).peak_bytes / GIB
        name = record["config"] + "".join(f" {k}={v}" for k, v in (record.get("overrides") or {}).items())
        lines.append(
            f"| {name} | {record['model'].split('/')[-1]} | {c['parameters']:.2f} | {c['optimizer']:.2f} | "
            f"{c['activations']:.2f} | {c['temporaries']:.2f} | **{peak:.2f}** | "
            f"{peak + CUDA_OVERHEAD_BYTES / GIB:.1f} | {planned:.2f} | {planned / peak - 1:+.1%} |"
        )
    return "\n".join(lines)


def linearity(name: str) -> list[dict]:
    """Each category at 1, 2, 3 and 4 decoder layers, a least-squares line through them, and its residuals."""
    records = [measure(name, role="linearity", layers=layers) for layers in (1, 2, 3, 4)]
    from memory_harness import CATEGORIES

    print(f"\nlinearity of {name} in the layer count (bytes = a + b * layers):")
    for category in (*CATEGORIES, "peak"):
        ys = [r["peak_bytes"] if category == "peak" else r["categories"][category] for r in records]
        xs = [1, 2, 3, 4]
        mean_x, mean_y = sum(xs) / 4, sum(ys) / 4
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
        intercept = mean_y - slope * mean_x
        residuals = [y - (intercept + slope * x) for x, y in zip(xs, ys)]
        print(
            f"  {category:12s} a {intercept / 2**20:10.1f} MiB  b {slope / 2**20:8.2f} MiB/layer  "
            f"max |residual| {max(abs(r) for r in residuals) / 2**20:.3f} MiB"
        )
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", help="e.g. dpo/qlora-24gb grpo-online/qlora-12gb (default: all)")
    parser.add_argument("--no-calibration", action="store_true", help="skip the planner's calibration runs")
    parser.add_argument("--no-held-out", action="store_true", help="skip the planner's held-out runs")
    parser.add_argument("--linearity", nargs="*", default=None, help="configs to measure at 1-4 decoder layers")
    parser.add_argument("--no-write", action="store_true", help="print only; leave memory.json as it is")
    parser.add_argument("--roles", default="config,calibration,held-out", help="which sets to measure")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"where to write (default {RESULTS.name})")
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        help="join these outputs into --output (a later file's record replaces an earlier one's)",
    )
    parser.add_argument("--tables", action="store_true", help="print README's and docs' tables from --output")
    parser.add_argument("--num_layers", type=int, help="fewer decoder layers (a quick check; not for the results)")
    args = parser.parse_args(argv)
    if args.tables:
        records = json.loads(args.output.read_text())
        print(table(records) + "\n\n" + detail_table(records))
        return 0
    if args.merge:  # two processes on two cores, then one file; a later file's record replaces an earlier one's
        merged: dict[tuple, dict] = {}
        for part in args.merge:
            for record in json.loads(part.read_text()):
                key = (record["role"], record["config"], record["model"], json.dumps(record.get("overrides") or {}))
                merged[key] = record
        records = list(merged.values())
        args.output.write_text(json.dumps(records, indent=1) + "\n")
        print(table(records))
        print(f"wrote {len(records)} records to {args.output}")
        return 0
    roles = set(args.roles.split(","))
    os.environ.setdefault("TQDM_DISABLE", "1")
    started = time.time()
    run = provenance()
    names = args.configs or config_names()
    records: list[dict] = []
    if args.linearity is not None:
        for name in args.linearity or ["dpo/qlora-24gb"]:
            records += linearity(name)
    for name in names if "config" in roles else []:
        records.append(measure(name, role="config", layers=args.num_layers))
    if not args.no_calibration and "calibration" in roles:
        for name in names:
            for model in CALIBRATION_MODELS:
                records.append(measure(name, model=model, role="calibration"))
    if not args.no_held_out and "held-out" in roles:
        for name, overrides in HELD_OUT_LENGTHS.items():
            if name in names:
                records.append(measure(name, overrides=overrides, role="held-out"))
    for record in records:
        record.update(run)
    print()
    print(table(records))
    print(
        f"\n{len(records)} measurements in {time.time() - started:.0f} s at {run['commit']} (clean: {run['tree_clean']})"
    )
    if not args.no_write:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(records, indent=1) + "\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
