"""What every recipe in `recipes/` shares: parsing, data loading, the NaN guard, save -> merge -> card -> push
(loading models is `trl_ext.models`).

A recipe shows only what is particular to its method; it reads top to bottom (see `recipes/dpo.py`):

    from trl import DPOConfig, DPOTrainer
    from trl_ext import models, recipe

    def make_parser():
        return recipe.make_parser(DPOConfig)

    def main(argv=None):
        args, training_args, model_args = recipe.parse(make_parser(), argv, script=__file__)  # YAML + flags, seed
        train_ds, eval_ds = recipe.load_datasets(args, method="dpo", seed=training_args.seed)  # bad data fails here
        tokenizer = models.load_tokenizer(model_args, training_args)
        model = models.load_model(model_args, training_args)                   # 4-bit NF4 + k-bit prep if asked
        trainer = DPOTrainer(model=model, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
                             processing_class=tokenizer, peft_config=models.lora_config(model_args),
                             callbacks=recipe.callbacks())
        metrics = recipe.train(trainer)                                        # resumes if asked; final eval
        return recipe.finish(trainer, args, model_args, method="dpo", train_dataset=train_ds,
                             eval_dataset=eval_ds, metrics=metrics)           # save, merge, card, push

Conventions the functions keep:

- `push_to_hub` is taken out of the training arguments at parse time (`RecipeArguments.push_to_hub` keeps the
  user's wish), so `transformers.Trainer` never creates a repo at start-up nor pushes checkpoints mid-run; the
  upload happens once, in `finish`, after training ended without error.
- The Hub token is read by `huggingface_hub` from the environment (`HF_TOKEN`) or its login cache; a
  `--hub_token` flag still works but is redacted from the recorded command and never written anywhere.
- Merging never touches 4-bit weights: the base is reloaded in 16-bit and the saved adapter merged into it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shlex
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from trl_ext import engines, models
from trl_ext.model_card import card_for_run

if TYPE_CHECKING:
    import datasets
    from transformers import Trainer, TrainingArguments
    from trl import ModelConfig, TrlParser

logger = logging.getLogger(__name__)

_SECRET_FLAGS = ("--hub_token",)


@dataclass
class MixtureSource:
    """One source of a `dataset_mixture`: where, in which layout, and how much of it."""

    path: str
    format: str | None = None
    columns: dict | None = None
    shape: str | None = None
    options: dict | None = None
    rows: int | None = None
    fraction: float | None = None

    @classmethod
    def parse(cls, entry: Any, index: int) -> MixtureSource:
        if isinstance(entry, MixtureSource):
            return entry
        known = {f.name for f in fields(cls)}
        if not isinstance(entry, dict) or "path" not in entry:
            raise ValueError(f"dataset_mixture[{index}]: expected a mapping with a path, got {entry!r}")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ValueError(f"dataset_mixture[{index}]: unknown key(s) {unknown}; keys are {sorted(known)}")
        source = cls(**entry)
        if source.rows is not None and source.fraction is not None:
            raise ValueError(f"dataset_mixture[{index}] ({source.path}): give rows or fraction, not both")
        if source.rows is not None and (not isinstance(source.rows, int) or source.rows < 1):
            raise ValueError(f"dataset_mixture[{index}] ({source.path}): rows must be a positive integer")
        if source.fraction is not None and not 0 < float(source.fraction) <= 1:
            raise ValueError(f"dataset_mixture[{index}] ({source.path}): fraction must be in (0, 1]")
        return source


@dataclass
class RecipeArguments:
    """Arguments every recipe takes besides its TRL config and `trl.ModelConfig`.

    Parameters:
        dataset_path: A data file (JSON, JSONL, JSON with comments, CSV, Parquet), a folder saved with
            `save_to_disk`, or a Hub dataset id; read by `dataset_builders.load`.
        dataset_shape: One of the input shapes (`pairs`, `pairwise_ab`, ...); detected when left out.
        dataset_split: Split to read from a Hub dataset.
        dataset_format: Another project's layout (`openai_dpo`, `ms_swift_rlhf`, `llamafactory_sharegpt_pairs`,
            ... as docs/data.md lists); detected when its fields are unambiguous.
        dataset_columns: Your fields used as ours: a YAML mapping `{prompt: Question, chosen: Good, rejected: Bad}`
            or, on the command line, `prompt=Question,chosen=Good,rejected=Bad`.
        dataset_options: Extra keyword arguments for `dataset_builders.load` (a mapping in YAML, JSON on the command
            line), e.g. `{"on_error": "drop"}`.
        dataset_mixture: Several sources instead of `dataset_path`: a YAML list (JSON on the command line) of
            `{path, format, columns, shape, options, rows | fraction}`; each source is read with its own layout,
            `rows` (a count) or `fraction` (of its rows) are drawn with the seed, and the mixture is shuffled.
        eval_dataset_path: A separate evaluation set (same forms as `dataset_path`).
        eval_fraction: Without `eval_dataset_path`, hold out this fraction of the training rows (seeded split).
        max_train_samples / max_eval_samples: Keep only the first N rows (after the split); for quick runs.
        merge_adapter: After training a LoRA adapter, also write a merged 16-bit model to `<output_dir>/merged`
            (the base is reloaded in 16-bit; 4-bit weights are never merged). That merged model is what is pushed.
    """

    dataset_path: str | None = field(
        default=None, metadata={"help": "Data file, save_to_disk folder or Hub dataset id (read by dataset_builders)."}
    )
    dataset_shape: str | None = field(
        default=None,
        metadata={"help": "Input shape of the data (pairs, pairwise_ab, binary, ...); detected if unset."},
    )
    dataset_split: str = field(default="train", metadata={"help": "Split to read from a Hub dataset."})
    dataset_format: str | None = field(
        default=None,
        metadata={"help": "Another project's layout (openai_dpo, ms_swift_rlhf, ...); detected when unambiguous."},
    )
    dataset_columns: dict | str | None = field(
        default=None,
        metadata={"help": "Your fields as ours: a YAML mapping, or prompt=Question,chosen=Good,rejected=Bad."},
    )
    dataset_options: dict | str | None = field(
        default=None, metadata={"help": "Extra options for dataset_builders.load: a YAML mapping or a JSON string."}
    )
    dataset_mixture: list | str | None = field(
        default=None,
        metadata={"help": "Several sources: a YAML list of {path, format, columns, shape, options, rows|fraction}."},
    )
    eval_dataset_path: str | None = field(default=None, metadata={"help": "Separate evaluation data."})
    eval_fraction: float = field(
        default=0.0, metadata={"help": "Hold out this fraction of the training data for evaluation (seeded)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N evaluation rows."})
    merge_adapter: bool = field(
        default=False, metadata={"help": "Also write a merged 16-bit model to <output_dir>/merged (and push that)."}
    )
    # Filled in by `parse`, not flags: the user's push wish (taken off the training arguments) and the command.
    push_to_hub: bool = field(default=False, init=False)
    hub_token: str | None = field(default=None, init=False, repr=False)
    command: str = field(default="", init=False)
    # Filled in by `load_datasets`: what dataset_builders read, dropped and left out (`LoadReport.to_dict()`).
    data_reports: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self):
        if isinstance(self.dataset_options, str):
            self.dataset_options = json.loads(self.dataset_options) if self.dataset_options.strip() else None
        if isinstance(self.dataset_mixture, str):
            self.dataset_mixture = json.loads(self.dataset_mixture) if self.dataset_mixture.strip() else None
        if self.dataset_mixture is not None:
            self.dataset_mixture = [MixtureSource.parse(entry, k) for k, entry in enumerate(self.dataset_mixture)]
        if isinstance(self.dataset_columns, str):
            from dataset_builders.formats import parse_column_map

            try:
                self.dataset_columns = parse_column_map(self.dataset_columns) if self.dataset_columns.strip() else None
            except ValueError as error:
                raise ValueError(f"dataset_columns: {error}") from None
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")


# --------------------------------------------------------------------------------------------------------- parsing
def make_parser(config_cls: type, extra_dataclasses: Sequence[type] = ()) -> TrlParser:
    """`trl.TrlParser((RecipeArguments, config_cls, trl.ModelConfig, *extra_dataclasses))`.

    `--config file.yaml` sets defaults from YAML; command-line flags override them.
    """
    from trl import ModelConfig, TrlParser

    return TrlParser((RecipeArguments, config_cls, ModelConfig, *extra_dataclasses))


def parse(parser: TrlParser, argv: Sequence[str] | None = None, script: str | None = None) -> tuple:
    """Parse `argv` (default `sys.argv[1:]`), then set up the run: logging, seed, push and resume handling.

    Returns the dataclasses in parser order: `(recipe_args, training_args, model_args, *extra)`.
    `script` is the recipe's path for the recorded command (default `sys.argv[0]`).
    """
    import transformers

    argv = list(sys.argv[1:] if argv is None else argv)
    parsed = parser.parse_args_and_config(argv)
    recipe_args, training_args, model_args = parsed[:3]
    if not isinstance(recipe_args, RecipeArguments):
        raise TypeError("build the parser with trl_ext.recipe.make_parser")

    recipe_args.command = format_command(argv, script or sys.argv[0])
    # Push once at the end, from `finish`, never from inside `Trainer` (which would push every checkpoint).
    recipe_args.push_to_hub = bool(training_args.push_to_hub)
    training_args.push_to_hub = False
    # A --hub_token flag would otherwise be pickled into training_args.bin (which is uploaded) and checkpoints.
    recipe_args.hub_token, training_args.hub_token = training_args.hub_token, None
    if recipe_args.merge_adapter and not model_args.use_peft:
        logger.warning("merge_adapter has no effect without use_peft: the full model is saved (and pushed) as is.")

    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, stream=sys.stdout, force=False
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.set_seed(training_args.seed)  # before the model: LoRA initialisation draws from torch's RNG
    engines.configure(training_args)  # CPU processes: the engine the launch asked for, not a silent DDP

    training_args.resume_from_checkpoint = resolve_checkpoint(
        training_args.resume_from_checkpoint, training_args.output_dir
    )
    return parsed


def format_command(argv: Sequence[str], script: str) -> str:
    """The command line that ran this recipe, with secrets redacted and the launcher guessed from the environment."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        for flag in _SECRET_FLAGS:
            if arg == flag and i + 1 < len(argv):
                argv[i + 1] = "REDACTED"
            elif arg.startswith(flag + "="):
                argv[i] = flag + "=REDACTED"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if any(k.startswith("ACCELERATE_") for k in os.environ):  # accelerate launch sets these, one process or many
        launcher = "accelerate launch" + (f" --num_processes {world}" if world > 1 else "")
    elif world > 1:
        launcher = f"torchrun --nproc_per_node {world}"
    else:
        launcher = "python"
    with contextlib.suppress(ValueError):  # another drive on Windows
        script = os.path.relpath(script)
    return " ".join([launcher, shlex.quote(script), *map(shlex.quote, argv)])


def resolve_checkpoint(resume: str | bool | None, output_dir: str) -> str | None:
    """`"true"` -> the last `checkpoint-*` in `output_dir` (None, with a warning, if there is none); a path stays."""
    from transformers.trainer_utils import get_last_checkpoint

    if resume is None or resume is False or str(resume).lower() in ("", "false", "no", "0"):
        return None
    if resume is True or str(resume).lower() in ("true", "yes", "1", "last"):
        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None:
            logger.warning("resume_from_checkpoint=true but %s holds no checkpoint: starting from scratch", output_dir)
        else:
            logger.info("Resuming from %s", last)
        return last
    if not os.path.isdir(resume):
        raise FileNotFoundError(f"resume_from_checkpoint: no checkpoint folder at {resume}")
    return str(resume)


# ---------------------------------------------------------------------------------------------------------- data
def packaged_data(path: str) -> str:
    """`path` itself, or, for a ``recipes/data/...`` path that does not exist here (a packaged config run from an
    installed wheel, outside a clone), the file the wheel ships in `trl_ext.recipes`."""
    if os.path.exists(path) or not path.replace(os.sep, "/").startswith("recipes/"):
        return path
    from trl_ext.packaged import recipes_dir

    shipped = recipes_dir() / path.replace(os.sep, "/").removeprefix("recipes/")
    return str(shipped) if shipped.exists() else path


def load_datasets(
    recipe_args: RecipeArguments, *, method: str, seed: int = 42, options: dict[str, Any] | None = None
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Training (and evaluation) rows in the columns `method`'s trainer takes, via `dataset_builders.load`
    (`options`: the recipe's own `load` options, e.g. online GRPO's ``grpo_mode``; the user's `dataset_options` win).

    The evaluation set is `eval_dataset_path` if given, else a seeded `eval_fraction` split of the training data,
    else None.
    """
    import dataset_builders

    if recipe_args.dataset_mixture and recipe_args.dataset_path:
        raise ValueError("give dataset_path or dataset_mixture, not both")
    if not recipe_args.dataset_path and not recipe_args.dataset_mixture:
        raise ValueError("dataset_path is required (a data file, a save_to_disk folder or a Hub dataset id)")
    options = {**(options or {}), **(recipe_args.dataset_options or {})}
    if recipe_args.dataset_split != "train":
        options.setdefault("split", recipe_args.dataset_split)
    if recipe_args.dataset_format:
        options["format"] = recipe_args.dataset_format
    if recipe_args.dataset_columns:
        options["columns"] = dict(recipe_args.dataset_columns)

    recipe_args.data_reports = []

    def read(source: str):
        dataset, report = dataset_builders.load_with_report(
            source, method=method, shape=recipe_args.dataset_shape, **options
        )
        recipe_args.data_reports.append(report.to_dict())
        return dataset

    if recipe_args.dataset_mixture:
        train = _mixture(recipe_args, method, options, seed)
    else:
        train = read(packaged_data(recipe_args.dataset_path))
    if recipe_args.eval_dataset_path:
        evaluation = read(packaged_data(recipe_args.eval_dataset_path))
    elif recipe_args.eval_fraction > 0:
        split = train.train_test_split(test_size=recipe_args.eval_fraction, seed=seed)
        train, evaluation = split["train"], split["test"]
    else:
        evaluation = None
    if recipe_args.max_train_samples is not None:
        train = train.select(range(min(recipe_args.max_train_samples, len(train))))
    if evaluation is not None and recipe_args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(recipe_args.max_eval_samples, len(evaluation))))
    if len(train) == 0:
        raise ValueError(f"{recipe_args.dataset_path}: no training rows")
    logger.info("Data: %d training rows, %s evaluation rows", len(train), len(evaluation) if evaluation else 0)
    return train, evaluation


def _mixture(recipe_args: RecipeArguments, method: str, options: dict[str, Any], seed: int) -> datasets.Dataset:
    """The sources of `dataset_mixture`, each read with its own layout and options, `rows` or `fraction` of each
    drawn with the seed, concatenated and shuffled. Each source's report gains `used` (rows in the mixture)."""
    import datasets as hf_datasets

    import dataset_builders

    parts = []
    for k, source in enumerate(recipe_args.dataset_mixture):
        source_options = {**options, **(source.options or {})}
        if source.format:
            source_options["format"] = source.format
        if source.columns:
            source_options["columns"] = dict(source.columns)
        dataset, report = dataset_builders.load_with_report(
            packaged_data(source.path),
            method=method,
            shape=source.shape or recipe_args.dataset_shape,
            **source_options,
        )
        available = len(dataset)
        if source.rows is not None and source.rows > available:
            raise ValueError(f"dataset_mixture[{k}] ({source.path}): rows {source.rows} asked, {available} available")
        used = source.rows if source.rows is not None else available
        if source.fraction is not None:
            used = max(1, round(float(source.fraction) * available))
        dataset = dataset.shuffle(seed=seed + k).select(range(used)) if used < available else dataset
        recipe_args.data_reports.append({**report.to_dict(), "used": used})
        parts.append((source.path, dataset))
    first_path, first = parts[0]
    for path, dataset in parts[1:]:
        if dataset.features != first.features:
            raise ValueError(
                f"dataset_mixture: {path} gives {dict(dataset.features)} but {first_path} gives {dict(first.features)}; "
                "every source must give the same columns (options: {conversational: true} makes plain strings chat "
                "messages)"
            )
    return hf_datasets.concatenate_datasets([d for _, d in parts]).shuffle(seed=seed)


# ------------------------------------------------------------------------------------------------ training guard
class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss, the gradient norm or a trainable weight became NaN/inf."""


_STOPPED = "Stopped; nothing was saved as final or pushed. Try a lower learning_rate or max_grad_norm, or bf16 instead of fp16."


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user causes and can fix (bad data, a missing file, model or package, a diverged run): shown as one
    line, not a traceback, by `run_script` and by `trl-ext`."""
    from dataset_builders.errors import DataError
    from trl_ext.embedded import EmbeddedModelError
    from trl_ext.errors import ConfigError
    from trl_ext.rewards import ConstraintError

    return (DataError, EmbeddedModelError, NonFiniteLossError, FileNotFoundError, ConfigError, ConstraintError)


def run_script(main: Any, argv: Sequence[str] | None = None) -> None:
    """Run a recipe's `main` as a script (`python recipes/x.py`, `accelerate launch recipes/x.py`): a user error is
    one line on stderr, printed by the main process only, and exit status 2, as `trl-ext` does; anything else (a bug)
    keeps its traceback. (`accelerate launch` adds its own report of any failed child: `accelerate launch -q` leaves
    only this line.)"""
    try:
        main(argv)
    except user_errors() as error:
        if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0:
            print(f"{Path(sys.argv[0]).stem}: error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)


def check_finite(logs: dict[str, Any] | None, step: int) -> None:
    """Raise `NonFiniteLossError` if a loss or gradient norm in `logs` is NaN or inf."""
    for key in ("loss", "train_loss", "grad_norm", "eval_loss"):
        value = (logs or {}).get(key)
        if isinstance(value, (int, float)) and not math.isfinite(value):
            raise NonFiniteLossError(f"step {step}: {key} = {value}. {_STOPPED}")


class NonFiniteLossCallback(TrainerCallback):
    """Stop a run whose loss, gradient norm or trainable weights became NaN or inf, with a clear error.

    Checked after every optimizer step (the trainable weights, with one device sync) and at every log. The error is
    raised before `Trainer` saves that step's checkpoint, and it propagates out of `train`, so a recipe never reaches
    `finish`: nothing is saved as final and nothing is pushed.
    """

    def on_step_end(self, args, state, control, model=None, **kwargs):
        import torch

        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad] if model is not None else []
        if not trainable:
            return
        device = trainable[0][1].device
        finite = torch.stack([torch.isfinite(p.detach()).all().to(device) for _, p in trainable])
        if not bool(finite.all()):
            name = trainable[int((~finite).nonzero()[0, 0])][0]
            raise NonFiniteLossError(
                f"step {state.global_step}: trainable weight {name} is NaN/inf (the loss or gradients diverged). "
                + _STOPPED
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        check_finite(logs, state.global_step)


def callbacks() -> list[TrainerCallback]:
    """The callbacks every recipe passes to its trainer."""
    return [NonFiniteLossCallback(), engines.EngineReportCallback()]


def train(trainer: Trainer) -> dict[str, float]:
    """`trainer.train` (resuming from `args.resume_from_checkpoint`, resolved by `parse`), then a final evaluation
    if the trainer has an evaluation set. Returns the metrics (train_* and eval_*).

    Before the first step: a 4/8-bit model's bfloat16 trainable weights (TRL casts them so) go back to float32 when
    no mixed precision is on, or a float32 forward meets bfloat16 weights (`trainer_utils.
    trainable_without_mixed_precision`); and on a GPU
    the memory planner warns when the run will not fit the card (`plan.warn_if_too_big`)."""
    from trl_ext.trainer_utils import trainable_without_mixed_precision

    trainable_without_mixed_precision(trainer.model, trainer.args)  # before the optimizer exists
    from trl_ext.plan import warn_if_too_big

    warn_if_too_big(trainer)  # on a GPU: says before the first step when the run will not fit the card
    result = trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    metrics = dict(result.metrics)
    trainer.log_metrics("train", metrics)
    if trainer.eval_dataset is not None:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    check_finite(metrics, trainer.state.global_step)  # the run's mean loss too, before anything is saved
    return metrics


# ------------------------------------------------------------------------------------------ save, card, push
def finish(
    trainer: Trainer,
    recipe_args: RecipeArguments,
    model_args: ModelConfig,
    *,
    method: str,
    train_dataset: Iterable | None = None,
    eval_dataset: Iterable | None = None,
    metrics: dict[str, float] | None = None,
) -> Path:
    """Save the adapter (or full model) and tokenizer, merge if asked, write the model card, push if asked.

    Call only after training finished without error. Saving happens once (the trainer saves from the main process);
    merging, the card and the upload happen on the main process only. Returns the folder that was (or would be)
    pushed: `output_dir`, or `output_dir/merged` with `merge_adapter`.
    """
    args = trainer.args
    output_dir = Path(args.output_dir)
    trainer.save_model(str(output_dir))  # weights (adapter or full) and the tokenizer, from the main process
    trainer.accelerator.wait_for_everyone()

    from peft import PeftModel

    is_adapter = isinstance(trainer.accelerator.unwrap_model(trainer.model), PeftModel)
    folder = output_dir
    if trainer.accelerator.is_main_process:
        counts = {
            "train": len(train_dataset if train_dataset is not None else trainer.train_dataset),
            "eval": len(eval_dataset) if eval_dataset is not None else None,
            "steps": trainer.state.global_step,
            "epochs": trainer.state.epoch,
        }
        if recipe_args.merge_adapter and is_adapter:
            folder = models.merge_adapter(output_dir, model_args, args, dtype=models.merge_dtype(model_args))
        card = card_for_run(
            method=method,
            model_args=model_args,
            recipe_args=recipe_args,
            training_args=args,
            row_counts=counts,
            metrics=metrics or {},
            is_adapter=is_adapter and folder == output_dir,
            world_size=trainer.accelerator.num_processes,
        )
        (output_dir / "README.md").write_text(card)
        if folder != output_dir:
            (folder / "README.md").write_text(card)
        if recipe_args.push_to_hub:
            push_to_hub(folder, repo_id=hub_repo_id(args), private=args.hub_private_repo, token=recipe_args.hub_token)
    elif recipe_args.merge_adapter and is_adapter:
        folder = output_dir / "merged"
    trainer.accelerator.wait_for_everyone()
    return folder


def hub_repo_id(training_args: TrainingArguments) -> str:
    """`hub_model_id`, else the output folder's name (huggingface_hub puts a bare name under the token's user)."""
    return training_args.hub_model_id or Path(training_args.output_dir).resolve().name


def push_to_hub(folder: str | Path, *, repo_id: str, private: bool | None = None, token: str | None = None) -> str:
    """Create `repo_id` (if needed) and upload `folder` (weights or adapter, tokenizer, README.md card).

    Checkpoints and optimizer states are not uploaded. `token=None` lets huggingface_hub read `HF_TOKEN` or its login
    cache; the token is never logged. Returns the commit URL.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        commit_message="Upload from trl-ext recipe",
        ignore_patterns=["checkpoint-*", "checkpoint-*/**", "merged/**", "runs/**", "*.pt", "*.pth", "*.bin.lock"],
    )
    logger.info("Pushed %s to https://huggingface.co/%s", folder, repo_id)
    return str(getattr(commit, "commit_url", commit))
