"""On-policy preference data: sample k answers per prompt from a model, score them, write one of the input shapes.

`recipes/generate.py` (and `trl-ext generate`) runs `generate_preference_data`:

1. prompts from any data file with a prompt (`dataset_builders.load(..., method="ppo")`: a prompt's constraint
   fields `instruction_id_list`/`kwargs` come along);
2. `num_generations` answers per prompt from the model (a base model, a LoRA adapter folder, 4-bit or not), sampled
   from ``softmax(logits / temperature)`` exactly: no top-k, top-p or penalty, nothing from the checkpoint's
   generation config (`trl_ext.sampling`);
3. each answer scored by the reward functions and/or a reward model, weighted (`trl_ext.rewards`);
4. rows of the asked shape appended to a JSONL file, a batch of prompts at a time, with a sidecar
   `<output>.meta.json` recording the model, rewards, sampling settings, seed, commit, library versions, counts and
   progress. An interrupted run started again with the same settings continues after the last batch written (the
   file is cut back to the end of that batch first): the result is the file an uninterrupted run writes, since
   each batch samples from its own seed.

Shapes (`shape_rows`): `pairs` (best vs worst answer), `pairs_with_lengths` (+ their token counts), `pairs_sft_target`
(+ `sft_target: "chosen"`), `ranked` (all answers, ranks from the scores; equal scores share a rank), `binary`
(best `good` and worst `bad`; or, with `binary_threshold`, every answer labelled by its score). A prompt whose answers
all score the same gives no pair (and no ranked row, which would carry no signal): skipped and counted. An answer cut
at `max_new_tokens` ranks below every answer that ended (`truncated: worst`), or is left out (`drop`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trl_ext import models, rewards
from trl_ext.model_card import library_versions, source_commit
from trl_ext.ranked_grpo.online import RewardModelScorer
from trl_ext.rewards.checkers import normalize_kwargs

logger = logging.getLogger(__name__)

SHAPES = ("pairs", "binary", "ranked", "pairs_with_lengths", "pairs_sft_target")
META_SUFFIX = ".meta.json"
ALL_TIED = "all answers scored the same (no preference)"
NO_ANSWER = "fewer than two answers left (the others cut at max_new_tokens)"
TRUNCATED = ("worst", "drop", "keep")


@dataclass
class GenerateArguments:
    """What `recipes/generate.py` takes besides `trl.ModelConfig` (the model: `model_name_or_path`, `dtype`,
    `load_in_4bit`).

    Parameters:
        dataset_path: Prompts: any data file with a prompt (a prompts file, pairs, ranked lists, HH-RLHF ...).
        dataset_options / dataset_format / dataset_columns: as the training recipes take them.
        output_path: The JSONL file to write (its sidecar: `<output_path>.meta.json`).
        shape: pairs, binary, ranked, pairs_with_lengths or pairs_sft_target.
        num_generations: Answers sampled per prompt (k).
        max_prompts: Use only the first N prompts.
        max_new_tokens: Answer length limit, in tokens.
        temperature: Sampling temperature (the full softmax at this temperature; no top-k / top-p).
        prompts_per_batch: Prompts per generation call (each with its k answers): the unit written and resumed.
        seed: Base seed; batch b samples with its own seed derived from it.
        reward_functions / reward_model_path / reward_weights: the rewards, as PPO and online GRPO take them.
        binary_threshold: binary shape: label every answer, `good` if its score >= this; unset: best good, worst bad.
        truncated: An answer cut at max_new_tokens (no end of turn): `worst` (default: it ranks below every answer
            that ended, whatever its reward; a cut answer is never chosen over a finished one), `drop` (left out of
            the candidates) or `keep` (ranked by its reward alone). Counted in the sidecar either way.
        repair: Prompts with constraints: where no finished answer follows all of them, the best answer rewritten by
            each instruction's rule (`trl_ext.rewards.repairs`; a cut answer trimmed to whole sentences first) joins
            the candidates when IFEval's checkers confirm it follows every constraint. Such a row records
            `"chosen_repaired": true`; the sidecar counts them.
        overwrite: Start again even if output_path holds an earlier run's rows.
        trust_remote_code: Allow the model's repository to run its own code when loading (off by default).
    """

    dataset_path: str | None = field(default=None, metadata={"help": "Prompts: any data file with a prompt."})
    dataset_options: dict | str | None = field(default=None, metadata={"help": "Options for dataset_builders.load."})
    dataset_format: str | None = field(default=None, metadata={"help": "Another project's layout of the prompts."})
    dataset_columns: dict | str | None = field(default=None, metadata={"help": "Your fields as ours (prompt=...)."})
    output_path: str | None = field(default=None, metadata={"help": "JSONL file to write (+ .meta.json sidecar)."})
    shape: str = field(default="pairs", metadata={"help": "Output shape.", "choices": list(SHAPES)})
    num_generations: int = field(default=4, metadata={"help": "Answers sampled per prompt."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest answer, in tokens."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (full softmax, no top-k/p)."})
    prompts_per_batch: int = field(default=4, metadata={"help": "Prompts per generation call (the unit resumed)."})
    seed: int = field(default=0, metadata={"help": "Base seed (each batch of prompts derives its own)."})
    reward_functions: list[str] | None = field(
        default=None, metadata={"help": "Rule-based rewards: instruction_following, or dotted paths."}
    )
    reward_model_path: str | None = field(default=None, metadata={"help": "A reward model (recipes/reward.py)."})
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per reward: the reward model first, then reward_functions."}
    )
    binary_threshold: float | None = field(
        default=None, metadata={"help": "binary: good if score >= this (every answer); unset: best/worst only."}
    )
    truncated: str = field(
        default="worst",
        metadata={
            "help": "Answers cut at max_new_tokens: worst (rank last), drop, or keep.",
            "choices": list(TRUNCATED),
        },
    )
    repair: bool = field(
        default=False,
        metadata={"help": "Where no answer follows every constraint: add the best one rewritten to follow them "
                  "(trl_ext.rewards.repairs), verified by IFEval's checkers."},
    )  # fmt: skip
    overwrite: bool = field(default=False, metadata={"help": "Discard an earlier run's rows in output_path."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's repository to run code."})

    def __post_init__(self):
        for name in ("dataset_options", "dataset_columns"):
            value = getattr(self, name)
            if isinstance(value, str):
                if name == "dataset_columns":
                    from dataset_builders.formats import parse_column_map

                    setattr(self, name, parse_column_map(value) if value.strip() else None)
                else:
                    setattr(self, name, json.loads(value) if value.strip() else None)
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {self.shape!r}")
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be at least 2 (a preference needs two answers), got {self.num_generations}")  # fmt: skip
        if self.prompts_per_batch < 1 or self.max_new_tokens < 1:
            raise ValueError("prompts_per_batch and max_new_tokens must be at least 1")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive (sampling), got {self.temperature}")
        if self.truncated not in TRUNCATED:
            raise ValueError(f"truncated must be one of {', '.join(TRUNCATED)}, got {self.truncated!r}")
        if self.repair and self.shape == "binary" and self.binary_threshold is not None:
            raise ValueError("repair adds a rewritten answer to rank; binary_threshold labels sampled answers only")
        if self.binary_threshold is not None and self.shape != "binary":
            raise ValueError("binary_threshold applies to shape binary only")


# --------------------------------------------------------------------------------------------------- shaping
def competition_ranks(keys: Sequence[Any]) -> list[int]:
    """Rank 1 = best (the largest key); equal keys share a rank and the next rank skips ("1224"), so ranks stay in
    1..n."""
    return [1 + sum(other > key for other in keys) for key in keys]


def shape_rows(
    shape: str,
    base: dict[str, Any],
    answers: Sequence[str],
    scores: Sequence[float],
    lengths: Sequence[int],
    binary_threshold: float | None = None,
    finished: Sequence[bool] | None = None,
) -> list[dict[str, Any]]:
    """The rows of `shape` for one prompt (`base`: its prompt and constraint fields) from its scored answers; an empty
    list when the answers carry no preference (all equal).

    Answers are ordered by ``(finished, score)``: with `finished` given (`truncated: worst`), an answer cut at
    max_new_tokens ranks below every answer that ended. The rows record the rewards' own scores.
    """
    finished = [True] * len(answers) if finished is None else list(finished)
    keys = list(zip(finished, scores))
    if shape == "binary" and binary_threshold is not None:
        return [
            {**base, "response": a, "label": "good" if done and s >= binary_threshold else "bad", "score": s}
            for a, s, done in zip(answers, scores, finished)
        ]
    if len(answers) < 2 or max(keys) == min(keys):
        return []
    if shape == "ranked":
        return [{**base, "responses": list(answers), "ranking": competition_ranks(keys), "scores": list(scores)}]
    best = max(range(len(keys)), key=lambda i: keys[i])  # the first of equals
    worst = min(range(len(keys)), key=lambda i: keys[i])
    if shape == "binary":
        return [
            {**base, "response": answers[best], "label": "good", "score": scores[best]},
            {**base, "response": answers[worst], "label": "bad", "score": scores[worst]},
        ]
    row = {
        **base,
        "chosen": answers[best],
        "rejected": answers[worst],
        "chosen_score": scores[best],
        "rejected_score": scores[worst],
    }
    if shape == "pairs_with_lengths":
        row["chosen_length"], row["rejected_length"] = lengths[best], lengths[worst]  # tokens, EOS excluded
    elif shape == "pairs_sft_target":
        row["sft_target"] = "chosen"
    return [row]


# --------------------------------------------------------------------------------------------------- scoring
class Scorer:
    """The weighted sum of the rewards (reward model first, then the functions), called as TRL calls rewards."""

    def __init__(self, functions: Sequence[Callable[..., list[float]]], reward_model: Any = None, weights=None):
        self.rewards: list[Any] = ([reward_model] if reward_model is not None else []) + list(functions)
        if not self.rewards:
            raise ValueError(
                "generate needs a reward: reward_functions (e.g. instruction_following) and/or reward_model_path"
            )
        self.weights = rewards.reward_weights(weights, len(self.rewards))

    def __call__(self, prompts: list, completions: list[str], completion_ids: list, columns: dict[str, list]) -> list[float]:  # fmt: skip
        # TRL's form: a conversational prompt's completion is one assistant message
        as_messages = [[{"role": "assistant", "content": c}] if isinstance(p, list) else c for p, c in zip(prompts, completions)]  # fmt: skip
        total = [0.0] * len(completions)
        for weight, reward in zip(self.weights, self.rewards):
            if isinstance(reward, RewardModelScorer):  # tokenizes as TRL's RewardTrainer trained it
                scores = reward.scores(prompts, completions).tolist()
            else:
                scores = reward(prompts=prompts, completions=as_messages, completion_ids=completion_ids, **columns)
            total = [t + weight * float(s) for t, s in zip(total, scores)]
        return total


# --------------------------------------------------------------------------------------------------- the run
def _settings(args: GenerateArguments, model_args: Any, n_prompts: int) -> dict[str, Any]:
    """What decides the file's rows: a resumed run must have the same."""
    keep = {k: v for k, v in asdict(args).items() if k not in ("output_path", "overwrite", "trust_remote_code")}
    return {
        **keep,
        "model_name_or_path": model_args.model_name_or_path,
        "model_revision": model_args.model_revision,
        "dtype": model_args.dtype,
        "load_in_4bit": bool(model_args.load_in_4bit),
        "sampling": {"temperature": args.temperature, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0},
        "prompts": n_prompts,
    }


def _read_meta(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)  # never half a sidecar


def load_prompts(args: GenerateArguments) -> Any:
    import dataset_builders

    if not args.dataset_path:
        raise ValueError("dataset_path is required (a data file with prompts)")
    options = dict(args.dataset_options or {})
    if args.dataset_format:
        options["format"] = args.dataset_format
    if args.dataset_columns:
        options["columns"] = dict(args.dataset_columns)
    from trl_ext.recipe import packaged_data

    prompts = dataset_builders.load(packaged_data(args.dataset_path), method="ppo", **options)
    if args.max_prompts is not None:
        prompts = prompts.select(range(min(args.max_prompts, len(prompts))))
    return prompts


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k != "sampling")
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:4])


def generate_preference_data(
    args: GenerateArguments, model_args: Any, *, command: str = "", progress: bool = True
) -> dict[str, Any]:
    """Run the generator (see the module docstring); returns the sidecar's content."""
    from tqdm.auto import tqdm

    from trl_ext.evaluation.generation import generate

    if not args.output_path:
        raise ValueError("output_path is required (the JSONL file to write)")
    output = Path(args.output_path)
    meta_path = Path(str(output) + META_SUFFIX)
    prompts = load_prompts(args)  # bad data fails here, before a model loads
    functions = rewards.resolve_reward_functions(args.reward_functions)
    if not functions and not args.reward_model_path:
        raise ValueError("generate needs a reward: reward_functions (e.g. instruction_following) and/or reward_model_path")  # fmt: skip
    rewards.check_reward_columns(functions, prompts, args.dataset_path)
    settings = _settings(args, model_args, len(prompts))

    meta = None if args.overwrite else _read_meta(meta_path)
    if meta is not None and output.exists():
        if meta.get("settings") != settings:
            raise ValueError(
                f"{output} holds rows made with other settings ({_diff(meta.get('settings') or {}, settings)}): "
                "pass --overwrite true to start again, or another --output_path"
            )
        if meta.get("finished"):
            logger.info("%s: already complete (%d rows); nothing to do", output, meta["counts"]["rows"])
            return meta
        with output.open("r+b") as f:  # rows written after the last recorded batch are written again
            f.truncate(meta["progress"]["bytes"])
        logger.info("%s: resuming after %d of %d prompts", output, meta["progress"]["prompts_done"], len(prompts))
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(b"")
        meta = {
            "generator": "trl-ext generate (recipes/generate.py)",
            "command": command,
            "settings": settings,
            **source_commit(),
            "versions": library_versions(),
            "progress": {"prompts_done": 0, "bytes": 0},
            "counts": {"rows": 0, "answers": 0, "truncated": 0, "answer_tokens": 0, "repaired": 0, "skipped": {}},
            "seconds": 0.0,
            "finished": False,
        }
        _write_meta(meta_path, meta)

    reward_model = None
    if args.reward_model_path:
        model, tokenizer = models.load_reward_model(
            args.reward_model_path, dtype=model_args.dtype, load_in_4bit=bool(model_args.load_in_4bit)
        )
        reward_model = RewardModelScorer(model, tokenizer)
    scorer = Scorer(functions, reward_model, args.reward_weights)
    policy, _, tokenizer = models.load_policy(
        model_args.model_name_or_path,
        dtype=model_args.dtype,
        load_in_4bit=bool(model_args.load_in_4bit),
        trust_remote_code=args.trust_remote_code,
    )

    counts = meta["counts"]
    done = meta["progress"]["prompts_done"]
    k = args.num_generations
    extra_columns = [c for c in prompts.column_names if c != "prompt"]
    bar = tqdm(total=len(prompts), initial=done, desc="prompts", unit="prompt", disable=not progress)
    started = time.time()
    with output.open("ab") as out:
        for start in range(done, len(prompts), args.prompts_per_batch):
            batch = prompts.select(range(start, min(start + args.prompts_per_batch, len(prompts))))
            batch_prompts = batch["prompt"]
            generated = generate(
                policy,
                tokenizer,
                batch_prompts,
                max_new_tokens=args.max_new_tokens,
                batch_size=len(batch_prompts) * k,
                temperature=args.temperature,
                num_return_sequences=k,
                seed=args.seed * 1_000_003 + start // args.prompts_per_batch,  # per batch: resumable
                progress=False,
            )
            flat_prompts = [p for p in batch_prompts for _ in range(k)]
            columns = {c: [v for v in batch[c] for _ in range(k)] for c in extra_columns}
            scores = scorer(flat_prompts, generated.completions, generated.completion_ids, columns)
            lengths = [len(ids) - int(f) for ids, f in zip(generated.completion_ids, generated.finished)]
            lines = []
            for i, prompt in enumerate(batch_prompts):
                span = range(i * k, (i + 1) * k)
                kept = [j for j in span if generated.finished[j] or args.truncated != "drop"]
                counts["answers"] += k
                counts["truncated"] += sum(not generated.finished[j] for j in span)
                counts["answer_tokens"] += sum(lengths[j] for j in span)
                base = {"prompt": prompt, **_constraints(batch, i)}
                candidates = (
                    [generated.completions[j] for j in kept],
                    [scores[j] for j in kept],
                    [lengths[j] for j in kept],
                    [generated.finished[j] for j in kept],
                )
                repaired = args.repair and "instruction_id_list" in base and _add_repair(
                    candidates, base, span, generated, scores, scorer, tokenizer, {c: batch[c][i] for c in extra_columns}
                )  # fmt: skip
                rows = shape_rows(
                    args.shape,
                    base,
                    *candidates[:3],
                    args.binary_threshold,
                    candidates[3] if args.truncated == "worst" else None,
                )
                if repaired and any(r.get("chosen") == repaired for r in rows):
                    counts["repaired"] = counts.get("repaired", 0) + 1
                    rows = [dict(r, chosen_repaired=r["chosen"] == repaired) for r in rows]
                if not rows:
                    reason = NO_ANSWER if len(kept) < 2 else ALL_TIED
                    counts["skipped"][reason] = counts["skipped"].get(reason, 0) + 1
                lines += [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
            data = "".join(lines).encode("utf-8")
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
            counts["rows"] += len(lines)
            meta["progress"] = {"prompts_done": start + len(batch_prompts), "bytes": out.tell()}
            meta["seconds"] = round(meta["seconds"] + time.time() - started, 2)
            started = time.time()
            _write_meta(meta_path, meta)
            bar.update(len(batch_prompts))
    bar.close()
    seconds = max(meta["seconds"], 1e-9)
    meta["speed"] = {
        "answers_per_second": round(counts["answers"] / seconds, 3),
        "answer_tokens_per_second": round(counts["answer_tokens"] / seconds, 2),
    }
    meta["finished"] = True
    _write_meta(meta_path, meta)
    skipped = ", ".join(f"{n} {reason}" for reason, n in counts["skipped"].items()) or "none"
    logger.info(
        "%s: %d %s rows from %d prompts (%d answers, %d cut at max_new_tokens); prompts skipped: %s; %.1f answers/s",
        output, counts["rows"], args.shape, len(prompts), counts["answers"], counts["truncated"], skipped,
        meta["speed"]["answers_per_second"],
    )  # fmt: skip
    return meta


def _add_repair(candidates, base, span, generated, scores, scorer, tokenizer, columns) -> str | None:
    """Append the best answer rewritten to follow every constraint to `candidates` (answers, scores, lengths,
    finished) when no finished answer already follows them all and the rewrite verifies; the rewrite, if appended."""
    from trl_ext.rewards.checkers import text_of, verify
    from trl_ext.rewards.repairs import repair

    ids, arguments, prompt = base["instruction_id_list"], base["kwargs"], text_of(base["prompt"])
    answers, _, _, finished = candidates
    if any(done and verify(a, ids, arguments, prompt).all_followed for a, done in zip(answers, finished)):
        return None
    best = max(span, key=lambda j: (generated.finished[j], scores[j]))  # the first of equals
    rewritten = repair(generated.completions[best], ids, arguments, prompt, finished=generated.finished[best])
    if rewritten is None:
        return None
    ids_ = tokenizer(rewritten, add_special_tokens=False)["input_ids"]
    score = scorer([base["prompt"]], [rewritten], [ids_], {c: [v] for c, v in columns.items()})[0]
    for column, value in zip(candidates, (rewritten, score, len(ids_), True)):
        column.append(value)
    return rewritten


def _constraints(batch: Any, i: int) -> dict[str, Any]:
    """The prompt's constraint fields as IFEval writes them (no unset arguments)."""
    if "instruction_id_list" not in batch.column_names:
        return {}
    ids = list(batch["instruction_id_list"][i])
    kwargs = batch["kwargs"][i] if "kwargs" in batch.column_names else None
    return {"instruction_id_list": ids, "kwargs": normalize_kwargs(ids, kwargs)}
