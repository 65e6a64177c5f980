"""Does a recipe make a real model follow instructions better, on requests it never saw? SmolLM2-135M-Instruct,
IFEval-style constraints, checked by IFEval's own checkers.

    python benchmarks/instruction_following.py --quick               # 1 seed, 128 held-out prompts
    python benchmarks/instruction_following.py                       # 3 seeds, all 378 held-out prompts
    python benchmarks/instruction_following.py --quick --methods dpo --no-write   # a part (nothing written)

Data (shipped, see recipes/data/README.md): the on-policy pairs `recipes/data/smollm2-ifeval-pairs.jsonl` (sampled
from this base on 320 of the 1,800 training requests; chosen = an answer that follows every constraint, as sampled or
rewritten and verified), and the held-out prompts `recipes/data/ifeval-heldout-prompts.jsonl`, made from 378 other
HH-RLHF requests (split by request: no held-out request is in the training prompts).

Each method trains from the base through its recipe and config (`recipes/configs/<method>/smollm2-ifeval-cpu.yaml`),
then, on the held-out prompts, base and trained answer greedily (as IFEval is scored; at most 128 new tokens, a cut
or empty answer follows nothing):
- prompt-level strict pass rate of both, the paired gain (each prompt's trained minus base) and its standard error;
- instruction-level strict pass rate, mean answer length (tokens), answers cut at the limit;
- KL(pi || base) per token on the trained model's own samples (temperature 1, 32 held-out prompts);
- training time; a few answers side by side.

Writes `benchmarks/results/instruction_following-<quick|full>.json` (a list, one object per method and seed) and the
"Instruction following (SmolLM2)" section of `benchmarks/RESULTS.md`. A run of a part (`--methods`, `--seeds`) merges
its rows into the JSON file (replacing that method's earlier rows) only if its commit is the file's; work files go to
`runs/instruction_following/` (git-ignored).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alignment import git_state, load_recipe, machine, write_results_md  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT / "recipes" / "data"
HELD_OUT = DATA / "ifeval-heldout-prompts.jsonl"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
MODEL = "trl-ext/smollm2-135m-instruct"
MAX_NEW_TOKENS = 128
KL_PROMPTS = 32
BATCH = 32
# every field a result row must carry (tests/test_instruction_following.py checks the shipped files)
FIELDS = ("method", "seed", "held_out_prompts", "base_strict", "trained_strict", "gain", "paired_se",
          "base_instruction", "trained_instruction", "length_base", "length_trained", "cut_base", "cut_trained",
          "kl_per_token", "train_seconds", "commit", "tree_clean")  # fmt: skip


@dataclass(frozen=True)
class Method:
    key: str  # for --methods, and the `method` field
    recipe: str  # recipes/<recipe>.py
    config: str  # recipes/configs/<config>.yaml
    flags: tuple[str, ...] = ()


METHODS = (
    Method("dpo", "dpo", "dpo/smollm2-ifeval-cpu"),
    Method("ipo_trl", "dpo", "dpo/smollm2-ifeval-cpu", ("--loss_type", "ipo")),  # TRL's IPO: DPO's config and data
    Method("kto", "kto", "kto/smollm2-ifeval-cpu"),
    Method("orpo", "orpo", "orpo/smollm2-ifeval-cpu"),
)
METHOD_BY_KEY = {m.key: m for m in METHODS}
QUICK = {"prompts": 128, "seeds": (0,)}
FULL = {"prompts": None, "seeds": (0, 1, 2)}


def held_out_rows(limit: int | None) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in HELD_OUT.read_text().split("\n") if line.strip()]
    return rows[:limit] if limit else rows


def train(method: Method, output_dir: Path, seed: int) -> float:
    flags = ["--config", str(REPO_ROOT / "recipes" / "configs" / f"{method.config}.yaml"),
             "--output_dir", str(output_dir), "--seed", str(seed), "--disable_tqdm", "true", *method.flags]  # fmt: skip
    start = time.perf_counter()
    load_recipe(method.recipe).main(flags)
    gc.collect()
    return time.perf_counter() - start


def trained_seconds(adapter: Path) -> float:
    """The training time an adapter's model card records (`train_runtime`), for `--reuse`."""
    import re

    card = (adapter / "README.md").read_text() if (adapter / "README.md").is_file() else ""
    found = re.search(r"^\| train_runtime \| ([0-9.]+) \|", card, flags=re.MULTILINE)
    if found is None:
        raise SystemExit(f"--reuse: {adapter} holds no trained adapter with a train_runtime in its card")
    return float(found.group(1))


def evaluate(adapter: Path, rows: list[dict], base_answers, seed: int) -> tuple[dict[str, Any], Any]:
    """The trained adapter's greedy answers (and the base's, once per run: the adapter disabled), pass rates, KL."""
    from trl_ext.evaluation import instruction_following as ifollow
    from trl_ext.evaluation.generation import generate, kl_to_reference
    from trl_ext.models import load_policy
    from trl_ext.tokenization import pad_token_id

    model, ref_model, tokenizer = load_policy(str(adapter), dtype="float32")
    kwargs = dict(max_new_tokens=MAX_NEW_TOKENS, batch_size=BATCH, progress=True)
    if base_answers is None:
        with model.disable_adapter():
            base_answers = ifollow.answer_constraint_prompts(model, tokenizer, rows, desc="base, greedy", **kwargs)
    trained = ifollow.answer_constraint_prompts(model, tokenizer, rows, desc="trained, greedy", **kwargs)
    samples = generate(model, tokenizer, [r["prompt"] for r in rows[:KL_PROMPTS]], max_new_tokens=MAX_NEW_TOKENS,
                       batch_size=BATCH, seed=seed, desc="trained, sampled (KL)")  # fmt: skip
    kl = kl_to_reference(model, samples, ref_model=ref_model, pad_token_id=pad_token_id(tokenizer), batch_size=BATCH)
    gain = ifollow.paired_gain(base_answers.prompt_strict, trained.prompt_strict)
    b, t = base_answers.summary(), trained.summary()
    result = {
        "held_out_prompts": len(rows),
        "base_strict": b["prompt_strict"], "trained_strict": t["prompt_strict"],
        "gain": gain["gain"], "paired_se": gain["paired_se"],
        "base_instruction": b["instruction_strict"], "trained_instruction": t["instruction_strict"],
        "length_base": b["mean_length_tokens"], "length_trained": t["mean_length_tokens"],
        "cut_base": b["cut_at_max_new_tokens"], "cut_trained": t["cut_at_max_new_tokens"],
        "kl_per_token": kl.per_token,
        "answers": [{"prompt": r["prompt"][-1]["content"] if isinstance(r["prompt"], list) else r["prompt"],
                     "base": base_answers.completions[i], "trained": trained.completions[i],
                     "base_follows": all(base_answers.followed[i]), "trained_follows": all(trained.followed[i])}
                    for i, r in enumerate(rows[:4])],
    }  # fmt: skip
    del model, ref_model
    gc.collect()
    return result, base_answers


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"SmolLM2-135M-Instruct (`{MODEL}`, 32-bit base + LoRA, on {meta['machine']}), trained on the shipped on-policy "
        f"pairs, evaluated on {rows[0]['held_out_prompts'] if rows else 0} held-out prompts (HH-RLHF requests never "
        f"trained on, 1-2 IFEval-style constraints each), greedy, at most {MAX_NEW_TOKENS} new tokens (a cut answer "
        "fails). Pass rate = prompt-level strict (every constraint followed); gain = trained - base on the same "
        "prompts, +- its paired standard error.",
        "",
        "| method | seeds | base | trained | gain +- paired SE | instruction-level base -> trained | length base -> trained (tokens) | cut base -> trained | KL/token | train s |",  # noqa: E501
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == key]
        mean = lambda k, mine=mine: statistics.fmean(r[k] for r in mine)  # noqa: E731
        lines.append(
            f"| {key} | {len(mine)} | {mean('base_strict'):.3f} | {mean('trained_strict'):.3f} | "
            f"{mean('gain'):+.3f} +- {mean('paired_se'):.3f} | {mean('base_instruction'):.3f} -> "
            f"{mean('trained_instruction'):.3f} | {mean('length_base'):.0f} -> {mean('length_trained'):.0f} | "
            f"{mean('cut_base'):.0f} -> {mean('cut_trained'):.0f} | {mean('kl_per_token'):.3f} | {mean('train_seconds'):.0f} |"  # noqa: E501
        )
    lines += ["", "Greedy answers to the first held-out prompts, base then trained, as the checker judged them (so that a "
              "pass by gaming the checker shows):", "", "| method | prompt | base | trained |", "|---|---|---|---|"]  # fmt: skip
    cell = lambda text, n=160: str(text).replace("|", "\\|").replace("\n", " / ")[:n]  # noqa: E731
    for key in dict.fromkeys(r["method"] for r in rows):
        first = next(r for r in rows if r["method"] == key)
        for a in first.get("answers", [])[:3]:
            mark = lambda ok: "(follows)" if ok else "(fails)"  # noqa: E731
            lines.append(f"| {key} | {cell(a['prompt'], 200)} | {mark(a['base_follows'])} {cell(a['base'])} | "
                         f"{mark(a['trained_follows'])} {cell(a['trained'])} |")  # fmt: skip
    git = meta["git"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    lines += ["", f"Commit `{git['commit']}` (tree {'clean' if git['clean'] else 'with uncommitted changes'}); "
              f"{versions}; `{meta['command']}`, {meta['wall_s'] / 60:.0f} min."]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 128 held-out prompts")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: 0 quick, 0 1 2 full)")
    parser.add_argument("--methods", nargs="+", choices=list(METHOD_BY_KEY), help="a part of the methods")
    parser.add_argument("--workdir", default=str(REPO_ROOT / "runs" / "instruction_following"))
    parser.add_argument("--no-write", action="store_true", help="write neither benchmarks/results nor RESULTS.md")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="evaluate the adapters an earlier run left in --workdir instead of training again (train_seconds: the "
        "train_runtime their model card records)",
    )
    args = parser.parse_args(argv)

    from trl_ext.model_card import library_versions

    budget = QUICK if args.quick else FULL
    seeds = tuple(args.seeds or budget["seeds"])
    methods = [METHOD_BY_KEY[k] for k in args.methods] if args.methods else list(METHODS)
    rows_in = held_out_rows(budget["prompts"])
    git = git_state()
    started = time.perf_counter()
    results: list[dict] = []
    base_answers = None  # the base answers greedily: the same for every method and seed
    for seed in seeds:
        for method in methods:
            out = Path(args.workdir) / f"{method.key}-seed{seed}"
            seconds = trained_seconds(out) if args.reuse else train(method, out, seed)
            result, base_answers = evaluate(out, rows_in, base_answers, seed)
            results.append({"method": method.key, "seed": seed, **result, "train_seconds": seconds,
                            "commit": git["commit"], "tree_clean": git["clean"]})  # fmt: skip
            r = results[-1]
            print(f"{method.key} seed {seed}: strict {r['base_strict']:.3f} -> {r['trained_strict']:.3f} "
                  f"({r['gain']:+.3f} +- {r['paired_se']:.3f}), length {r['length_base']:.0f} -> "
                  f"{r['length_trained']:.0f}, KL {r['kl_per_token']:.3f}, trained in {seconds:.0f} s", flush=True)  # fmt: skip
    mode = "quick" if args.quick else "full"
    path = RESULTS_DIR / f"instruction_following-{mode}.json"
    if not args.no_write:
        earlier = json.loads(path.read_text()) if path.exists() else []
        mine = {(r["method"], r["seed"]) for r in results}
        kept = [r for r in earlier if r.get("commit") == git["commit"] and (r["method"], r["seed"]) not in mine]
        results = kept + results
    meta = {"machine": machine(), "git": git, "wall_s": time.perf_counter() - started,
            "command": " ".join(["python benchmarks/instruction_following.py", *(argv if argv is not None else sys.argv[1:])]),
            "versions": {k: v for k, v in library_versions().items() if k in ("trl", "transformers", "peft", "torch")}}  # fmt: skip
    section = markdown(results, meta)
    print(section)
    if not args.no_write:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        write_results_md(section, mode, name="instruction_following", title=f"Instruction following (SmolLM2, {mode})")
    return results


if __name__ == "__main__":
    main()
