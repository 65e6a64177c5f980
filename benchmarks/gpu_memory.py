"""The same configs as benchmarks/memory.py, measured on a CUDA GPU: peak `torch.cuda.max_memory_allocated` (and
reserved) and tokens per second, with real random weights of each config's model. One command, every config in
about 8 minutes on one large GPU:

    python benchmarks/gpu_memory.py                      # all QLoRA configs; writes benchmarks/results/gpu_memory.json
    python benchmarks/gpu_memory.py --configs dpo/qlora-24gb --budget 120
    python benchmarks/gpu_memory.py --device cpu --model Qwen/Qwen2.5-0.5B --num_layers 1 --configs dpo/qlora-12gb
                                                         # the same path on the CPU (timing only), as a check

Needs no Hub access: models are built from their published shapes (`trl_ext.model_shapes`) and the data is
synthetic (every sequence at the config's maximum length). Prints, per config, the GPU peak beside the CPU
measurement of benchmarks/results/memory.json (tensor memory, fake weights) and the planner's prediction.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import GIB, ROOT, config_names, config_path, provenance  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "gpu_memory.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", help="default: every qlora-24gb and qlora-12gb config")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--model", help="another model's shapes for every config (a check on small hardware)")
    parser.add_argument("--num_layers", type=int, help="fewer decoder layers (a check)")
    parser.add_argument("--budget", type=float, default=480, help="seconds; configs left when it is spent are skipped")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import torch
    from memory_harness import measure_recipe

    from trl_ext.plan import predict

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_memory.py: no CUDA device (use --device cpu for the CPU check)", file=sys.stderr)
        return 2
    cpu = {}
    if (ROOT / "benchmarks" / "results" / "memory.json").exists():
        for record in json.loads((ROOT / "benchmarks" / "results" / "memory.json").read_text()):
            if record.get("role") == "config":
                cpu[record["config"]] = record["peak_bytes"]
    started, records = time.time(), []
    run = provenance()
    print(f"{'config':24s} {'GPU peak':>9s} {'reserved':>9s} {'CPU count':>9s} {'planned':>9s} {'tokens/s':>9s}")
    for name in args.configs or config_names():
        if time.time() - started > args.budget:
            print(f"{name:24s} skipped: the {args.budget:.0f} s budget is spent")
            continue
        try:
            measured = measure_recipe(config_path(name), model=args.model, num_layers=args.num_layers,
                                      device=args.device)  # fmt: skip
        except Exception as error:  # noqa: BLE001 - one config's failure is reported, the others still run
            print(f"{name:24s} failed: {type(error).__name__}: {str(error)[:200]}")
            records.append({"config": name, "error": f"{type(error).__name__}: {error}"})
            if args.device == "cuda":
                torch.cuda.empty_cache()
            continue
        record = measured.to_dict()
        record.update(config=name, role="gpu", **run)
        tokens = _tokens(name, measured)
        seconds = measured.extra.get("train_seconds") or float("nan")
        record["tokens_per_second"] = tokens / seconds
        planned = predict(config_path(name), model=args.model).peak_bytes if args.num_layers is None else None
        records.append(record)
        reserved = measured.extra.get("reserved_bytes", 0)
        print(
            f"{name:24s} {record['peak_bytes'] / GIB:9.2f} {reserved / GIB:9.2f} "
            f"{cpu.get(name, float('nan')) / GIB:9.2f} {(planned or float('nan')) / GIB:9.2f} "
            f"{record['tokens_per_second']:9.0f}",
            flush=True,
        )
        if args.device == "cuda":
            torch.cuda.empty_cache()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(records, indent=1) + "\n")
    print(f"{len(records)} configs in {time.time() - started:.0f} s; wrote {args.output}")
    return 0


def _tokens(name: str, measured) -> float:
    """Tokens the measured steps trained on (sequences x length x steps; rollouts: the micro-batches of one step)."""
    from trl_ext.plan import Run

    run = Run.of(measured.method, measured.settings)
    steps = 1 if measured.method in ("ppo", "grpo-online") else 2
    micro_steps = run.gradient_accumulation if measured.method in ("ppo", "grpo-online") else 1
    return float(run.train_tokens() * steps * micro_steps)


if __name__ == "__main__":
    sys.exit(main())
