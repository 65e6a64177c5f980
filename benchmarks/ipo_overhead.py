"""Step time of `LengthAwareIPOTrainer` vs TRL's IPO (`DPOTrainer(loss_type=["ipo"])`), same tiny model, same data.

    python benchmarks/ipo_overhead.py                 # CPU (or the GPU if one is visible), about a minute
    python benchmarks/ipo_overhead.py --steps 400 --ld_alpha 0.5 --json out.json

Both trainers are built in one process on the embedded tiny model and the same length-confounded pairs
(`ToyTask(gamma=1.5).rows("pairs_with_lengths")`); the length-aware one runs with declared lengths and
`length_penalty="auto"`, so every addition is on its path (the length columns through collation, the recording
hooks, the recomputed loss and its metrics). A step is: next batch from the trainer's own dataloader (collation
included) -> `training_step` (forward passes, loss, backward) -> optimizer step. The two trainers alternate step by
step, so a change in machine load hits both alike; the result is the ratio of median step times. Target: <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from trl_ext.embedded import offline_environment  # stdlib only: before transformers is imported

offline_environment()

TARGET = 1.05


def build(kind: str, model_path: str, dataset, args):
    from trl import DPOConfig, DPOTrainer

    from trl_ext import LengthAwareIPOConfig, LengthAwareIPOTrainer

    common = dict(
        output_dir=f"/tmp/ipo_overhead/{kind}",
        beta=0.5,
        per_device_train_batch_size=args.batch_size,
        gradient_checkpointing=False,
        use_cpu=args.device == "cpu",
        bf16=False,
        report_to=[],
        save_strategy="no",
        learning_rate=1e-4,
        ld_alpha=args.ld_alpha,
        dataloader_num_workers=0,
        seed=0,
    )
    if kind == "trl":
        trainer = DPOTrainer(model_path, args=DPOConfig(loss_type=["ipo"], **common), train_dataset=dataset)
    else:
        config = LengthAwareIPOConfig(length_penalty="auto", length_source="declared", **common)
        trainer = LengthAwareIPOTrainer(model_path, args=config, train_dataset=dataset)
    trainer.create_optimizer_and_scheduler(num_training_steps=args.warmup + args.steps)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's own loop, which this one stands in for
    trainer.model.train()
    return trainer


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per trainer")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per trainer first")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--ld_alpha", type=float, default=None)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    import torch
    from datasets import Dataset

    from trl_ext.toy.synthetic import ToyTask
    from trl_ext.toy.tiny import tiny_model_path

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    dataset = Dataset.from_list(ToyTask(gamma=1.5, seed=0).rows("pairs_with_lengths", args.rows))
    model_path = str(tiny_model_path())
    trainers = {kind: build(kind, model_path, dataset, args) for kind in ("trl", "length_aware")}
    loaders = {kind: iter(_forever(t)) for kind, t in trainers.items()}
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    times: dict[str, list[float]] = {kind: [] for kind in trainers}
    for step in range(args.warmup + args.steps):
        # alternate which trainer goes first, so neither always runs right after the other's allocations
        order = list(trainers) if step % 2 == 0 else list(reversed(trainers))
        for kind in order:
            trainer = trainers[kind]
            sync()
            start = time.perf_counter()
            inputs = next(loaders[kind])
            trainer.training_step(trainer.model, inputs)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            sync()
            if step >= args.warmup:
                times[kind].append(time.perf_counter() - start)
            trainer._metrics["train"].clear()  # `log` would clear them; nothing logs here

    median = {kind: statistics.median(t) for kind, t in times.items()}
    ratio = median["length_aware"] / median["trl"]
    result = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "steps": args.steps,
        "batch_size": args.batch_size,
        "ld_alpha": args.ld_alpha,
        "median_step_ms": {kind: round(1000 * m, 3) for kind, m in median.items()},
        "quartiles_ms": {
            kind: [round(1000 * q, 3) for q in statistics.quantiles(t, n=4)[::2]] for kind, t in times.items()
        },
        "ratio": round(ratio, 4),
        "target": TARGET,
        "within_target": ratio <= TARGET,
    }
    print(
        f"{result['device']}, batch {args.batch_size}, {args.steps} steps each (after {args.warmup} warm-up), "
        f"ld_alpha={args.ld_alpha}\n"
        f"  TRL IPO (DPOTrainer, loss_type=['ipo']): median {result['median_step_ms']['trl']:.2f} ms/step\n"
        f"  LengthAwareIPOTrainer (declared, auto):  median {result['median_step_ms']['length_aware']:.2f} ms/step\n"
        f"  ratio {ratio:.3f} (target <= {TARGET}): {'OK' if ratio <= TARGET else 'ABOVE TARGET'}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


def _forever(trainer):
    while True:
        yield from trainer.get_train_dataloader()


if __name__ == "__main__":
    main()
    sys.exit(0)
