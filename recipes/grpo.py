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
  `reward_functions` (e.g. `[instruction_following]` for prompts with IFEval constraints) adds rule-based rewards,
  weighted by `reward_weights` (the reward model first); with them and no `reward_model_path`, nothing is trained
  first and the data needs only prompts.

With `use_peft` the reference model is the base with the adapter disabled (no second copy in memory).

    # offline, CPU, about a minute (the embedded tiny model):
    accelerate launch recipes/grpo.py --config recipes/configs/grpo/tiny-cpu.yaml
    # online, CPU: reward model from the rankings, then sampling (a few minutes):
    accelerate launch recipes/grpo.py --config recipes/configs/grpo/tiny-cpu-online.yaml
    # online, verifiable rewards: prompts with IFEval constraints, scored by their checkers (no reward model):
    accelerate launch recipes/grpo.py --config recipes/configs/grpo/tiny-cpu-online.yaml \
        --dataset_path prompts.jsonl --reward_functions instruction_following
    # one 24 GB GPU, a 7B model in 4-bit NF4 + LoRA:
    accelerate launch recipes/grpo.py --config recipes/configs/grpo/qlora-24gb.yaml \
        --dataset_path my_ranked.jsonl --model_name_or_path Qwen/Qwen2.5-7B-Instruct --push_to_hub true
"""

from trl import GRPOTrainer

from trl_ext import RankedGRPOConfig, RankedGRPOTrainer, models, recipe, rewards
from trl_ext.ranked_grpo import RankedRewardArguments, RewardModelScorer, reward_model_for


def make_parser():
    return recipe.make_parser(RankedGRPOConfig, extra_dataclasses=(RankedRewardArguments,))


def main(argv=None):
    args, training_args, model_args, reward_args = recipe.parse(make_parser(), argv, script=__file__)
    tokenizer = models.load_tokenizer(model_args, training_args)
    if training_args.mode == "online":
        trainer, train_ds, eval_ds = online_trainer(args, training_args, model_args, reward_args, tokenizer)
    else:
        train_ds, eval_ds = recipe.load_datasets(args, method="grpo", seed=training_args.seed)  # bad data fails here
        model = models.load_model(model_args, training_args)
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
    """`trl.GRPOTrainer` on the data's prompts, rewarded by a reward model (learned from the data's rankings, or
    `reward_model_path`) and/or the named reward functions."""
    functions = rewards.resolve_reward_functions(reward_args.reward_functions)
    train_reward_model = not reward_args.reward_model_path and not functions
    if train_reward_model:  # ranked groups for the reward model; the same rows (same seeded split), prompts only
        groups, eval_groups = recipe.load_datasets(args, method="grpo", seed=training_args.seed)
        train_ds, eval_ds = (None if d is None else d.select_columns(["prompt"]) for d in (groups, eval_groups))
    else:  # prompts (with the columns reward functions read) from any shape that has them
        groups = None
        train_ds, eval_ds = recipe.load_datasets(
            args, method="grpo", seed=training_args.seed, options={"grpo_mode": "online"}
        )
    rewards.check_reward_columns(functions, train_ds, args.dataset_path or "dataset_mixture")
    reward_funcs = list(functions)
    scorer = None
    if reward_args.reward_model_path or train_reward_model:
        reward_model, reward_tokenizer = reward_model_for(
            groups, training_args, model_args, reward_args, tokenizer, callbacks=recipe.callbacks()
        )
        scorer = RewardModelScorer(reward_model, reward_tokenizer, rank_within_group=reward_args.rank_within_group)
        reward_funcs.insert(0, scorer)  # reward_weights: the reward model first
    trainer = GRPOTrainer(
        model=models.load_model(model_args, training_args),
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=models.lora_config(model_args),
        callbacks=recipe.callbacks(),
    )
    if scorer is not None:
        scorer.attach(trainer)  # groups of num_generations, whole across processes
    return trainer, train_ds, eval_ds


if __name__ == "__main__":
    recipe.run_script(main)
