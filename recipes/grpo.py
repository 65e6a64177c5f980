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

from trl import GRPOTrainer

from trl_ext import RankedGRPOConfig, RankedGRPOTrainer, models, recipe
from trl_ext.ranked_grpo import RankedRewardArguments, RewardModelScorer, reward_model_for


def make_parser():
    return recipe.make_parser(RankedGRPOConfig, extra_dataclasses=(RankedRewardArguments,))


def main(argv=None):
    args, training_args, model_args, reward_args = recipe.parse(make_parser(), argv, script=__file__)
    tokenizer = models.load_tokenizer(model_args, training_args)
    if training_args.mode == "online":
        trainer, train_ds, eval_ds = online_trainer(args, training_args, model_args, reward_args, tokenizer)
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


def online_trainer(args, training_args, model_args, reward_args, tokenizer):
    """`trl.GRPOTrainer` on the data's prompts, rewarded by a reward model learned from its rankings."""
    groups, eval_groups = recipe.load_datasets(args, method="grpo", seed=training_args.seed)  # ranked groups
    reward_model, reward_tokenizer = reward_model_for(
        groups, training_args, model_args, reward_args, tokenizer, callbacks=recipe.callbacks()
    )
    # The same rows as the groups above (same seeded split), prompts only
    train_ds, eval_ds = (None if d is None else d.select_columns(["prompt"]) for d in (groups, eval_groups))
    scorer = RewardModelScorer(reward_model, reward_tokenizer, rank_within_group=reward_args.rank_within_group)
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


if __name__ == "__main__":
    main()
