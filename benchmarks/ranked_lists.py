"""Ways to learn from a ranked list, on the same data and model in one run: DPO on all pairs of each ranking, DPO on
best vs worst, DPO on adjacent pairs, listwise Plackett-Luce, and offline ranked GRPO, each with and without prefix
sharing (the group's prompt computed once: `trl_ext.prefix_sharing`).

    python benchmarks/ranked_lists.py --quick    # n = 4, long prompts, 1 seed: a few minutes on 2 cores
    python benchmarks/ranked_lists.py            # n = 4 and 8, short and long prompts, seeds 0 1 2 (RESULTS.md)
    python benchmarks/ranked_lists.py --model trl-ext/smollm2-135m-instruct --n 4 --prompts long --seeds 0 \
        --rows 8 --test-rows 8 --groups 2     # the real model: 4 optimizer steps per method (timing, not learning)

Task: the known-truth toy task (`trl_ext.toy.synthetic.ToyTask`, clean annotator): `--rows` ranked groups of n
responses for training, `--test-rows` groups on held-out prompts. Short prompts are about as long as a response
(3 filler words); long prompts are at least 4x the longest response (`--long-prompt-words` filler words). Model:
the embedded tiny Llama (`trl-ext/tiny-llama`, sdpa attention), a fresh LoRA adapter (same seed, same
initialization for every method), one epoch, batches of `--groups` groups (DPO: the pairs those groups give, so every
method makes the same number of optimizer steps on the same rankings), learning rate 2e-3, beta 0.1 (GRPO: 0.04).

Measured per method: wall time of `trainer.train()` (one epoch), token-forwards per epoch (every token, padding
included, that enters a forward pass of the policy or the reference: packed rows count their packed length), and on
the held-out groups the Kendall tau-b and pairwise accuracy of the implicit rewards `log pi(y|x) - log pi_ref(y|x)`
against the true quality (mean over groups; accuracy over pairs of different quality).

`--quick` ends with one line: `listwise+prefix vs all-pairs DPO: speedup S x, Kendall tau A vs B` (n = 4, long
prompts): S is all-pairs DPO's wall time over Plackett-Luce-with-prefix-sharing's, A and B their held-out taus.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from trl_ext.embedded import offline_environment  # stdlib only: before transformers is imported

offline_environment()

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # "dpo" (pairs from the ranking) or "ranked" (whole groups)
    pair_strategy: str | None = None
    loss_type: str | None = None

    def pairs_per_group(self, n: int) -> int:
        return {"all_pairs": n * (n - 1) // 2, "adjacent": n - 1, "best_vs_worst": 1}.get(self.pair_strategy, 1)


METHODS = (
    Method("dpo_all_pairs", "dpo", pair_strategy="all_pairs"),
    Method("dpo_best_vs_worst", "dpo", pair_strategy="best_vs_worst"),
    Method("dpo_adjacent", "dpo", pair_strategy="adjacent"),
    Method("plackett_luce", "ranked", loss_type="plackett_luce"),
    Method("grpo_offline", "ranked", loss_type="dapo"),
)
SHORT_PROMPT_WORDS = 3
DEFAULT_MODEL = "trl-ext/tiny-llama"


@dataclass(frozen=True)
class Setting:
    n: int
    prompts: str  # "short" or "long"
    seed: int


def held_out_metrics(rewards: list[list[float]], rows: list[dict]) -> dict[str, float]:
    """Mean Kendall tau-b (over groups) and pairwise accuracy (over pairs of different true quality) of the implicit
    rewards against the true quality of each response."""
    from trl_ext.ranked_grpo import kendall_tau
    from trl_ext.toy.synthetic import quality

    taus, right, pairs = [], 0, 0
    for scores, row in zip(rewards, rows):
        truth = [quality(r) for r in row["responses"]]
        taus.append(kendall_tau(scores, truth))
        for i in range(len(truth)):
            for j in range(len(truth)):
                if truth[i] > truth[j]:
                    pairs += 1
                    right += scores[i] > scores[j]
    return {"kendall_tau": sum(taus) / len(taus), "pairwise_accuracy": right / max(pairs, 1)}


class TokenCounter:
    """Counts the tokens of every forward pass of a model (registered last: it sees packed rows as packed)."""

    def __init__(self, module) -> None:
        self.tokens = 0
        module.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.tokens += ids.numel()


def build_trainer(method: Method, share: bool, setting: Setting, train_rows: list[dict], out: Path, args):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    import dataset_builders
    from trl_ext import RankedGRPOConfig, RankedGRPOTrainer
    from trl_ext.dpo import PrefixSharingDPOConfig, PrefixSharingDPOTrainer
    from trl_ext.models import resolve_model_name

    path = resolve_model_name(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(setting.seed)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32)
    lora = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    common = dict(output_dir=str(out), use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
                  save_strategy="no", logging_strategy="no", num_train_epochs=1, learning_rate=args.learning_rate,
                  lr_scheduler_type="constant", seed=setting.seed, data_seed=setting.seed)  # fmt: skip
    groups = Dataset.from_list(train_rows)
    if method.kind == "dpo":
        pairs = dataset_builders.load(groups, method="dpo", shape="ranked", pair_strategy=method.pair_strategy)
        batch = args.groups * method.pairs_per_group(setting.n)
        config_cls, trainer_cls = (
            (PrefixSharingDPOConfig, PrefixSharingDPOTrainer) if share else (DPOConfig, DPOTrainer)
        )
        extra = {"prefix_sharing": True} if share else {}
        config = config_cls(**common, beta=0.1, per_device_train_batch_size=batch, max_length=None, **extra)
        trainer = trainer_cls(model, args=config, train_dataset=pairs, processing_class=tokenizer, peft_config=lora)
    else:
        beta = 0.1 if method.loss_type == "plackett_luce" else 0.04
        config = RankedGRPOConfig(**common, loss_type=method.loss_type, beta=beta, prefix_sharing=share,
                                  per_device_train_batch_size=args.groups, max_prompt_length=None,
                                  max_completion_length=None)  # fmt: skip
        trainer = RankedGRPOTrainer(model, args=config, train_dataset=groups, processing_class=tokenizer,
                                    peft_config=lora)  # fmt: skip
    return trainer, tokenizer


def run_one(method: Method, share: bool, setting: Setting, data: dict, args) -> dict[str, Any]:
    import torch

    from trl_ext.ranked_grpo import group_implicit_rewards

    out = Path(args.workdir) / f"{setting.n}-{setting.prompts}-{setting.seed}-{method.name}-{int(share)}"
    trainer, tokenizer = build_trainer(method, share, setting, data["train"], out, args)
    counter = TokenCounter(trainer.model)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    token_forwards = counter.tokens  # before the held-out scoring below, which calls the same model
    model = trainer.accelerator.unwrap_model(trainer.model)
    with torch.no_grad():
        rewards = group_implicit_rewards(model, tokenizer, data["test"], batch_size=16)
    return {
        "method": method.name,
        "prefix_sharing": share,
        "n": setting.n,
        "prompts": setting.prompts,
        "seed": setting.seed,
        "wall_s": wall,
        "optimizer_steps": trainer.state.global_step,
        "token_forwards": token_forwards,
        **held_out_metrics(rewards, data["test"]),
    }


def make_data(setting: Setting, args) -> dict[str, list[dict]]:
    from trl_ext.toy.synthetic import ToyTask

    words = SHORT_PROMPT_WORDS if setting.prompts == "short" else args.long_prompt_words
    task = ToyTask(seed=setting.seed, n_responses=setting.n, prompt_words=words)
    return {"train": task.rows("ranked", args.rows), "test": task.rows("ranked", args.test_rows, split="test")}


def prompt_to_response_ratio(rows: list[dict]) -> float:
    """Mean prompt length over the longest response, in characters (= byte tokens of the tiny model)."""
    return statistics.mean(len(r["prompt"]) for r in rows) / max(len(x) for r in rows for x in r["responses"])


def summarize(records: list[dict]) -> list[dict]:
    """Mean and sample std over seeds per (n, prompts, method, prefix_sharing)."""
    keys = sorted({(r["n"], r["prompts"], r["method"], r["prefix_sharing"]) for r in records},
                  key=lambda k: (k[0], k[1] != "short", [m.name for m in METHODS].index(k[2]), k[3]))  # fmt: skip
    out = []
    for n, prompts, method, share in keys:
        rows = [r for r in records if (r["n"], r["prompts"], r["method"], r["prefix_sharing"]) == (n, prompts, method, share)]  # fmt: skip
        entry = {"n": n, "prompts": prompts, "method": method, "prefix_sharing": share, "seeds": len(rows)}
        for field in ("wall_s", "token_forwards", "kendall_tau", "pairwise_accuracy", "optimizer_steps"):
            values = [float(r[field]) for r in rows]
            entry[field] = statistics.mean(values)
            entry[field + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def headline(summary: list[dict]) -> str:
    def find(method, share):
        return next(s for s in summary if (s["n"], s["prompts"], s["method"], s["prefix_sharing"]) == (4, "long", method, share))  # fmt: skip

    pairs, listwise = find("dpo_all_pairs", False), find("plackett_luce", True)
    speedup = pairs["wall_s"] / listwise["wall_s"]
    return (
        f"listwise+prefix vs all-pairs DPO: speedup {speedup:.2f} x, Kendall tau {listwise['kendall_tau']:.3f} vs "
        f"{pairs['kendall_tau']:.3f}"
    )


def markdown(summary: list[dict], meta: dict) -> str:
    lines = [
        f"### `{meta['command']}`",
        "",
        f"{meta['date']}; commit {meta['git']['commit']} ({'clean tree' if meta['git']['clean'] else 'uncommitted changes'}); "
        f"{meta['machine']}; torch threads {meta['threads']}; "
        f"{', '.join(f'{k} {v}' for k, v in meta['versions'].items())}.",
        f"Seeds {', '.join(map(str, meta['seeds']))}; {meta['rows']} training groups, {meta['test_rows']} held-out "
        f"groups; {meta['groups']} groups per optimizer step, one epoch; prompt / longest response (characters): "
        + ", ".join(f"{k} {v:.2f}" for k, v in meta["prompt_ratio"].items())
        + ". Mean ± sample std over seeds. Wall: `trainer.train()` for the epoch; token-forwards: tokens (padding "
        "included) entering a policy or reference forward; tau / accuracy: implicit rewards vs true quality on "
        "held-out prompts.",
        "",
        "| n | prompts | method | prefix sharing | wall s | token-forwards | Kendall tau | pairwise acc. | speed-up from sharing |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        unshared = next(
            (u for u in summary if (u["n"], u["prompts"], u["method"]) == (s["n"], s["prompts"], s["method"])
             and not u["prefix_sharing"]), None)  # fmt: skip
        gain = f"{unshared['wall_s'] / s['wall_s']:.2f}x" if s["prefix_sharing"] and unshared else ""
        lines.append(
            f"| {s['n']} | {s['prompts']} | {s['method']} | {'yes' if s['prefix_sharing'] else 'no'} | "
            f"{s['wall_s']:.1f} ± {s['wall_s_std']:.1f} | {s['token_forwards'] / 1e3:.0f}k | "
            f"{s['kendall_tau']:.3f} ± {s['kendall_tau_std']:.3f} | {s['pairwise_accuracy']:.3f} ± "
            f"{s['pairwise_accuracy_std']:.3f} | {gain} |"
        )
    lines += ["", f"**{meta['headline']}**"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="n = 4, long prompts, seed 0 only")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--n", type=int, nargs="+", help="responses per group (default 4 8; quick 4)")
    parser.add_argument("--prompts", nargs="+", choices=["short", "long"], help="default short long; quick long")
    parser.add_argument("--methods", nargs="+", choices=[m.name for m in METHODS])
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--test-rows", type=int, default=32)
    parser.add_argument("--groups", type=int, default=8, help="groups per optimizer step")
    parser.add_argument("--long-prompt-words", type=int, default=36)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="e.g. trl-ext/smollm2-135m-instruct (offline)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--workdir", default="/tmp/ranked_lists")
    parser.add_argument("--json", help="write the records and summary here")
    parser.add_argument("--write-results", action="store_true",
                        help="write benchmarks/results/ranked_lists[-quick].json and the RESULTS.md section")  # fmt: skip
    args = parser.parse_args(argv)
    import torch
    from alignment import git_state, machine, write_results_md

    from trl_ext.model_card import library_versions

    git = git_state()  # at the start: the code that runs, whatever changes while it runs
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    sizes = args.n or ([4] if args.quick else [4, 8])
    prompt_kinds = args.prompts or (["long"] if args.quick else ["short", "long"])
    methods = [m for m in METHODS if not args.methods or m.name in args.methods]
    records, ratios = [], {}
    for n in sizes:
        for prompts in prompt_kinds:
            for seed in seeds:
                setting = Setting(n, prompts, seed)
                data = make_data(setting, args)
                ratios[prompts] = prompt_to_response_ratio(data["train"])
                for method in methods:
                    for share in (False, True):
                        record = run_one(method, share, setting, data, args)
                        records.append(record)
                        print(
                            f"n={n} {prompts:5s} seed={seed} {method.name:18s} prefix={'yes' if share else 'no ':3s} "
                            f"wall {record['wall_s']:6.1f} s  token-forwards {record['token_forwards']:>9,}  "
                            f"tau {record['kendall_tau']:.3f}  acc {record['pairwise_accuracy']:.3f}",
                            flush=True,
                        )
    summary = summarize(records)
    command = "python benchmarks/ranked_lists.py " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {
        "command": command,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git": git,
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "versions": library_versions(),
        "seeds": seeds,
        "rows": args.rows,
        "test_rows": args.test_rows,
        "groups": args.groups,
        "prompt_ratio": ratios,
    }
    have_headline = any((s["n"], s["prompts"]) == (4, "long") for s in summary) and {"dpo_all_pairs", "plackett_luce"} <= {m.name for m in methods}  # fmt: skip
    meta["headline"] = headline(summary) if have_headline else "(no n = 4 long-prompt comparison in this run)"
    result = {"meta": meta, "summary": summary, "records": records}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.write_results:
        mode = "real" if args.model != DEFAULT_MODEL else "quick" if args.quick else "full"
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"ranked_lists-{mode}.json").write_text(json.dumps(result, indent=1))
        title = f"Ranked lists ({'real model, ' + args.model if mode == 'real' else mode})"
        write_results_md(markdown(summary, meta), mode, name="ranked_lists", title=title)
    print(markdown(summary, meta))
    print(meta["headline"])
    return result


if __name__ == "__main__":
    main()
