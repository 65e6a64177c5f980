"""The model card: the one writer of README.md cards, fed plain values.

`render(ModelCard(...))` writes the card a recipe leaves next to the weights (base model, method and paper, data and
row counts, hyperparameters, final metrics, the command, library versions); `add_evaluation` puts (or replaces) the
evaluation section that `recipes/evaluate.py` measures. `card_for_run` fills a `ModelCard` from a
recipe's arguments.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import platform
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl_ext.methods import METHODS as _METHOD_TABLE

# method -> (what it is, its paper), from the one table of methods
METHODS: dict[str, tuple[str, str]] = {name: (m.title, m.paper) for name, m in _METHOD_TABLE.items()}

CARD_BEGIN = "<!-- trl-ext evaluation: begin -->"
CARD_END = "<!-- trl-ext evaluation: end -->"


@dataclass
class ModelCard:
    """What a card says, as plain values."""

    name: str
    method: str
    base_model: str
    quantization: str  # e.g. "4-bit NF4 + double quantization, compute in bfloat16", or the dtype
    lora: bool
    is_adapter: bool  # the folder holds a LoRA adapter (else a full or merged model)
    dataset: str | None = None
    dataset_shape: str | None = None
    hub_dataset: bool = False  # `dataset` is a Hub id (the Hub then links it)
    data_reports: list[dict[str, Any]] = field(default_factory=list)  # `dataset_builders.LoadReport.to_dict()`
    train_rows: int | None = None
    eval_rows: int | None = None
    train_steps: int | None = None  # optimizer steps training ran
    train_epochs: float | None = None  # passes over the training rows it made (the trainer's `state.epoch`)
    eval_source: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    versions: dict[str, str] | None = None  # default: `library_versions()`


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a run."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in (
        "trl-ext",
        "trl",
        "transformers",
        "peft",
        "torch",
        "accelerate",
        "datasets",
        "bitsandbytes",
        "if-verifiable",
    ):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def source_commit() -> dict[str, Any]:
    """The project's git commit and whether its tracked files had uncommitted changes (`commit` None outside a git
    checkout, e.g. installed from a wheel): what a recorded result was produced by."""
    import subprocess

    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "--short=12", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "tree_clean": None if status is None else status == ""}


def render(card: ModelCard) -> str:
    """The card as Markdown with the Hub's YAML front matter."""
    title, paper = METHODS.get(card.method, (card.method, "n/a"))
    from trl_ext.embedded import PROVENANCE

    base = card.base_model
    hub_base, base_note = PROVENANCE.get(base, (base, None))
    front: dict[str, Any] = {
        **({"base_model": hub_base} if hub_base else {}),
        "library_name": "peft" if card.is_adapter else "transformers",
        "tags": ["trl", "trl-ext", card.method] + (["lora"] if card.lora else []),
    }
    if card.dataset and card.hub_dataset:
        front["datasets"] = [card.dataset]
    what = "LoRA adapter" if card.is_adapter else ("merged model" if card.lora else "model")
    rows = f"- Rows: {card.train_rows} for training" + (
        f", {card.eval_rows} for evaluation" if card.eval_rows is not None else ", no evaluation set"
    )
    if card.train_steps is not None and card.train_epochs is not None and card.train_rows:
        if card.train_epochs < 1:  # a max_steps run: say how much of the data it saw
            seen = min(card.train_rows, round(card.train_epochs * card.train_rows))
            rows += f"; training ran {card.train_steps} steps and saw about {seen} of the training rows"
        else:
            rows += f"; training ran {card.train_steps} steps, {card.train_epochs:.3g} passes over the training rows"
    lines = ["---", *(f"{k}: {json.dumps(v)}" for k, v in front.items()), "---", ""]
    lines += [
        f"# {card.name}",
        "",
        f"A {what} trained from "
        + (f"[{base}](https://huggingface.co/{hub_base})" if hub_base else f"`{base}`")
        + f" with **{title}** ({card.method}) using trl-ext on top of [TRL](https://github.com/huggingface/trl).",
        "",
        f"- Method: {title}. Paper: {paper}",
        f"- Base model: `{base}` ({card.quantization})" + (", trained through a LoRA adapter" if card.lora else ""),
        *([f"  - `{base}`: {base_note}"] if base_note else []),
        f"- Data: `{card.dataset or 'n/a'}`" + (f" (shape `{card.dataset_shape}`)" if card.dataset_shape else ""),
        *(
            f"  - `{r['source']}`: shape `{r['shape']}`, {r['rows_in']} rows read, {r['dropped']} dropped as invalid, "
            f"{r['rows_out']} rows for {r['method']}"
            + (f", {r['used']} of them used in the mixture" if r.get("used") is not None else "")
            + (f" (left out by the mapping: {r['skipped']})" if r.get("skipped") else "")
            + (f"; read as {r['format']}" if r.get("format") else "")
            for r in card.data_reports
        ),
        rows + (f" (from `{card.eval_source}`)" if card.eval_source else ""),
        "",
        "## Hyperparameters",
        "",
        "| name | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in card.hyperparameters.items()),
        "",
        "## Final metrics",
        "",
    ]
    if card.metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [
            f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(card.metrics.items())
        ]
    else:
        lines.append("(none recorded)")
    versions = card.versions if card.versions is not None else library_versions()
    lines += ["", "## Command", "", "```bash", card.command or "(not recorded)", "```", "", "## Library versions", ""]
    lines += [*(f"- {k}: {v}" for k, v in versions.items()), ""]
    return "\n".join(lines)


def evaluation_section(
    table: str, figures: Mapping[str, str | Path], *, relative_to: str | Path | None = None, title: str = "Evaluation"
) -> str:
    """The card's evaluation section: a metrics table (Markdown) and the figures, paths relative to the card."""
    lines = [CARD_BEGIN, f"## {title}", "", table, ""]
    for name, path in figures.items():
        p = Path(path)
        if relative_to is not None:
            p = Path(os.path.relpath(p.resolve(), Path(relative_to).resolve()))
        lines += [f"![{name}]({p.as_posix()})", ""]
    lines.append(CARD_END)
    return "\n".join(lines)


def add_evaluation(
    card_path: str | Path,
    table: str,
    figures: Mapping[str, str | Path],
    *,
    copy_figures: bool = True,
    title: str = "Evaluation",
) -> Path:
    """Append (or replace) the evaluation section of the card at `card_path` (README.md; created if missing).

    With `copy_figures` the PNGs are copied next to the card (into ``eval/``) so they travel with it to the Hub.
    Running it again replaces the previous section instead of adding a second one.
    """
    card_path = Path(card_path)
    folder = card_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    placed: dict[str, Path] = {}
    for name, path in figures.items():
        src = Path(path)
        if copy_figures:
            target = folder / "eval" / src.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.resolve() != target.resolve():
                shutil.copyfile(src, target)
            placed[name] = target
        else:
            placed[name] = src
    section = evaluation_section(table, placed, relative_to=folder, title=title)
    text = card_path.read_text() if card_path.exists() else ""
    if CARD_BEGIN in text and CARD_END in text:
        head, rest = text.split(CARD_BEGIN, 1)
        text = head + section + rest.split(CARD_END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section + "\n"
    card_path.write_text(text)
    return card_path


# ----------------------------------------------------------------------------------------- from a recipe run
# the training settings a card lists (those the run's config has)
CARD_HYPERPARAMETERS = (
    "learning_rate", "lr_scheduler_type", "warmup_ratio", "warmup_steps", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "max_prompt_length",
    "beta", "loss_type", "label_smoothing", "ld_alpha", "desirable_weight", "undesirable_weight",
    "center_rewards_coefficient", "num_generations", "epsilon", "optim", "weight_decay", "max_grad_norm",
    "gradient_checkpointing", "bf16", "fp16", "seed",
)  # fmt: skip


def _plain(value: Any) -> Any:
    """A setting as the YAML writes it: `constant`, not `SchedulerType.CONSTANT`."""
    return value.value if isinstance(value, enum.Enum) else value


def card_for_run(
    *,
    method: str,
    model_args: Any,
    recipe_args: Any,
    training_args: Any,
    row_counts: dict[str, int | None],
    metrics: dict[str, float],
    is_adapter: bool,
    world_size: int = 1,
) -> str:
    """The README.md written next to the weights (`render`), from a recipe's arguments (`trl.ModelConfig`,
    `trl_ext.recipe.RecipeArguments`, the trainer's config).
    `row_counts` may hold `steps` and `epochs` (what training ran): the card then says how much of the data it saw."""
    hyper = {
        k: _plain(getattr(training_args, k))
        for k in CARD_HYPERPARAMETERS
        if getattr(training_args, k, None) is not None
    }
    if training_args.max_steps > 0:  # max_steps decides the length; num_train_epochs is then not what ran
        hyper.pop("num_train_epochs", None)
    else:
        hyper.pop("max_steps", None)
    hyper["effective_batch_size"] = (
        training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * world_size
    )
    hyper["num_processes"] = world_size
    if model_args.use_peft:
        hyper.update(
            lora_r=model_args.lora_r,
            lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout,
            lora_target_modules=model_args.lora_target_modules or "all-linear",
        )
    if model_args.load_in_4bit:
        nested = " + double quantization" if model_args.use_bnb_nested_quant else ""
        quantization = f"4-bit {model_args.bnb_4bit_quant_type.upper()}{nested}, compute in {model_args.dtype}"
    else:
        quantization = "8-bit" if model_args.load_in_8bit else str(model_args.dtype)
    dataset = recipe_args.dataset_path or (
        f"a mixture of {len(recipe_args.dataset_mixture)} sources" if recipe_args.dataset_mixture else None
    )
    return render(
        ModelCard(
            name=Path(training_args.output_dir).name,
            method=method,
            base_model=model_args.model_name_or_path,
            quantization=quantization,
            lora=bool(model_args.use_peft),
            is_adapter=is_adapter,
            dataset=dataset,
            dataset_shape=recipe_args.dataset_shape,
            hub_dataset=bool(recipe_args.dataset_path) and not os.path.exists(recipe_args.dataset_path),
            data_reports=list(recipe_args.data_reports),
            train_rows=row_counts.get("train"),
            eval_rows=row_counts.get("eval"),
            train_steps=row_counts.get("steps"),
            train_epochs=row_counts.get("epochs"),
            eval_source=recipe_args.eval_dataset_path,
            hyperparameters=hyper,
            metrics=metrics,
            command=recipe_args.command,
        )
    )
