"""Speed and memory of dataset_builders on a large JSONL file of each shape (a benchmark, not a timed test).

    python benchmarks/builders.py                 # 1,000,000 rows per shape
    python benchmarks/builders.py --rows 200000   # a smaller run
    python benchmarks/builders.py --extra         # also ranked -> dpo (all pairs) and pairs -> kto (TRL's unpair)

For each shape it writes a JSONL file from the known-truth toy task (`trl_ext.toy.synthetic.ToyTask`), then, in one
run and each in a fresh child process so neither sees the other's memory:

- raw:  ``pyarrow.json.read_json`` of the file (the floor: reading JSON into Arrow, nothing else);
- ours: ``dataset_builders.load(file, method=...)``: read, check every row, map to the method's columns.

It prints rows/s, the time ratio ours/raw (target: within 5x), and peak memory: the process's peak RSS and the
part of it above the RSS after imports, next to the file size (target: the increase under 2x the file size).
Each measurement is the best time of --repeat fresh processes (default 3) and the largest peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# shape -> the method README.md pairs it with
NATURAL = {
    "pairwise_ab": "reward",
    "pairs": "dpo",
    "pairs_with_lengths": "ipo",
    "binary": "kto",
    "pairs_sft_target": "orpo",
    "ranked": "grpo",
}
EXTRA = [("ranked", "dpo"), ("pairs", "kto")]


def write_shape(shape: str, rows: int, path: Path, seed: int = 0) -> Path:
    """Stream `rows` rows of `shape` to JSONL (one row in memory at a time)."""
    sys.path.insert(0, str(REPO_ROOT))
    from trl_ext.toy.synthetic import ToyTask

    task = ToyTask(seed=seed)
    rng = random.Random(f"bench-{seed}-{shape}")
    with path.open("w") as f:
        for _ in range(rows):
            f.write(json.dumps(task.row(shape, rng)) + "\n")
    return path


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(kind: str, path: str, method: str) -> None:
    """Run one measurement in this (fresh) process and print a JSON line."""
    import pyarrow as pa
    import pyarrow.json as pa_json

    if kind == "ours":
        import datasets

        import dataset_builders

        datasets.disable_progress_bars()
        if method == "kto":
            import trl.data_utils  # noqa: F401  (imported up front so the baseline includes it)
    base = _rss_mb()
    start = time.perf_counter()
    rows = pa_json.read_json(path).num_rows if kind == "raw" else dataset_builders.load(path, method=method).num_rows
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "rows": rows,
                "seconds": seconds,
                "peak_mb": peak,
                "base_mb": base,
                "arrow_pool_mb": pa.total_allocated_bytes() / 2**20,
            }
        )
    )


def measure(kind: str, path: Path, method: str, repeat: int) -> dict:
    """Best time of `repeat` fresh processes (a loaded machine adds noise, never speed); the largest peak memory."""
    runs = [_measure_once(kind, path, method) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "peak_mb": max(r["peak_mb"] for r in runs), "base_mb": min(r["base_mb"] for r in runs)}


def _measure_once(kind: str, path: Path, method: str) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "TQDM_DISABLE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
    }
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(path), method],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{kind} {path.name} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shapes", nargs="*", default=list(NATURAL), choices=list(NATURAL))
    parser.add_argument("--extra", action="store_true", help="also ranked -> dpo (all pairs) and pairs -> kto")
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per measurement; the best time is kept")
    parser.add_argument("--dir", type=Path, help="where to write the generated files (default: a temporary folder)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    directory = args.dir or Path(tempfile.mkdtemp(prefix="builders-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    cases = [(s, NATURAL[s]) for s in args.shapes] + (EXTRA if args.extra else [])
    print(f"{args.rows:,} rows per shape; best of {args.repeat} runs; files in {directory}; CPUs: {os.cpu_count()}")
    header = f"{'shape -> method':<30}{'file MB':>9}{'raw s':>8}{'ours s':>8}{'ratio':>7}{'rows/s':>12}{'rows out':>11}{'raw +MB':>8}{'peak MB':>9}{'+MB':>7}{'+/file':>8}"
    print(header)
    print("-" * len(header))
    for shape, method in cases:
        path = directory / f"{shape}.jsonl"
        if not path.exists() or sum(1 for _ in path.open()) != args.rows:
            write_shape(shape, args.rows, path)
        size_mb = path.stat().st_size / 2**20
        raw = measure("raw", path, method, args.repeat)
        ours = measure("ours", path, method, args.repeat)
        ratio = ours["seconds"] / raw["seconds"]
        increase = ours["peak_mb"] - ours["base_mb"]
        print(
            f"{shape + ' -> ' + method:<30}{size_mb:>9.1f}{raw['seconds']:>8.2f}{ours['seconds']:>8.2f}{ratio:>7.2f}"
            f"{args.rows / ours['seconds']:>12,.0f}{ours['rows']:>11,}{raw['peak_mb'] - raw['base_mb']:>8.0f}{ours['peak_mb']:>9.0f}{increase:>7.0f}{increase / size_mb:>8.2f}",
            flush=True,
        )
    print("ratio = ours / raw pyarrow.json.read_json of the same file (target <= 5);")
    print("+MB = peak RSS above the RSS after imports (raw +MB: the same for the raw read alone);")
    print("+/file = that increase over the file size (target < 2). rows/s counts input rows.")


if __name__ == "__main__":
    main()
