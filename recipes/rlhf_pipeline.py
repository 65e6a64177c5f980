"""Classic RLHF in one command: SFT -> reward model -> PPO, from one file of A/B preferences (`pairwise_ab`).

    # offline, CPU, a few minutes (the embedded tiny model and recipes/data/pairwise_ab.jsonl):
    python recipes/rlhf_pipeline.py
    # one 24 GB GPU (QLoRA configs of the three stages):
    python recipes/rlhf_pipeline.py --size qlora-24gb --dataset_path my_ab.jsonl \
        --model_name_or_path Qwen/Qwen2.5-7B-Instruct --output_dir outputs/rlhf-7b

The same as these three commands on the tiny default (each stage is its own recipe and config,
`recipes/configs/<stage>/<size>.yaml`; the flags after the first line of each are `TINY_STAGE_FLAGS`):

    accelerate launch recipes/sft.py --config recipes/configs/sft/tiny-cpu.yaml \
        --dataset_path recipes/data/pairwise_ab.jsonl --output_dir outputs/rlhf-tiny-cpu/sft --merge_adapter true \
        --use_peft false --learning_rate 2e-3 --num_train_epochs 8 --eval_fraction 0
    accelerate launch recipes/reward.py --config recipes/configs/reward/tiny-cpu.yaml \
        --dataset_path recipes/data/pairwise_ab.jsonl --output_dir outputs/rlhf-tiny-cpu/reward \
        --model_name_or_path outputs/rlhf-tiny-cpu/sft --merge_adapter true \
        --learning_rate 2e-3 --num_train_epochs 3 --eval_fraction 0
    accelerate launch recipes/ppo.py --config recipes/configs/ppo/tiny-cpu.yaml \
        --dataset_path recipes/data/pairwise_ab.jsonl --output_dir outputs/rlhf-tiny-cpu/ppo \
        --model_name_or_path outputs/rlhf-tiny-cpu/sft --reward_model_path outputs/rlhf-tiny-cpu/reward/merged \
        --reward_functions ""

With the QLoRA configs the SFT stage trains an adapter, so the next two stages load `sft/merged`.

1. SFT on the preferred answers (`dataset_builders` maps `pairwise_ab` to prompt/completion).
2. The reward model starts from the SFT model (as in InstructGPT) and learns the A/B preferences.
3. PPO starts from the SFT model too; its reference is that SFT model (the base under the new adapter) and its reward
   is the reward model from step 2. Adapters are merged after steps 1 and 2 (a 16-bit reload, never 4-bit), so the
   next stage loads one plain model (in 4-bit again with the QLoRA configs).

On the tiny default the SFT stage is a full fine-tune with more epochs (see `TINY_STAGE_FLAGS`): LoRA on a randomly
initialized 0.5M-parameter model would not learn to write words in a CPU minute.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Extra flags per stage on the tiny default only (the GPU configs start from a pretrained model).
TINY_STAGE_FLAGS = {
    "sft": ["--use_peft", "false", "--learning_rate", "2e-3", "--num_train_epochs", "8", "--eval_fraction", "0"],
    "reward": ["--learning_rate", "2e-3", "--num_train_epochs", "3", "--eval_fraction", "0"],
    "ppo": [],
}


def load_recipe(stage: str):
    from trl_ext.packaged import load_recipe as load

    return load(stage)


def stage_model(folder: Path) -> Path:
    """What a stage wrote for the next one to load: the merged model of an adapter, else the full model."""
    return folder / "merged" if (folder / "merged" / "config.json").exists() else folder


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="tiny-cpu", help="config name under recipes/configs/<stage>/ (tiny-cpu, "
                        "qlora-24gb, qlora-12gb, ...)")  # fmt: skip
    parser.add_argument("--dataset_path", default=str(HERE / "data" / "pairwise_ab.jsonl"), help="A/B preferences")
    parser.add_argument("--model_name_or_path", default=None, help="base model (default: the configs' own)")
    parser.add_argument("--output_dir", default=None, help="default: outputs/rlhf-<size>")
    for stage in ("sft", "reward", "ppo"):
        parser.add_argument(f"--{stage}_args", default="", help=f"extra flags for recipes/{stage}.py, one string")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """Run the three stages in this process; returns the folder each stage wrote."""
    opts = make_parser().parse_args(argv)
    out = Path(opts.output_dir or f"outputs/rlhf-{opts.size}")
    extra = TINY_STAGE_FLAGS if opts.size == "tiny-cpu" else {}
    base = ["--model_name_or_path", opts.model_name_or_path] if opts.model_name_or_path else []

    def run(stage: str, *flags: str) -> Path:
        config = HERE / "configs" / stage / f"{opts.size}.yaml"
        argv = ["--config", str(config), "--dataset_path", opts.dataset_path, "--output_dir", str(out / stage)]
        argv += [*flags, *extra.get(stage, []), *shlex.split(getattr(opts, f"{stage}_args"))]
        print(f"== RLHF stage {stage}: {shlex.join(['recipes/' + stage + '.py', *argv])}", flush=True)
        load_recipe(stage).main(argv)
        return out / stage

    sft = run("sft", *base, "--merge_adapter", "true")
    reward = run("reward", "--model_name_or_path", str(stage_model(sft)), "--merge_adapter", "true")
    ppo = run(
        "ppo",
        "--model_name_or_path", str(stage_model(sft)),
        "--reward_model_path", str(stage_model(reward)),
        "--reward_functions", "",
    )  # fmt: skip
    return {"sft": stage_model(sft), "reward": stage_model(reward), "ppo": ppo}


if __name__ == "__main__":
    from trl_ext.recipe import run_script

    run_script(main, sys.argv[1:])
