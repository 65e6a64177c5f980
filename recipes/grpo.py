"""GRPO (Shao et al. 2024, https://arxiv.org/abs/2402.03300) from human rankings, offline or online.

Data: `ranked` (prompt, responses, ranking with 1 = best; equal ranks are ties), or any shape `dataset_builders` can
turn into ranked groups (a pair is a group of two).

- `--mode offline` (default): `trl_ext.RankedGRPOTrainer` trains on the ranked responses themselves: ranks ->
  rewards -> group-relative advantages -> GRPO's clipped surrogate with a KL to the reference (or, with
  `loss_type: plackett_luce`, listwise DPO). Nothing is generated.
- `--mode online`: a reward model is first trained on the rankings (`reward_loss: plackett_luce`, listwise, or
  `bradley_terry`, TRL's `RewardTrainer` on all pairs of each group) and saved to `<output_dir>/reward_model`
  (or given with `reward_model_path`, e.g. from `recipes/reward.py`); then `trl.GRPOTrainer` samples
  `num_generations` completions per prompt of the same data and learns from that reward model's scores.
  Start from an SFT model (`recipes/sft.py`) so the samples are well formed.

With `use_peft` the reference model is the base with the adapter disabled (no second copy in memory).

    # offline, CPU, about a minute (the embedded tiny model):
    accelerate launch recipes/grpo.py --config recipes/configs/grpo/tiny-cpu.yaml
    # online, CPU: reward model from the rankings, then sampling (a few minutes):
    accelerate launch recipes/grpo.py --config recipes/configs/grpo/tiny-cpu-online.yaml
    # one 24 GB GPU, a 7B model in 4-bit NF4 + LoRA:
    accelerate launch recipes/grpo.py --config recipes/configs/grpo/qlora-24gb.yaml \
        --dataset_path my_ranked.jsonl --model_name_or_path Qwen/Qwen2.5-7B-Instruct --push_to_hub true
"""

import logging
import os
from dataclasses import dataclass, field

from trl import GRPOTrainer, RewardConfig, RewardTrainer

from trl_ext import RankedGRPOConfig, RankedGRPOTrainer, models, recipe
from trl_ext.ranked_grpo import PlackettLuceRewardTrainer, RewardModelScorer

logger = logging.getLogger(__name__)

MODES = ("offline", "online")
REWARD_LOSSES = ("plackett_luce", "bradley_terry")


@dataclass
class GRPOArguments:
    """What `recipes/grpo.py` takes besides `RankedGRPOConfig` (offline and online GRPO) and `trl.ModelConfig`."""

    mode: str = field(
        default="offline",
        metadata={"help": "`offline` (RankedGRPOTrainer on the ranked responses) or `online` (trl.GRPOTrainer)."},
    )
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
    rank_within_group: bool = field(
        default=False,
        metadata={"help": "Online: replace reward-model scores by their ranks within each group of completions."},
    )

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.reward_loss not in REWARD_LOSSES:
            raise ValueError(f"reward_loss must be one of {REWARD_LOSSES}, got {self.reward_loss!r}")


def make_parser():
    return recipe.make_parser(RankedGRPOConfig, extra_dataclasses=(GRPOArguments,))


def main(argv=None):
    args, training_args, model_args, grpo_args = recipe.parse(make_parser(), argv, script=__file__)
    tokenizer = models.load_tokenizer(model_args, training_args)
    if grpo_args.mode == "online":
        trainer, train_ds, eval_ds = online_trainer(args, training_args, model_args, grpo_args, tokenizer)
    else:
        model = models.load_model(model_args, training_args)
        train_ds, eval_ds = recipe.load_datasets(args, method="grpo", seed=training_args.seed)
        trainer = RankedGRPOTrainer(
            model=model,
            args=training_args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=tokenizer,
            peft_config=models.lora_config(model_args),  # reference = this base with the adapter disabled
            callbacks=recipe.callbacks(),
        )
    metrics = recipe.train(trainer)
    return recipe.finish(
        trainer, args, model_args, method="grpo", train_dataset=train_ds, eval_dataset=eval_ds, metrics=metrics
    )


def online_trainer(args, training_args, model_args, grpo_args, tokenizer):
    """`trl.GRPOTrainer` on the data's prompts, rewarded by a reward model learned from its rankings."""
    if training_args.num_generations is None:
        raise ValueError("--mode online samples num_generations completions per prompt: set num_generations (e.g. 8)")
    if training_args.loss_type == "plackett_luce":
        raise ValueError("loss_type plackett_luce is offline only; online, use TRL's (dapo, grpo, dr_grpo, ...)")
    groups, eval_groups = recipe.load_datasets(args, method="grpo", seed=training_args.seed)  # ranked groups
    reward_model, reward_tokenizer = reward_model_for(groups, args, training_args, model_args, grpo_args, tokenizer)
    # The same rows as the groups above (same seeded split), prompts only
    train_ds, eval_ds = (None if d is None else d.select_columns(["prompt"]) for d in (groups, eval_groups))
    scorer = RewardModelScorer(reward_model, reward_tokenizer, rank_within_group=grpo_args.rank_within_group)
    trainer = GRPOTrainer(
        model=models.load_model(model_args, training_args),
        reward_funcs=[scorer],
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=models.lora_config(model_args),
        callbacks=recipe.callbacks(),
    )
    scorer.attach(trainer)  # groups of num_generations, whole across processes
    return trainer, train_ds, eval_ds


def reward_model_for(groups, args, training_args, model_args, grpo_args, tokenizer):
    """The reward model: `reward_model_path`, or one trained here on the training groups (and saved), or the one an
    earlier run of this recipe saved in `<output_dir>/reward_model` when resuming."""
    saved = os.path.join(training_args.output_dir, "reward_model")
    path = grpo_args.reward_model_path
    if path is None and training_args.resume_from_checkpoint and os.path.exists(os.path.join(saved, "config.json")):
        path = saved
    if path is not None:
        return models.load_reward_model_for_run(path, model_args, training_args)

    rm_args = RewardConfig(
        output_dir=saved,
        learning_rate=grpo_args.reward_learning_rate,
        num_train_epochs=grpo_args.reward_num_train_epochs,
        per_device_train_batch_size=grpo_args.reward_per_device_train_batch_size
        or training_args.per_device_train_batch_size,
        gradient_accumulation_steps=training_args.gradient_accumulation_steps,
        max_length=grpo_args.reward_max_length,
        lr_scheduler_type=training_args.lr_scheduler_type,
        warmup_steps=training_args.warmup_steps,
        optim=training_args.optim,
        use_cpu=training_args.use_cpu,
        bf16=training_args.bf16,
        fp16=training_args.fp16,
        gradient_checkpointing=training_args.gradient_checkpointing,
        gradient_checkpointing_kwargs=training_args.gradient_checkpointing_kwargs,
        logging_steps=training_args.logging_steps,
        report_to=training_args.report_to,
        seed=training_args.seed,
        save_strategy="no",
        eval_strategy="no",
    )
    model = models.load_model(model_args, rm_args, head="seq-cls", num_labels=1, tokenizer=tokenizer)
    if grpo_args.reward_loss == "plackett_luce":
        trainer_cls, data = PlackettLuceRewardTrainer, groups
    else:
        import dataset_builders

        trainer_cls = RewardTrainer
        data = dataset_builders.load(groups, method="reward", shape="ranked", pair_strategy="all_pairs")
    rm_trainer = trainer_cls(
        model=model,
        args=rm_args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=models.lora_config(model_args, head="seq-cls"),
        callbacks=recipe.callbacks(),
    )
    result = rm_trainer.train()
    logger.info("Reward model (%s): %s", grpo_args.reward_loss, result.metrics)
    rm_trainer.save_model(saved)
    if rm_trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(saved)
    return rm_trainer.accelerator.unwrap_model(rm_trainer.model).eval(), tokenizer


if __name__ == "__main__":
    main()
