"""Online GRPO's reward model, learned from the rankings: its arguments, its training, or the one given.

A reward model scores `trl.GRPOTrainer`'s samples (through `RewardModelScorer`). It is either given
(`reward_model_path`: one from `recipes/reward.py`, or saved by an earlier run) or trained here on the training
groups, listwise (`PlackettLuceRewardTrainer`) or Bradley-Terry on all pairs of each group (`trl.RewardTrainer`), with
the run's own training settings (precision, optimizer, schedule, logging, device) and its own learning rate, epochs,
batch size and length limit. It is saved to `<output_dir>/reward_model`, where a resumed run finds it again.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from transformers import TrainingArguments

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
    from trl import ModelConfig, RewardConfig

logger = logging.getLogger(__name__)

REWARD_LOSSES: tuple[str, ...] = ("plackett_luce", "bradley_terry")
REWARD_MODEL_FOLDER = "reward_model"
# Training arguments the reward model does not inherit from the GRPO run: where and how long it trains, what it
# saves and evaluates, and anything about the Hub (nothing is pushed from here).
_NOT_INHERITED = {
    "output_dir", "logging_dir", "run_name", "learning_rate", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "save_strategy", "save_steps", "eval_strategy", "eval_steps", "do_eval",
    "load_best_model_at_end", "metric_for_best_model", "resume_from_checkpoint", "push_to_hub",
}  # fmt: skip


@dataclass
class RankedRewardArguments:
    """How online GRPO gets its reward model (fields of `recipes/grpo.py`, read with `mode: online`)."""

    reward_model_path: str | None = field(
        default=None,
        metadata={"help": "Online: a trained reward model (full, merged or LoRA); unset: train one on the rankings."},
    )
    reward_loss: str = field(
        default="plackett_luce",
        metadata={"help": "Online, reward model trained here: `plackett_luce` (listwise) or `bradley_terry` (pairs)."},
    )
    reward_learning_rate: float = field(default=1e-4, metadata={"help": "Online: the reward model's learning rate."})
    reward_num_train_epochs: float = field(default=1.0, metadata={"help": "Online: reward-model epochs."})
    reward_per_device_train_batch_size: int | None = field(
        default=None,
        metadata={"help": "Online: reward-model batch (groups for plackett_luce, pairs for bradley_terry)."},
    )
    reward_max_length: int | None = field(
        default=1024, metadata={"help": "Online: longer prompt + response sequences are left out of reward training."}
    )
    reward_functions: list[str] | None = field(
        default=None,
        metadata={
            "help": "Online: rule-based rewards beside or instead of the reward model (instruction_following, or "
            "dotted paths); with no reward_model_path, no reward model is trained. Weighted by reward_weights."
        },
    )
    rank_within_group: bool = field(
        default=False,
        metadata={"help": "Online: replace reward-model scores by their ranks within each group of completions."},
    )

    def __post_init__(self):
        if self.reward_loss not in REWARD_LOSSES:
            raise ValueError(f"reward_loss must be one of {REWARD_LOSSES}, got {self.reward_loss!r}")


def reward_config(
    training_args: TrainingArguments, reward_args: RankedRewardArguments, output_dir: str
) -> RewardConfig:
    """The reward model's `RewardConfig`: every `TrainingArguments` field of the run (precision, optimizer,
    scheduler, warm-up, gradient accumulation and checkpointing, logging, device, seed, ...) except those in
    `_NOT_INHERITED` and the Hub's, plus the reward model's own learning rate, epochs, batch and length limit."""
    from trl import RewardConfig

    inherited = {
        f.name: getattr(training_args, f.name)
        for f in fields(TrainingArguments)
        if f.init and f.name not in _NOT_INHERITED and not f.name.startswith("hub_") and hasattr(training_args, f.name)
    }
    if inherited.get("report_to") == []:
        inherited["report_to"] = "none"
    config = RewardConfig(
        **inherited,
        output_dir=output_dir,
        learning_rate=reward_args.reward_learning_rate,
        num_train_epochs=reward_args.reward_num_train_epochs,
        per_device_train_batch_size=reward_args.reward_per_device_train_batch_size
        or training_args.per_device_train_batch_size,
        max_length=reward_args.reward_max_length,
        save_strategy="no",
        eval_strategy="no",
    )
    from trl_ext import engines

    engines.configure(config)  # building training arguments resets accelerate's state: the engine again
    return config


def reward_model_for(
    groups: Dataset,
    training_args: TrainingArguments,
    model_args: ModelConfig,
    reward_args: RankedRewardArguments,
    tokenizer: PreTrainedTokenizerBase,
    callbacks: list[TrainerCallback] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The reward model and its tokenizer: `reward_model_path`, or the one an earlier run of this recipe saved in
    `<output_dir>/reward_model` when resuming, or one trained here on the ranked `groups` (and saved there)."""
    from trl import RewardTrainer

    from trl_ext import models

    from .plackett_luce_reward import PlackettLuceRewardTrainer

    saved = os.path.join(training_args.output_dir, REWARD_MODEL_FOLDER)
    path = reward_args.reward_model_path
    if path is None and training_args.resume_from_checkpoint and os.path.exists(os.path.join(saved, "config.json")):
        path = saved
    if path is not None:
        return models.load_reward_model_for_run(path, model_args, training_args)

    from trl_ext import engines

    if engines.deepspeed_requested():
        # accelerate allows one DeepSpeed Accelerator per process; the policy's trainer would be the second.
        raise ValueError(
            "online GRPO cannot train its reward model in the same run under DeepSpeed: train it first "
            "(recipes/reward.py, or this recipe without DeepSpeed) and pass reward_model_path"
        )
    rm_args = reward_config(training_args, reward_args, saved)
    model = models.load_model(model_args, rm_args, head="seq-cls", num_labels=1, tokenizer=tokenizer)
    trainer_cls: Any
    extra: dict[str, Any] = {}
    if reward_args.reward_loss == "plackett_luce":
        trainer_cls, data = PlackettLuceRewardTrainer, groups
        extra["prefix_sharing"] = bool(getattr(training_args, "prefix_sharing", False))
    else:
        import dataset_builders

        trainer_cls = RewardTrainer
        data = dataset_builders.load(groups, method="reward", shape="ranked", pair_strategy="all_pairs")
    trainer = trainer_cls(
        model=model,
        args=rm_args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=models.lora_config(model_args, head="seq-cls"),
        callbacks=callbacks,
        **extra,
    )
    from trl_ext.trainer_utils import trainable_without_mixed_precision

    trainable_without_mixed_precision(trainer.model, trainer.args)  # before the optimizer exists
    result = trainer.train()
    logger.info("Reward model (%s): %s", reward_args.reward_loss, result.metrics)
    trainer.save_model(saved)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(saved)
    return trainer.accelerator.unwrap_model(trainer.model).eval(), tokenizer
