"""Evaluate a trained adapter or model against its base: did the run make the model better?

Reports, on evaluation data in any input shape (read by `dataset_builders.load`):

- preference accuracy of the implicit reward log pi/pi_ref on held-out pairs (any shape that carries a preference:
  pairs, pairwise_ab, ranked, pairs_with_lengths, pairs_sft_target, HH-RLHF, scored lists), or for good/bad labels
  (`binary`) the probability that a good completion outranks a bad one;
- with `--reward_model_name_or_path`: the reward model's pairwise accuracy on those pairs, and the win rate of the
  policy's generations over the reference's under it;
- length of generations (mean and distribution), policy vs reference, and KL(pi || pi_ref) per token on the policy's
  own samples, on the data's prompts;
- with `--constraint_prompts_path` (prompts with IFEval-style constraints, e.g. the held-out
  `recipes/data/ifeval-heldout-prompts.jsonl`): greedy answers of both, checked by IFEval's checkers: prompt-level
  and instruction-level strict pass rate, base vs trained, the paired gain with its standard error, and a few answers
  side by side (an answer cut at `--constraint_max_new_tokens` follows nothing).

The reference is the base with the adapter disabled for a LoRA adapter (no second copy), or
`--base_model_name_or_path` for a full (merged) model. Output: `metrics.json`, `metrics.md` and PNG histograms
(reward margin, length and score, before vs after) in `--output_dir`; `--update_model_card true` appends the table and
figures to the model's README.md (when the model is a local folder).

    # offline, CPU: the DPO tiny-cpu run, evaluated on the example pairs
    python recipes/evaluate.py --model_name_or_path outputs/dpo-tiny-cpu --dataset_path recipes/data/pairs.jsonl \
        --output_dir outputs/dpo-tiny-cpu/eval --update_model_card true
    # the quick start: the DPO run on SmolLM2, on held-out constraint prompts (requests it never saw)
    python recipes/evaluate.py --model_name_or_path outputs/dpo-smollm2-ifeval-cpu \
        --constraint_prompts_path recipes/data/ifeval-heldout-prompts.jsonl --output_dir outputs/dpo-smollm2-ifeval-cpu/eval
    # a QLoRA adapter of a 7B model on one GPU, with a reward model
    python recipes/evaluate.py --model_name_or_path my-dpo-adapter --dataset_path heldout.jsonl \
        --reward_model_name_or_path my-reward-model --load_in_4bit true --dtype bfloat16 --output_dir eval
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

PAIR_CAPABLE = ("pairwise_ab", "pairs", "pairs_with_lengths", "pairs_sft_target", "ranked", "hh_rlhf", "ultrafeedback")


@dataclass
class EvaluateArguments:
    """Arguments of `recipes/evaluate.py` (also readable from a YAML file with `--config`)."""

    model_name_or_path: str = field(metadata={"help": "The trained LoRA adapter folder or (merged/full) model."})
    dataset_path: str | None = field(default=None, metadata={"help": "Evaluation data in any input shape (file, save_to_disk folder, Hub id)."})  # fmt: skip
    constraint_prompts_path: str | None = field(
        default=None,
        metadata={"help": "Prompts with IFEval-style constraints (instruction_id_list, kwargs): greedy pass rates, "
                  "base vs trained."},
    )  # fmt: skip
    max_constraint_prompts: int | None = field(default=100, metadata={"help": "Use at most this many constraint prompts."})  # fmt: skip
    constraint_max_new_tokens: int = field(default=128, metadata={"help": "Greedy answer limit for constraint prompts (a cut answer fails)."})  # fmt: skip
    base_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The base (reference). For an adapter, default: the base its adapter_config names. For a "
                  "full model, required for the metrics that need a reference."},
    )  # fmt: skip
    output_dir: str = field(default="eval", metadata={"help": "Where metrics.json, metrics.md and the PNGs go."})
    dataset_shape: str | None = field(default=None, metadata={"help": "Input shape; detected if unset."})
    dataset_split: str = field(default="train", metadata={"help": "Split of a Hub dataset."})
    dataset_options: dict | str | None = field(
        default=None, metadata={"help": "Options for dataset_builders.load (YAML mapping or JSON string)."}
    )
    max_pairs: int | None = field(default=500, metadata={"help": "Evaluate at most this many pairs / labelled rows."})
    num_prompts: int | None = field(default=100, metadata={"help": "Generate for at most this many distinct prompts (0: no generation)."})  # fmt: skip
    num_samples: int = field(default=1, metadata={"help": "Generations per prompt (policy and reference each)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Generation length limit."})
    max_length: int | None = field(default=2048, metadata={"help": "Prompt + completion token limit for scoring."})
    length_unit: str = field(default="tokens", metadata={"help": "Unit of reported lengths.", "choices": ["tokens", "words", "chars"]})  # fmt: skip
    batch_size: int = field(default=8, metadata={"help": "Batch size for scoring and generation."})
    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A sequence-classification reward model (or its LoRA adapter)."}
    )
    dtype: str | None = field(default=None, metadata={"help": "float32, bfloat16, float16 or auto (default: the model's)."})  # fmt: skip
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the base in 4-bit NF4 (GPU, bitsandbytes)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code."})
    seed: int = field(default=42, metadata={"help": "Sampling seed."})
    plots: bool = field(default=True, metadata={"help": "Write the PNG histograms (needs matplotlib)."})
    update_model_card: bool = field(
        default=False, metadata={"help": "Append the metrics and figures to <model>/README.md (local folders)."}
    )

    def __post_init__(self):
        if not self.dataset_path and not self.constraint_prompts_path:
            raise ValueError("give --dataset_path (evaluation data) and/or --constraint_prompts_path (constraint prompts)")  # fmt: skip
        if isinstance(self.dataset_options, str):
            self.dataset_options = json.loads(self.dataset_options) if self.dataset_options.strip() else None


def make_parser():
    from trl import TrlParser

    return TrlParser((EvaluateArguments,))


def load_eval_data(args: EvaluateArguments) -> dict:
    """From data in any shape: pairs (for preference accuracy), labelled rows (binary) and distinct prompts."""
    import dataset_builders

    out: dict = {"shape": None, "pairs": [], "labelled": [], "prompts": [], "constraints": []}
    if args.constraint_prompts_path:
        out["constraints"] = load_constraint_prompts(args.constraint_prompts_path, args.max_constraint_prompts)
    if not args.dataset_path:
        return out
    options = dict(args.dataset_options or {})
    if args.dataset_split != "train":
        options.setdefault("split", args.dataset_split)
    shape = out["shape"] = args.dataset_shape or dataset_builders.detect(args.dataset_path)

    def first(ds, n):
        return ds.select(range(min(n, len(ds)))) if n is not None else ds

    if shape in PAIR_CAPABLE:
        pairs = dataset_builders.load(args.dataset_path, method="dpo", shape=args.dataset_shape, **options)
        out["pairs"] = first(pairs, args.max_pairs).to_list()
    elif shape == "binary":
        rows = dataset_builders.load(args.dataset_path, method="kto", shape=args.dataset_shape, **options)
        out["labelled"] = first(rows, args.max_pairs).to_list()
    if shape == "messages":
        raise SystemExit(
            f"{args.dataset_path}: `messages` rows carry no separate prompt to generate from; give prompt/completion "
            "rows or any preference shape"
        )
    prompts = dataset_builders.load(args.dataset_path, method="ppo", shape=args.dataset_shape, **options)["prompt"]
    seen, distinct = set(), []
    for p in prompts:
        key = json.dumps(p, sort_keys=True)
        if key not in seen:
            seen.add(key)
            distinct.append(p)
    out["prompts"] = distinct[: args.num_prompts] if args.num_prompts is not None else distinct
    return out


def load_constraint_prompts(path: str, limit: int | None) -> list[dict]:
    """Rows with a prompt and IFEval constraints, each checked before a model loads (one line naming the row)."""
    import dataset_builders
    from trl_ext.rewards import check_reward_columns, instruction_following

    rows = dataset_builders.load(path, method="ppo")
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    check_reward_columns([instruction_following], rows, path)
    return rows.to_list()


def main(argv=None):
    (args,) = make_parser().parse_args_and_config(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, stream=sys.stdout
    )

    from trl_ext import eval_report, evaluation, models

    data = load_eval_data(args)
    logger.info("Data (%s): %d pairs, %d labelled rows, %d prompts, %d constraint prompts", data["shape"], len(data["pairs"]), len(data["labelled"]), len(data["prompts"]), len(data["constraints"]))  # fmt: skip
    model, ref_model, tokenizer = models.load_policy(
        args.model_name_or_path,
        args.base_model_name_or_path,
        dtype=args.dtype,
        load_in_4bit=args.load_in_4bit,
        trust_remote_code=args.trust_remote_code,
        device="cuda" if _cuda() else None,
    )
    if not evaluation.has_reference(model, ref_model):
        logger.warning(
            "%s is a full model and no --base_model_name_or_path was given: implicit-reward accuracy, KL and win rate "
            "need a reference and are left out.",
            args.model_name_or_path,
        )
    reward_model = reward_tokenizer = None
    if args.reward_model_name_or_path:
        reward_model, reward_tokenizer = models.load_reward_model(
            args.reward_model_name_or_path, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
            device="cuda" if _cuda() else None,
        )  # fmt: skip
    report = evaluation.evaluate_policy(
        model,
        tokenizer,
        ref_model=ref_model,
        pairs=data["pairs"],
        labelled=data["labelled"],
        prompts=data["prompts"] if args.num_prompts != 0 else None,
        constraint_rows=data["constraints"],
        constraint_max_new_tokens=args.constraint_max_new_tokens,
        reward_model=reward_model,
        reward_tokenizer=reward_tokenizer,
        max_new_tokens=args.max_new_tokens,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        max_length=args.max_length,
        length_unit=args.length_unit,
        seed=args.seed,
    )
    extra = {
        "model": args.model_name_or_path,
        "reference": args.base_model_name_or_path
        or (
            "base with adapter disabled" if ref_model is None and evaluation.has_reference(model) else "none"
        ),  # fmt: skip
        "dataset": args.dataset_path,
        "constraint_prompts": args.constraint_prompts_path,
        "shape": data["shape"],
        "reward_model": args.reward_model_name_or_path or "none",
        "arguments": asdict(args),
    }
    card_path = Path(args.model_name_or_path) / "README.md"
    # "held-out" only when the run did not read this file (its card names its training data)
    card_text = card_path.read_text() if card_path.is_file() else None
    label = eval_report.pairs_label(args.dataset_path, card_text) if args.dataset_path else eval_report.HELD_OUT
    extra["pairs"] = label
    files = eval_report.write_report(report, args.output_dir, plots=args.plots, extra=extra, pairs_label=label)
    logger.info("Wrote %s and %s", files["json"], files["markdown"])
    print(eval_report.markdown_table(report["metrics"], pairs_label=label))
    if args.update_model_card:
        folder = Path(args.model_name_or_path)
        if folder.is_dir():
            card = eval_report.update_model_card(
                folder / "README.md", report["metrics"], files["figures"], pairs_label=label
            )
            logger.info("Model card updated: %s", card)
        else:
            logger.warning("update_model_card: %s is not a local folder; nothing updated", folder)
    return files


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES", None) != ""


if __name__ == "__main__":
    from trl_ext.recipe import run_script

    run_script(main)
