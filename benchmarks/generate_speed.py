"""Speed of the preference-data generator (`recipes/generate.py`) on SmolLM2-135M-Instruct, on this machine's CPU.

For each precision (float32 weights, or the 4-bit NF4 base the training configs use) and batch size (prompts per
generation call, 4 answers each), the generator runs on the same shipped constraint prompts with the same seed and
prints answers/s and answer tokens/s (from the run's own .meta.json). One process, one configuration after another,
so the ratios come from one run on one machine.

    python benchmarks/generate_speed.py        # 16 prompts x 4 answers, 96 new tokens, batches 4/8/16, fp32 and nf4
    python benchmarks/generate_speed.py --prompts 8 --batches 8 --threads 2 --output speed.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=96)
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--precisions", nargs="+", default=["float32", "nf4"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--output", default=None, help="write the records as JSON here")
    args = parser.parse_args(argv)

    import torch

    from trl_ext.model_card import library_versions, source_commit
    from trl_ext.recipes import generate  # recipes/generate.py (the package trl_ext.recipes, see setup.py)

    if args.threads:
        torch.set_num_threads(args.threads)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions:
            for batch in args.batches:
                out = Path(tmp) / f"{precision}-{batch}.jsonl"
                started = time.time()
                meta = generate.main(
                    [
                        "--config", str(ROOT / "recipes/configs/generate/smollm2-ifeval-cpu.yaml"),
                        "--output_path", str(out),
                        "--max_prompts", str(args.prompts),
                        "--max_new_tokens", str(args.max_new_tokens),
                        "--prompts_per_batch", str(batch),
                        "--load_in_4bit", "true" if precision == "nf4" else "false",
                        # the measured settings (the config has since moved to other prompts, 2 answers, repairs)
                        "--dataset_path", str(ROOT / "recipes/data/hh-rlhf-ifeval-prompts.jsonl"),
                        "--num_generations", "4",
                        "--repair", "false",
                    ]
                )  # fmt: skip
                record = {
                    "precision": precision,
                    "prompts_per_batch": batch,
                    "sequences_per_call": batch * meta["settings"]["num_generations"],
                    "prompts": args.prompts,
                    "max_new_tokens": args.max_new_tokens,
                    **meta["speed"],
                    "answers": meta["counts"]["answers"],
                    "answer_tokens": meta["counts"]["answer_tokens"],
                    "generation_seconds": meta["seconds"],
                    "wall_seconds_with_load": round(time.time() - started, 1),
                    "threads": torch.get_num_threads(),
                }
                records.append(record)
                print(json.dumps(record), flush=True)
    provenance = {**source_commit(), "versions": library_versions()}
    print(json.dumps(provenance))
    print("\n| precision | prompts per call (x4 answers) | answers/s | answer tokens/s |")
    print("|---|---|---|---|")
    for r in records:
        print(
            f"| {r['precision']} | {r['prompts_per_batch']} | {r['answers_per_second']:.2f} | {r['answer_tokens_per_second']:.1f} |"
        )
    if args.output:
        Path(args.output).write_text(json.dumps({"records": records, **provenance}, indent=2) + "\n")
    return records


if __name__ == "__main__":
    main()
