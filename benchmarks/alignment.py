"""The alignment benchmark: does every method learn a known true preference, and which ones learn to be long?

    python benchmarks/alignment.py --quick        # the whole table, 3 seeds, under 10 minutes on a 2-core CPU
    python benchmarks/alignment.py                # the full run: 5 seeds, 3x the held-out prompts (about 10 min)
    python benchmarks/alignment.py --quick --methods dpo kto --seeds 0   # a part of it (RESULTS.md is not touched)

Writes `benchmarks/results/alignment-<quick|full>.json` (every number of every run) and `.png` (the plot), and the
tables into `benchmarks/RESULTS.md` (between markers, so other sections of that file stay). Work files go to
`runs/alignment/` (git-ignored).

The task is `trl_ext.toy.synthetic.ToyTask`: prompts are a topic word and three filler words; a response is a list of
words; its true quality `quality(text)` is the fraction of words from a list of good words (length-independent).
Every method's training data comes from the same truth, in the input shape `dataset_builders` pairs with the method
(pairs, pairs with lengths, good/bad labels, pairs with an SFT target, rankings, A/B preferences for the reward model
of PPO, prompts). Held-out prompts (the test split) use topics never seen in training.

Per seed:

1. SFT once (`recipes/sft.py`, full fine-tuning of the embedded tiny Llama) on prompts with responses of *random*
   quality, so generations are well formed but not yet aligned. This model is every method's starting point and
   its reference (LoRA on top; reference = adapters off).
2. Reward models where a method needs one (`recipes/reward.py` on the SFT model): PPO's on A/B preferences
   (`pairwise_ab`), online GRPO's on the rankings (`ranked`).
3. Every method through its recipe's in-process entry point (`recipes/<method>.py` `main(argv)` with the tiny-cpu
   config and overrides); nothing of a method is re-implemented here.
4. Evaluation on held-out prompts (`trl_ext.evaluation`): ground-truth score of fresh samples (temperature 1),
   held-out preference accuracy on true pairs (pairs ordered by true quality), KL to the reference on the policy's
   own samples, length in words, wall time of training, peak memory.

The length-confounded variant trains on data from an annotator that also likes length (`ToyTask(gamma=1.5)`:
utility 6*quality + 1.5*standardized length), evaluated on the same held-out truth: how much longer does each method
make its answers, and how much of that do the length-aware IPO variants remove?

Jobs run in forked child processes (`--workers`, default 2, one torch thread each), so each run's peak memory is its
own process's (it includes the Python/torch runtime, the same for all; the runtime alone is reported too).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from trl_ext.embedded import offline_environment  # stdlib only: before transformers is imported

offline_environment(WANDB_DISABLED="true", HF_DATASETS_DISABLE_PROGRESS_BARS="1")

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

RESULTS_MD = REPO_ROOT / "benchmarks" / "RESULTS.md"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
RECIPES = REPO_ROOT / "recipes"
VARIANTS = {"clean": 0.0, "length": 1.5}  # variant -> the training annotator's gamma (held-out truth is always clean)
# A "clear margin": the mean gain in ground-truth score (fraction of good words) over the SFT start, and every seed up.
CLEAR_MARGIN = 0.10


# ------------------------------------------------------------------------------------------------ what runs
@dataclass(frozen=True)
class Method:
    """One row of the table: a recipe, the input shape of its training data, and its flags (tiny-cpu config +)."""

    name: str
    recipe: str
    shape: str
    flags: tuple[str, ...] = ()
    reward_model: str | None = None  # train a reward model on this shape first (PPO, online GRPO)
    note: str = ""
    lr: str = "5e-4"
    config: str = "tiny-cpu"  # recipes/configs/<recipe>/<config>.yaml


METHODS: tuple[Method, ...] = (
    # `--reward_functions ""` clears the tiny-cpu config's rule-based reward: PPO must learn from the reward model only.
    Method("ppo", "ppo", "prompts", ("--reward_functions", "", "--num_mini_batches", "2", "--num_ppo_epochs", "2",
                                     "--max_completion_length", "48", "--missing_eos_penalty", "0.1"),
           reward_model="pairwise_ab", lr="1e-3", note="trl_ext.PPOTrainer; reward model trained on A/B preferences"),
    Method("dpo", "dpo", "pairs", ("--beta", "0.1"), note="trl.DPOTrainer"),
    Method("ipo", "dpo", "pairs_with_lengths", ("--loss_type", "ipo", "--beta", "0.5"),
           note="trl.DPOTrainer, loss_type=ipo (per-token mean log-ratios)"),
    Method("ipo_len_auto", "ipo", "pairs_with_lengths", ("--beta", "0.5", "--length_penalty", "auto"),
           note="trl_ext.LengthAwareIPOTrainer, length_penalty=auto (declared lengths)"),
    Method("ipo_len_ld", "ipo", "pairs_with_lengths",
           ("--beta", "0.5", "--length_penalty", "auto", "--ld_alpha", "0.5"),
           note="LengthAwareIPOTrainer, length_penalty=auto + LD-DPO down-weighting (ld_alpha=0.5)"),
    Method("kto", "kto", "binary", ("--beta", "0.1"), note="trl.KTOTrainer, class weights from the label counts"),
    # TRL's ORPO puts its NLL term on prompt + answer (and a BOS the other trainers do not add), so on this toy the
    # odds-ratio term needs a large weight (beta = lambda) to matter; a larger learning rate breaks the words apart.
    Method("orpo", "orpo", "pairs_sft_target", ("--beta", "10.0"), lr="1e-4",
           note="trl.experimental.orpo.ORPOTrainer, beta (lambda) = 10, lr 1e-4"),
    # 8 groups of 4 ranked responses per step: the 32 sequences a DPO step of 16 pairs sees.
    Method("grpo_offline", "grpo", "ranked", ("--mode", "offline", "--per_device_train_batch_size", "8"), lr="1e-4",
           note="trl_ext.RankedGRPOTrainer on the rankings, 8 groups x 4 responses per step, lr 1e-4 (5e-4 and 2e-4 "
           "break words apart on seed 0)"),
    # The online recipe trains its own reward model on the rankings (Plackett-Luce) before sampling.
    Method("grpo_online", "grpo", "ranked", ("--mode", "online", "--num_generations", "4", "--max_completion_length",
                                             "48", "--reward_per_device_train_batch_size", "8",
                                             "--reward_num_train_epochs", "0.5"),
           config="tiny-cpu-online",
           note="trl.GRPOTrainer, 4 samples per prompt; reward model (Plackett-Luce) trained by the recipe on half "
           "the rankings"),
)  # fmt: skip
METHOD_BY_NAME = {m.name: m for m in METHODS}


@dataclass(frozen=True)
class Budget:
    """How long each stage trains and how much it is evaluated on."""

    seeds: tuple[int, ...] = (0, 1, 2)
    sft_steps: int = 250
    sft_batch: int = 32
    sft_lr: str = "2e-3"
    reward_steps: int = 80
    steps: int = 60  # every preference method
    batch: int = 16
    train_rows: int = 1200
    eval_prompts: int = 64
    eval_samples: int = 2  # generations per held-out prompt
    test_pairs: int = 200
    max_new_tokens: int = 48


QUICK = Budget()
# The full run: more seeds and a larger held-out evaluation, the same training (the hyperparameters are tuned for it).
FULL = Budget(seeds=(0, 1, 2, 3, 4), eval_prompts=200, eval_samples=2, test_pairs=500)


# ------------------------------------------------------------------------------------------------ data
def _plain(row: dict) -> dict:
    """ToyTask rows are plain text; a newline ends the prompt so the first answer word is not glued to it."""
    return {**row, "prompt": row["prompt"] + "\n"}


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def sft_rows(seed: int, n: int) -> list[dict]:
    """Prompts with responses of random quality (the `binary` rows' responses, labels dropped): well-formed answers,
    good words at about the rate of bad ones, so the SFT model is a neutral starting point."""
    from trl_ext.toy.synthetic import ToyTask

    return [{"prompt": r["prompt"], "completion": r["response"]} for r in ToyTask(seed=seed).rows("binary", n)]


def true_pairs(seed: int, n: int) -> list[dict]:
    """Held-out pairs (test split) ordered by the ground truth: chosen = the higher `quality`; equal quality dropped."""
    from trl_ext.toy.synthetic import ToyTask, quality

    out = []
    for row in ToyTask(seed=10_000 + seed).rows("pairs", n, split="test"):
        a, b = row["chosen"], row["rejected"]
        if quality(a) == quality(b):
            continue
        chosen, rejected = (a, b) if quality(a) > quality(b) else (b, a)
        out.append(_plain({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected}))
    return out


def write_data(workdir: Path, seed: int, budget: Budget, methods: list[Method], variants: list[str]) -> dict:
    """Training data of every shape and variant, SFT data and held-out evaluation data for one seed."""
    from trl_ext.toy.synthetic import ToyTask

    root = workdir / f"seed{seed}" / "data"
    paths: dict[str, Any] = {"sft": str(write_jsonl([_plain(r) for r in sft_rows(seed, 4000)], root / "sft.jsonl"))}
    shapes = sorted({m.shape for m in methods} | {m.reward_model for m in methods if m.reward_model})
    for variant in variants:
        task = ToyTask(gamma=VARIANTS[variant], seed=seed)
        for shape in shapes:
            rows = [_plain(r) for r in task.rows(shape, budget.train_rows)]
            paths[f"{variant}/{shape}"] = str(write_jsonl(rows, root / variant / f"{shape}.jsonl"))
    test = ToyTask(seed=10_000 + seed)
    paths["test_prompts"] = str(
        write_jsonl([_plain(r) for r in test.rows("prompts", budget.eval_prompts, split="test")], root / "test_prompts.jsonl")
    )  # fmt: skip
    paths["test_pairs"] = str(write_jsonl(true_pairs(seed, budget.test_pairs), root / "test_pairs.jsonl"))
    return paths


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------ recipes
def load_recipe(name: str):
    """Import `recipes/<name>.py` as module `recipes_<name>` (`trl_ext.packaged.load_recipe`)."""
    from trl_ext.packaged import load_recipe as load

    return load(name)


def recipe_status(method: Method) -> str | None:
    """None if the method can run here, else why not (its recipe does not import)."""
    names = [method.recipe] + (["reward"] if method.reward_model else [])
    for name in names:
        try:
            module = load_recipe(name)
        except Exception as e:  # noqa: BLE001 - report any import failure as the reason
            return f"recipes/{name}.py does not import: {type(e).__name__}: {e}"
        if not hasattr(module, "main"):
            return f"recipes/{name}.py has no main(argv)"
    return None


def common_flags(method_recipe: str, data: str, output_dir: Path, model: str, steps: int, batch: int, lr: str, seed: int, config: str = "tiny-cpu") -> list[str]:  # fmt: skip
    """The tiny-cpu config of `method_recipe` with the benchmark's model, data, budget and quiet logging."""
    return [
        "--config", str(RECIPES / "configs" / method_recipe / f"{config}.yaml"),
        "--model_name_or_path", model,
        "--dataset_path", data,
        "--output_dir", str(output_dir),
        "--eval_fraction", "0",
        "--max_steps", str(steps),
        "--per_device_train_batch_size", str(batch),
        "--learning_rate", lr,
        "--logging_steps", str(max(steps // 4, 1)),
        "--disable_tqdm", "true",
        "--seed", str(seed),
        "--save_strategy", "no",
        "--report_to", "none",
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate(model, tokenizer, data: dict, budget: Budget, seed: int, *, with_reference: bool) -> dict[str, float]:
    """Ground-truth score, well-formedness, length, KL and held-out preference accuracy of `model`."""
    from trl_ext import evaluation as ev
    from trl_ext.tokenization import pad_token_id
    from trl_ext.toy.synthetic import BAD_WORDS, GOOD_WORDS, quality

    vocabulary = set(GOOD_WORDS) | set(BAD_WORDS)
    prompts = [r["prompt"] for r in read_jsonl(data["test_prompts"])]
    pairs = read_jsonl(data["test_pairs"])
    gens = ev.generate(model, tokenizer, prompts, max_new_tokens=budget.max_new_tokens, batch_size=64,
                       num_return_sequences=budget.eval_samples, seed=seed, progress=False)  # fmt: skip
    words = [w for text in gens.completions for w in text.split()]
    out = {
        "score": sum(quality(t) for t in gens.completions) / len(gens.completions),
        "well_formed": sum(w in vocabulary for w in words) / max(len(words), 1),
        "length_words": sum(ev.completion_lengths(gens, "words")) / len(gens.completions),
        "length_tokens": sum(ev.completion_lengths(gens, "tokens")) / len(gens.completions),
        "finished": sum(gens.finished) / len(gens.finished),
    }
    pe = ev.evaluate_pairs(model, tokenizer, pairs, batch_size=64, progress=False)
    pair_metrics = pe.metrics()
    out["likelihood_accuracy"] = pair_metrics["likelihood_accuracy"]
    if with_reference:
        out["preference_accuracy"] = pair_metrics["preference_accuracy"]
        out["reward_margin"] = pair_metrics["reward_margin"]
        kl = ev.kl_to_reference(model, gens, pad_token_id=pad_token_id(tokenizer), batch_size=64, progress=False)
        out["kl_per_token"] = kl.per_token
        out["kl_per_sequence"] = kl.per_sequence
    out["samples"] = gens.completions[:4]
    return out


def load_adapter(adapter_dir: str | Path, base_dir: str | Path):
    """The trained adapter on the SFT model it started from (its reference: the adapter disabled)."""
    from trl_ext import models

    model, _, tokenizer = models.load_policy(str(adapter_dir), str(base_dir))
    return model, tokenizer


# ------------------------------------------------------------------------------------------------ jobs
@dataclass
class Job:
    key: str
    kind: str  # sft | reward | method
    seed: int
    variant: str = "clean"
    method: str | None = None
    shape: str | None = None
    deps: tuple[str, ...] = ()
    cost: float = 1.0  # for ordering: expensive jobs start first
    status: str = "pending"
    result: dict = field(default_factory=dict)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_job(job: Job, ctx: dict) -> dict:
    """Run one job in this (child) process; returns its result dict."""
    import torch

    torch.set_num_threads(1)
    budget: Budget = ctx["budget"]
    workdir = Path(ctx["workdir"]) / f"seed{job.seed}"
    data = ctx["data"][job.seed]
    results = ctx["results"]
    start_rss = _rss_mb()
    if job.kind == "sft":
        out_dir = workdir / "sft"
        key = {"budget": [budget.sft_steps, budget.sft_batch, budget.sft_lr], "data": data["sft"]}
        cached = out_dir / "benchmark-result.json"
        if ctx.get("reuse_sft") and cached.exists() and json.loads(cached.read_text()).get("key") == key:
            return json.loads(cached.read_text())["result"]
        shutil.rmtree(out_dir, ignore_errors=True)
        argv = common_flags("sft", data["sft"], out_dir, "trl-ext/tiny-llama", budget.sft_steps, budget.sft_batch,
                            budget.sft_lr, job.seed)  # fmt: skip
        argv += ["--use_peft", "false", "--lr_scheduler_type", "cosine", "--warmup_steps", "10"]
        t0, c0 = time.perf_counter(), _cpu_s()
        path = load_recipe("sft").main(argv)
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
        peak = _peak_rss_mb()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        metrics = evaluate(model, tokenizer, data, budget, seed=job.seed, with_reference=False)
        result = {
            "model": str(path),
            "wall_s": wall,
            "cpu_s": cpu,
            "peak_rss_mb": peak,
            "start_rss_mb": start_rss,
            **metrics,
        }
        cached.write_text(json.dumps({"key": key, "result": result}))
        return result

    sft_dir = results[f"sft/{job.seed}"]["model"]
    if job.kind == "reward":
        out_dir = workdir / job.variant / f"reward-{job.shape}"
        shutil.rmtree(out_dir, ignore_errors=True)
        argv = common_flags("reward", data[f"{job.variant}/{job.shape}"], out_dir, sft_dir, budget.reward_steps,
                            budget.batch, "1e-3", job.seed) + ["--merge_adapter", "true"]  # fmt: skip
        t0, c0 = time.perf_counter(), _cpu_s()
        folder = load_recipe("reward").main(argv)
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
        from trl_ext import evaluation as ev
        from trl_ext import models

        rm, rm_tok = models.load_reward_model(str(folder))
        acc = ev.reward_model_accuracy(rm, rm_tok, read_jsonl(data["test_pairs"]), batch_size=64, progress=False)
        return {
            "model": str(folder),
            "adapter": str(out_dir),
            "wall_s": wall,
            "cpu_s": cpu,
            "peak_rss_mb": _peak_rss_mb(),
            **acc,
        }

    method = METHOD_BY_NAME[job.method]
    out_dir = workdir / job.variant / method.name
    shutil.rmtree(out_dir, ignore_errors=True)
    argv = common_flags(method.recipe, data[f"{job.variant}/{method.shape}"], out_dir, sft_dir, budget.steps,
                        budget.batch, method.lr, job.seed, method.config) + list(method.flags)  # fmt: skip
    if method.reward_model:
        argv += reward_flags(method, results[f"reward/{job.seed}/{job.variant}/{method.reward_model}"])
    t0, c0 = time.perf_counter(), _cpu_s()
    folder = load_recipe(method.recipe).main(argv)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    peak = _peak_rss_mb()
    model, tokenizer = load_adapter(folder, sft_dir)
    metrics = evaluate(model, tokenizer, data, budget, seed=job.seed, with_reference=True)
    if (Path(folder) / "reward_model").is_dir():  # a reward model the recipe trained itself (online GRPO)
        from trl_ext import evaluation as ev
        from trl_ext import models

        rm, rm_tok = models.load_reward_model(str(Path(folder) / "reward_model"), sft_dir)
        pairs = read_jsonl(data["test_pairs"])
        metrics.update(ev.reward_model_accuracy(rm, rm_tok, pairs, batch_size=64, progress=False))
    return {
        "model": str(folder),
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mb": peak,
        "start_rss_mb": start_rss,
        **metrics,
    }


def reward_flags(method: Method, reward_result: dict) -> list[str]:
    """How the method's recipe is told which reward model to use."""
    return ["--reward_model_path", reward_result["model"]]


def _child_main(job: Job, ctx: dict, result_path: str, log_path: str) -> None:
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    try:
        t0 = time.perf_counter()
        result = {"status": "ok", **run_job(job, ctx)}
        # whole job (training + evaluation); a forked child's CPU times start at zero
        result.update(job_wall_s=time.perf_counter() - t0, job_cpu_s=_cpu_s())
    except BaseException as e:  # noqa: BLE001 - any failure is reported, never hidden
        traceback.print_exc()
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}
    sys.stdout.flush()
    sys.stderr.flush()
    Path(result_path).write_text(json.dumps(result, default=str))
    os._exit(0)


def plan(seeds: list[int], methods: list[Method], variants: list[str]) -> list[Job]:
    jobs: list[Job] = []
    for seed in seeds:
        jobs.append(Job(f"sft/{seed}", "sft", seed, cost=5.0))
        for variant in variants:
            for shape in sorted({m.reward_model for m in methods if m.reward_model}):
                jobs.append(Job(f"reward/{seed}/{variant}/{shape}", "reward", seed, variant, shape=shape,
                                deps=(f"sft/{seed}",), cost=4.0))  # fmt: skip
            for m in methods:
                deps = (f"sft/{seed}",) + ((f"reward/{seed}/{variant}/{m.reward_model}",) if m.reward_model else ())
                cost = {"ppo": 3.0, "grpo_online": 3.0, "kto": 2.0}.get(m.name, 1.0)
                jobs.append(Job(f"{m.name}/{seed}/{variant}", "method", seed, variant, method=m.name, deps=deps, cost=cost))  # fmt: skip
    return jobs


def run_all(jobs: list[Job], ctx: dict, workers: int) -> None:
    """Run the jobs (respecting dependencies) in up to `workers` forked child processes at a time."""
    mp = multiprocessing.get_context("fork")
    by_key = {j.key: j for j in jobs}
    running: dict[Any, tuple[Job, str]] = {}
    logs = Path(ctx["workdir"]) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    done = 0
    t_start = time.perf_counter()
    while True:
        for job in jobs:
            if job.status == "pending" and any(
                by_key[d].status in ("failed", "skipped") for d in job.deps if d in by_key
            ):
                job.status = "skipped"
                job.result = {"status": "skipped", "error": "a stage it needs failed: " + ", ".join(job.deps)}
                done += 1
        ready = [j for j in jobs if j.status == "pending" and all(by_key[d].status == "ok" for d in j.deps)]
        ready.sort(key=lambda j: -j.cost)
        while ready and len(running) < workers:
            job = ready.pop(0)
            ctx["results"] = {k: j.result for k, j in by_key.items() if j.status == "ok"}
            name = job.key.replace("/", "-")
            result_path = str(logs / f"{name}.json")
            proc = mp.Process(target=_child_main, args=(job, ctx, result_path, str(logs / f"{name}.log")))
            proc.start()
            job.status = "running"
            running[proc.sentinel] = (job, result_path, proc)
        if not running:
            break
        for sentinel in wait(list(running)):
            job, result_path, proc = running.pop(sentinel)
            proc.join()
            try:
                job.result = json.loads(Path(result_path).read_text())
            except (OSError, json.JSONDecodeError):
                job.result = {"status": "failed", "error": f"the child process died (exit code {proc.exitcode})"}
            job.status = job.result.get("status", "failed")
            done += 1
            elapsed = time.perf_counter() - t_start
            print(f"[{done}/{len(jobs)} {elapsed:6.0f}s] {job.key}: {_one_line(job)}", flush=True)


def _one_line(job: Job) -> str:
    r = job.result
    if r.get("status") != "ok":
        return f"{r.get('status')}: {r.get('error', '')[:300]}"
    if job.kind == "reward":
        return f"reward model accuracy {r['reward_model_accuracy']:.3f} ({r['wall_s']:.0f}s)"
    text = (
        f"score {r['score']:.3f}, well-formed {r['well_formed']:.2f}, length {r['length_tokens']:.1f} tokens "
        f"({r['length_words']:.2f} words)"
    )
    if "kl_per_token" in r:
        text += f", pref. acc. {r['preference_accuracy']:.3f}, KL/token {r['kl_per_token']:.3f}"
    return text + f" ({r['wall_s']:.0f}s train)"


# ------------------------------------------------------------------------------------------------ summary
def summarize(
    jobs: list[Job], methods: list[Method], variants: list[str], seeds: list[int], gaps: dict[str, str]
) -> dict:
    from trl_ext.evaluation import mean_and_spread

    by_key = {j.key: j for j in jobs}
    sft = {s: by_key[f"sft/{s}"].result for s in seeds}
    ok_sft = {s: r for s, r in sft.items() if r.get("status") == "ok"}
    summary: dict[str, Any] = {
        "start": {k: mean_and_spread([r[k] for r in ok_sft.values()])
                  for k in ("score", "well_formed", "length_words", "length_tokens", "likelihood_accuracy", "wall_s",
                            "peak_rss_mb")},
        "reward_models": {},
        "methods": {},
    }  # fmt: skip
    for job in jobs:
        if job.kind == "sft" or job.result.get("status") != "ok" or "reward_model_accuracy" not in job.result:
            continue
        label = f"{job.variant} `{job.shape}` (recipes/reward.py)" if job.kind == "reward" else f"{job.variant} `{METHOD_BY_NAME[job.method].shape}` ({job.method}'s own)"  # fmt: skip
        summary["reward_models"].setdefault(label, []).append(job.result["reward_model_accuracy"])
    summary["reward_models"] = {k: mean_and_spread(v) for k, v in summary["reward_models"].items()}
    for m in methods:
        for variant in variants:
            entry: dict[str, Any] = {"method": m.name, "variant": variant, "shape": m.shape, "note": m.note}
            if m.name in gaps:
                entry["status"] = gaps[m.name]
                summary["methods"][f"{m.name}/{variant}"] = entry
                continue
            runs = {s: by_key[f"{m.name}/{s}/{variant}"].result for s in seeds}
            ok = {s: r for s, r in runs.items() if r.get("status") == "ok" and s in ok_sft}
            entry["status"] = "ok" if len(ok) == len(seeds) else f"{len(ok)}/{len(seeds)} seeds ran"
            entry["errors"] = {s: r.get("error") for s, r in runs.items() if r.get("status") != "ok"}
            entry["seeds"] = sorted(ok)
            per_seed = {
                "score_before": [ok_sft[s]["score"] for s in ok],
                "score_after": [r["score"] for r in ok.values()],
                "delta_score": [r["score"] - ok_sft[s]["score"] for s, r in ok.items()],
                "likelihood_accuracy_before": [ok_sft[s]["likelihood_accuracy"] for s in ok],
                "likelihood_accuracy_after": [r["likelihood_accuracy"] for r in ok.values()],
                "preference_accuracy": [r["preference_accuracy"] for r in ok.values()],
                "kl_per_token": [r["kl_per_token"] for r in ok.values()],
                "kl_per_sequence": [r["kl_per_sequence"] for r in ok.values()],
                "length_before": [ok_sft[s]["length_tokens"] for s in ok],
                "length_after": [r["length_tokens"] for r in ok.values()],
                "delta_length": [r["length_tokens"] - ok_sft[s]["length_tokens"] for s, r in ok.items()],
                "length_words_before": [ok_sft[s]["length_words"] for s in ok],
                "length_words_after": [r["length_words"] for r in ok.values()],
                "delta_length_words": [r["length_words"] - ok_sft[s]["length_words"] for s, r in ok.items()],
                "finished": [r["finished"] for r in ok.values()],
                "well_formed": [r["well_formed"] for r in ok.values()],
                "wall_s": [r["wall_s"] for r in ok.values()],
                "peak_rss_mb": [r["peak_rss_mb"] for r in ok.values()],
            }
            entry["per_seed"] = per_seed
            entry["stats"] = {k: mean_and_spread(v) for k, v in per_seed.items()}
            d = per_seed["delta_score"]
            entry["clear_gain"] = bool(d) and len(d) == len(seeds) and min(d) > 0 and sum(d) / len(d) >= CLEAR_MARGIN
            summary["methods"][f"{m.name}/{variant}"] = entry
    # What the length confound adds: Δ length on the confounded data minus Δ length on the clean data, per method.
    for name in {m.name for m in methods}:
        clean = summary["methods"].get(f"{name}/clean", {}).get("stats", {}).get("delta_length", {})
        confounded_entry = summary["methods"].get(f"{name}/length", {})
        confounded = confounded_entry.get("stats", {}).get("delta_length", {})
        if clean.get("n") and confounded.get("n"):
            confounded_entry["extra_length_from_confound"] = confounded["mean"] - clean["mean"]
    return summary


def _ipo_family_line(summary: dict) -> list[str]:
    """One line of figures: what the confound does to TRL's IPO and to the length-aware variants (no verdict)."""
    parts = []
    for name in ("ipo", "ipo_len_auto", "ipo_len_ld"):
        e = summary["methods"].get(f"{name}/length", {})
        if "stats" not in e or e.get("extra_length_from_confound") is None:
            continue
        s = e["stats"]
        parts.append(
            f"`{name}` extra length {e['extra_length_from_confound']:+.1f} tokens, Δ score {_pm(s['delta_score'])}, "
            f"finished {_mean(s['finished'], 2)}, well-formed {_mean(s['well_formed'], 2)}"
        )
    return ["", "**IPO on the confounded data:** " + "; ".join(parts) + "."] if parts else []


def _pm(stats: dict | None, digits: int = 3) -> str:
    if not stats or not stats.get("n"):
        return "n/a"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def _mean(stats: dict | None, digits: int = 3) -> str:
    return "n/a" if not stats or not stats.get("n") else f"{stats['mean']:.{digits}f}"


def markdown(summary: dict, meta: dict) -> str:
    """The RESULTS.md section: the main table (clean data), the length table (confounded data), the gaps."""
    seeds = meta["seeds"]
    start = summary["start"]
    lines = [
        f"### `{meta['command']}`",
        "",
        f"{meta['date']}; commit {meta.get('git', {}).get('commit', 'unknown')}"
        f"{'' if meta.get('git', {}).get('clean') else ' (with uncommitted changes)'}; "
        f"{', '.join(f'{k} {v}' for k, v in meta.get('versions', {}).items())}.",
        f"{len(seeds)} seeds ({', '.join(map(str, seeds))}); {meta['machine']}; "
        f"total wall time {meta['total_wall_s']:.0f} s with {meta['workers']} worker processes; the jobs used "
        f"{meta.get('total_job_cpu_s', float('nan')):.0f} CPU-seconds in all (1-minute load average "
        f"{meta.get('load_average', [float('nan')] * 2)[0]:.1f} at the start, {meta.get('load_average', [float('nan')] * 2)[1]:.1f} at the end).",
        "Values are mean ± sample standard deviation over the seeds. Ground-truth score = fraction of good words in "
        f"fresh samples (temperature 1) on {meta['budget']['eval_prompts']} held-out prompts x "
        f"{meta['budget']['eval_samples']}; held-out preference accuracy on {meta['n_test_pairs']} true pairs "
        "(ordered by the ground truth).",
        "",
        f"Starting point (SFT, {meta['budget']['sft_steps']} steps, full fine-tuning): score {_pm(start['score'])}, "
        f"well-formed words {_pm(start['well_formed'])}, length {_pm(start['length_tokens'], 1)} tokens "
        f"({_pm(start['length_words'], 2)} words), "
        f"likelihood preference accuracy {_pm(start['likelihood_accuracy'])}.",
    ]
    if summary["reward_models"]:
        rms = ", ".join(f"{k}: {_pm(v)}" for k, v in summary["reward_models"].items())
        lines.append(f"Reward models (held-out pairwise accuracy): {rms}.")
    ran = [e for e in summary["methods"].values() if e["variant"] == "clean" and "stats" in e]
    if ran:
        clear = [e for e in ran if e["clear_gain"]]
        low = min(ran, key=lambda e: e["stats"]["delta_score"]["mean"])
        lines += [
            "",
            f"**{len(clear)} of {len(summary['methods']) // max(len(meta.get('variants', ['clean'])), 1)} methods "
            f"improve their ground-truth score on held-out prompts by a clear margin** (clean data, seeds "
            f"{', '.join(map(str, seeds))}); the smallest mean gain is {low['method']}'s "
            f"{_pm(low['stats']['delta_score'])} (lowest seed {low['stats']['delta_score']['min']:+.3f}).",
        ]
    lines += [
        "",
        f"**Clean training data** (gamma = 0). Clear gain = mean Δ score ≥ {CLEAR_MARGIN} and every seed improves.",
        "",
        "| method | data shape | score after | Δ score | clear gain | pref. acc. (implicit reward) | likelihood acc. before → after | KL / token | well-formed words | length (tokens) before → after | train wall s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    gaps = []
    for _key, e in summary["methods"].items():
        if e["variant"] != "clean":
            continue
        if "stats" not in e:
            lines.append(f"| {e['method']} | `{e['shape']}` | — | — | gap | — | — | — | — | — | — | — |")
            gaps.append(f"- **{e['method']}**: {e['status']}")
            continue
        s = e["stats"]
        flag = "yes" if e["clear_gain"] else "**no**"
        if e["status"] != "ok":
            flag += f" ({e['status']})"
            gaps.append(f"- **{e['method']}** (clean): {e['status']}; errors: {e['errors']}")
        lines.append(
            f"| {e['method']} | `{e['shape']}` | {_pm(s['score_after'])} | {_pm(s['delta_score'])} | {flag} | "
            f"{_pm(s['preference_accuracy'])} | {_mean(s['likelihood_accuracy_before'])} → "
            f"{_mean(s['likelihood_accuracy_after'])} | {_pm(s['kl_per_token'])} | {_mean(s['well_formed'], 2)} | "
            f"{_mean(s['length_before'], 1)} → {_pm(s['length_after'], 1)} | {_mean(s['wall_s'], 0)} | "
            f"{_mean(s['peak_rss_mb'], 0)} |"
        )
    if any(e["variant"] == "length" for e in summary["methods"].values()):
        lines += [
            "",
            "**Length-confounded training data** (gamma = 1.5: the annotator also prefers longer answers; the held-out "
            "truth is still length-free). Δ length = tokens (bytes) per generation over the SFT start; extra length = "
            "Δ length on the confounded data minus Δ length on the clean data; finished = generations that end with "
            "EOS within the token limit; well-formed = share of generated words that are words of the task's "
            "vocabulary. A method that stops ending its answers or writing words also grows longer: read the "
            "extra length together with those two columns.",
        ]
        lines += _ipo_family_line(summary)
        lines += [
            "",
            "| method | Δ length, clean data | Δ length, confounded data | extra length from the confound | finished, confounded | well-formed, confounded | score after, confounded | Δ score, confounded |",
            "|---|---|---|---|---|---|---|---|",
        ]  # fmt: skip
        for _key, e in summary["methods"].items():
            if e["variant"] != "length":
                continue
            clean = summary["methods"].get(f"{e['method']}/clean", {})
            if "stats" not in e:
                lines.append(f"| {e['method']} | — | — | — | — | — | — | — |")
                continue
            if e["status"] != "ok":
                gaps.append(f"- **{e['method']}** (confounded): {e['status']}; errors: {e['errors']}")
            s = e["stats"]
            extra = e.get("extra_length_from_confound")
            lines.append(
                f"| {e['method']} | {_pm(clean.get('stats', {}).get('delta_length'), 1)} | {_pm(s['delta_length'], 1)} | "
                f"{'n/a' if extra is None else f'{extra:+.1f}'} | {_mean(s['finished'], 2)} | {_mean(s['well_formed'], 2)} | "
                f"{_pm(s['score_after'])} | {_pm(s['delta_score'])} |"
            )
    lines += ["", "Methods (data shape -> trainer):", ""]
    lines += [
        f"- {m['method']}: `{m['shape']}` -> {m['note']}"
        for k, m in summary["methods"].items()
        if k.endswith("/clean")
    ]
    if gaps:
        lines += ["", "**Gaps** (no number is reported for these):", "", *gaps]
    lines += ["", f"![alignment benchmark]({meta['plot']})", ""]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = [e for e in summary["methods"].values() if e["variant"] == "clean" and "stats" in e]
    conf = {e["method"]: e for e in summary["methods"].values() if e["variant"] == "length" and "stats" in e}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    names = [e["method"] for e in clean]
    x = range(len(names))
    before = [e["stats"]["score_before"]["mean"] for e in clean]
    after = [e["stats"]["score_after"]["mean"] for e in clean]
    err = [e["stats"]["score_after"]["std"] for e in clean]
    ax.bar([i - 0.27 for i in x], before, width=0.27, color="#9e9e9e", label="SFT start")
    ax.bar(list(x), after, width=0.27, yerr=err, color="#1f77b4", label="after, clean data", capsize=3)
    if conf:
        after_conf = [conf[n]["stats"]["score_after"]["mean"] if n in conf else 0.0 for n in names]
        err_conf = [conf[n]["stats"]["score_after"]["std"] if n in conf else 0.0 for n in names]
        ax.bar([i + 0.27 for i in x], after_conf, width=0.27, yerr=err_conf, color="#d62728",
               label="after, length-confounded data", capsize=3)  # fmt: skip
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.set_ylabel("ground-truth score (held-out prompts)")
    ax.set_ylim(0, 1.18)
    ax.set_title("Ground-truth score on held-out prompts (mean ± sd over seeds)", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    ax = axes[1]
    names2 = [n for n in names if n in conf]
    x2 = range(len(names2))
    by_name = {e["method"]: e for e in clean}
    dl_clean = [by_name[n]["stats"]["delta_length"]["mean"] for n in names2]
    dl_conf = [conf[n]["stats"]["delta_length"]["mean"] for n in names2]
    e_clean = [by_name[n]["stats"]["delta_length"]["std"] for n in names2]
    e_conf = [conf[n]["stats"]["delta_length"]["std"] for n in names2]
    ax.bar([i - 0.2 for i in x2], dl_clean, width=0.4, yerr=e_clean, color="#1f77b4", label="clean data", capsize=3)
    ax.bar([i + 0.2 for i in x2], dl_conf, width=0.4, yerr=e_conf, color="#d62728", label="length-confounded data", capsize=3)  # fmt: skip
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(list(x2), names2, rotation=30, ha="right")
    ax.set_ylabel("Δ length of generations (tokens)")
    ax.set_title("Length exploitation", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results_md(
    section: str, mode: str, path: Path = RESULTS_MD, *, name: str = "alignment", title: str | None = None
) -> None:
    """Put `section` between the markers of benchmark `name` and `mode` in RESULTS.md, keeping the rest of the file
    (a new section is appended under `title`)."""
    begin, end = f"<!-- {name}:{mode}:begin -->", f"<!-- {name}:{mode}:end -->"
    block = f"{begin}\n{section}\n{end}"
    text = path.read_text() if path.exists() else RESULTS_HEADER
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        heading = title or f"Alignment benchmark ({mode})"
        text = text.rstrip("\n") + "\n\n" + f"## {heading}\n\n" + block + "\n"
    path.write_text(text)


RESULTS_HEADER = """# Benchmark results

Produced by the scripts in `benchmarks/`; each section says the command that regenerates it.
"""


# ------------------------------------------------------------------------------------------------ main
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}"


def git_state() -> dict[str, Any]:
    """The commit the figures come from, and whether the tree had uncommitted changes (then they are not reproducible
    from that commit alone)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD")
    # the benchmark's own outputs (an earlier run's RESULTS.md section and results/) do not make the code unclean
    changed = git(
        "status", "--porcelain", "--", ".", ":(exclude)benchmarks/RESULTS.md", ":(exclude)benchmarks/results"
    )
    return {"commit": commit or "unknown", "clean": commit != "" and changed == ""}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="the quick table: 3 seeds, short runs (< 10 min, 2 cores)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: 0 1 2 quick, 0..4 full)")
    parser.add_argument("--methods", nargs="+", choices=[m.name for m in METHODS], help="a subset of the methods")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--workers", type=int, default=2, help="parallel child processes (one torch thread each)")
    parser.add_argument("--steps", type=int, help="override the training steps of every method")
    parser.add_argument("--workdir", default=str(REPO_ROOT / "runs" / "alignment"))
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results or RESULTS.md")
    parser.add_argument(
        "--reuse-sft", action="store_true", help="reuse an SFT model of an earlier run with the same settings"
    )
    parser.add_argument(
        "--flags",
        action="append",
        default=[],
        metavar="METHOD=FLAGS",
        help='extra recipe flags for one method, e.g. --flags "orpo=--beta 0.5" (a partial run)',
    )
    args = parser.parse_args(argv)

    mode = "quick" if args.quick else "full"
    budget = QUICK if args.quick else FULL
    if args.seeds:
        budget = replace(budget, seeds=tuple(args.seeds))
    if args.steps:
        budget = replace(budget, steps=args.steps)
    extra = dict(item.split("=", 1) for item in args.flags)
    methods = [
        replace(m, flags=m.flags + tuple(extra.get(m.name, "").split()))
        for m in METHODS
        if not args.methods or m.name in args.methods
    ]
    for m in methods:  # the children look methods up by name
        METHOD_BY_NAME[m.name] = m
    partial = bool(args.methods or args.seeds or args.steps or args.flags or set(args.variants) != set(VARIANTS))
    seeds = list(budget.seeds)
    workdir = Path(args.workdir) / mode
    workdir.mkdir(parents=True, exist_ok=True)

    # Import everything once in this process so the forked children start with it loaded.
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401
    import trl  # noqa: F401

    from trl_ext.toy.tiny import tiny_model_path

    torch.set_num_threads(1)
    tiny_model_path()  # build the tiny model once, before the children need it
    load_recipe("sft")
    gaps = {m.name: reason for m in methods if (reason := recipe_status(m))}
    for name, reason in gaps.items():
        print(f"GAP {name}: {reason}", flush=True)
    runnable = [m for m in methods if m.name not in gaps]
    if any(m.reward_model for m in runnable):
        load_recipe("reward")
    ctx = {
        "budget": budget,
        "workdir": str(workdir),
        "data": {s: write_data(workdir, s, budget, runnable, args.variants) for s in seeds},
        "results": {},
        "reuse_sft": args.reuse_sft,
    }
    jobs = plan(seeds, runnable, args.variants)
    runtime_rss = _rss_mb()
    print(f"{len(jobs)} jobs ({len(seeds)} seeds x {len(runnable)} methods x {len(args.variants)} variants + SFT and reward models), "
          f"{args.workers} workers; logs in {workdir / 'logs'}", flush=True)  # fmt: skip
    t0, load_before = time.perf_counter(), os.getloadavg()[0]
    run_all(jobs, ctx, args.workers)
    total, load_after = time.perf_counter() - t0, os.getloadavg()[0]

    summary = summarize(jobs, methods, args.variants, seeds, gaps)
    tag = mode if not partial else f"{mode}-partial"
    command = "python benchmarks/alignment.py" + (" --quick" if args.quick else "")
    if partial:
        command = "python benchmarks/alignment.py " + " ".join(argv if argv is not None else sys.argv[1:])
    from trl_ext.model_card import library_versions

    meta = {
        "command": command,
        "mode": mode,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "seeds": seeds,
        "variants": args.variants,
        "workers": args.workers,
        "total_wall_s": total,
        "total_job_cpu_s": sum(j.result.get("job_cpu_s", 0.0) for j in jobs),
        "load_average": [load_before, load_after],
        "runtime_rss_mb": runtime_rss,
        "budget": asdict(budget),
        "n_test_pairs": len(read_jsonl(ctx["data"][seeds[0]]["test_pairs"])),
        "plot": f"results/alignment-{tag}.png",
        "versions": library_versions(),
        "git": git_state(),
    }
    payload = {"meta": meta, "summary": summary, "jobs": {j.key: {**asdict(j)} for j in jobs}}
    out_dir = RESULTS_DIR if not args.no_write else workdir
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=1, default=str).replace(str(REPO_ROOT) + os.sep, "")  # repo-relative paths
    (out_dir / f"alignment-{tag}.json").write_text(text + "\n")
    plot(summary, out_dir / f"alignment-{tag}.png")
    section = markdown(summary, meta)
    (out_dir / f"alignment-{tag}.md").write_text(section + "\n")
    if not args.no_write and not partial:
        write_results_md(section, mode)
    print(section)
    print(f"\nwrote {out_dir / f'alignment-{tag}.json'}" + ("" if args.no_write or partial else f" and {RESULTS_MD}"))
    return payload


if __name__ == "__main__":
    main()
