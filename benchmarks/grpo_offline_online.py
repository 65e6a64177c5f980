"""Samples per second of offline GRPO (`RankedGRPOTrainer`) vs online GRPO (`trl.GRPOTrainer` + a reward model),
same tiny model, same data, one process.

    python benchmarks/grpo_offline_online.py                  # CPU (or the GPU if one is visible), a few minutes
    python benchmarks/grpo_offline_online.py --steps 40 --threads 1 --json out.json

A sample is one (prompt, response) sequence that enters the loss. Both trainers see the same number per optimizer
step: offline, `--groups` ranked groups of 4 responses (`ToyTask().rows("ranked")`); online, the same number of
prompts x `num_generations=4` completions of at most `--max_completion_length` tokens (the toy responses are about
as long). Both train a LoRA adapter with `beta=0.04` (so both run the reference: the base with the adapter off).
Online adds what offline does not need: sampling the completions and scoring them with a sequence-classification
reward model (the same tiny model with a score head, through `RewardModelScorer`). The one-time cost of training
that reward model on the rankings (Plackett-Luce, one epoch) is reported separately.

Step times come from the trainers' own loop (`Trainer.train`, timed per optimizer step by a callback); the first
`--warmup` steps are dropped and the median is used. Result: samples/s of each and their ratio (offline / online); completion tokens/s too, as the online
completions of an untrained model run to the length limit more often than the toy responses.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

from trl_ext.embedded import offline_environment  # stdlib only: before transformers is imported

offline_environment()

GROUP_SIZE = 4


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._start)

    return StepTimer()


def common_args(args, name: str) -> dict:
    return dict(
        output_dir=f"/tmp/grpo_offline_online/{name}",
        use_cpu=args.device == "cpu",
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        learning_rate=5e-4,
        lr_scheduler_type="constant",
        max_steps=args.warmup + args.steps,
        beta=0.04,
        loss_type="dapo",
        seed=0,
    )


def lora(task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig

    return LoraConfig(task_type=task_type, r=16, lora_alpha=32, target_modules="all-linear")


def run_offline(args, model_path, rows) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ext import RankedGRPOConfig, RankedGRPOTrainer

    config = RankedGRPOConfig(
        per_device_train_batch_size=args.groups, max_completion_length=args.max_completion_length,
        **common_args(args, "offline"),
    )  # fmt: skip
    timer = step_timer()
    trainer = RankedGRPOTrainer(
        AutoModelForCausalLM.from_pretrained(model_path), args=config, train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_path), peft_config=lora(), callbacks=[timer],
    )  # fmt: skip
    tokens = [len(ids) for row in trainer.train_dataset for ids in row["completion_ids"]]
    trainer.train()
    return summarize(timer.times[args.warmup :], args.groups * GROUP_SIZE, statistics.mean(tokens))


def train_reward_model(args, model_path, rows):
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig

    from trl_ext.ranked_grpo import PlackettLuceRewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1)
    config = RewardConfig(
        "/tmp/grpo_offline_online/reward", use_cpu=args.device == "cpu", bf16=False, gradient_checkpointing=False,
        report_to="none", save_strategy="no", per_device_train_batch_size=args.groups, learning_rate=1e-3,
        num_train_epochs=1, max_length=128, seed=0,
    )  # fmt: skip
    trainer = PlackettLuceRewardTrainer(
        model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        peft_config=lora("SEQ_CLS"),
    )  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return trainer.accelerator.unwrap_model(trainer.model), tokenizer, seconds


def run_online(args, model_path, rows, reward_model, reward_tokenizer) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    from trl_ext import RankedGRPOConfig
    from trl_ext.ranked_grpo import RewardModelScorer

    config = RankedGRPOConfig(
        mode="online", per_device_train_batch_size=args.groups * GROUP_SIZE, num_generations=GROUP_SIZE,
        max_completion_length=args.max_completion_length, temperature=1.0, **common_args(args, "online"),
    )  # fmt: skip
    timer = step_timer()
    trainer = GRPOTrainer(
        AutoModelForCausalLM.from_pretrained(model_path),
        reward_funcs=[RewardModelScorer(reward_model, reward_tokenizer)],
        args=config,
        train_dataset=Dataset.from_list([{"prompt": row["prompt"]} for row in rows]),
        processing_class=AutoTokenizer.from_pretrained(model_path),
        peft_config=lora(),
        callbacks=[timer],
    )
    trainer.train()
    lengths = [log["completions/mean_length"] for log in trainer.state.log_history if "completions/mean_length" in log]
    return summarize(timer.times[args.warmup :], args.groups * GROUP_SIZE, statistics.mean(lengths))


def summarize(times: list[float], samples_per_step: int, mean_tokens: float) -> dict:
    median = statistics.median(times)
    return {
        "steps_timed": len(times),
        "median_step_s": round(median, 4),
        "samples_per_step": samples_per_step,
        "samples_per_s": round(samples_per_step / median, 2),
        "mean_completion_tokens": round(mean_tokens, 1),
        "completion_tokens_per_s": round(samples_per_step * mean_tokens / median, 1),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per trainer")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps per trainer")
    parser.add_argument("--groups", type=int, default=8, help="prompts (groups of 4) per optimizer step")
    parser.add_argument("--max_completion_length", type=int, default=24)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)

    import torch

    from trl_ext.toy.synthetic import ToyTask
    from trl_ext.toy.tiny import tiny_model_path

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    model_path = str(tiny_model_path())
    rows = ToyTask(seed=0, n_responses=GROUP_SIZE).rows("ranked", args.groups * (args.warmup + args.steps))

    offline = run_offline(args, model_path, rows)
    reward_model, reward_tokenizer, reward_seconds = train_reward_model(args, model_path, rows)
    online = run_online(args, model_path, rows, reward_model, reward_tokenizer)
    result = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "model": "trl-ext/tiny-llama",
        "offline": offline,
        "online": online,
        "reward_model_training_s": round(reward_seconds, 2),
        "ratio_offline_over_online": round(offline["samples_per_s"] / online["samples_per_s"], 2),
        "token_ratio_offline_over_online": round(
            offline["completion_tokens_per_s"] / online["completion_tokens_per_s"], 2
        ),
    }
    print(json.dumps(result, indent=2))
    print(
        f"offline {offline['samples_per_s']} samples/s vs online {online['samples_per_s']} samples/s: "
        f"offline is {result['ratio_offline_over_online']}x (reward model trained once in {reward_seconds:.1f} s)",
        file=sys.stderr,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
