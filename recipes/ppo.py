"""PPO (step 3 of RLHF; Schulman et al. 2017, Ouyang et al. 2022) with `trl_ext.PPOTrainer`: a policy (LoRA
adapter), its reference (the same base with the adapter off), a critic (value head on the policy's trunk) and a
reward model, trained on prompts.

Data: any shape with a prompt (`prompts`, `pairwise_ab`, `pairs`, ...): only the prompts are used.
Reward: `reward_model_path`, a sequence-classification model as `recipes/reward.py` writes it (full model, merged
model or LoRA adapter), loaded with the policy's quantization; and/or `reward_functions`, rule-based rewards by name
(`instruction_following`: the fraction of each prompt's IFEval constraints an answer follows, for prompts that carry
`instruction_id_list` and `kwargs`) or dotted path, weighted by `reward_weights` (reward model first).
The whole pipeline (SFT -> reward model -> PPO) is one command: `python recipes/rlhf_pipeline.py`.

    # offline, CPU, about a minute (the embedded tiny model and the toy task's rule as the reward):
    accelerate launch recipes/ppo.py --config recipes/configs/ppo/tiny-cpu.yaml
    # verifiable rewards: prompts with IFEval constraints (trl-ext constraints ...), scored by their checkers:
    accelerate launch recipes/ppo.py --config recipes/configs/ppo/tiny-cpu.yaml \
        --dataset_path prompts.jsonl --reward_functions instruction_following
    # one 24 GB GPU, a 7B policy and a 7B reward model, both 4-bit NF4:
    accelerate launch recipes/ppo.py --config recipes/configs/ppo/qlora-24gb.yaml \
        --model_name_or_path my-sft-model --reward_model_path my-reward-model --dataset_path my_prompts.jsonl
"""

from trl_ext import models, recipe, rewards
from trl_ext.errors import ConfigError
from trl_ext.ppo import PPOConfig, PPOTrainer


def make_parser():
    return recipe.make_parser(PPOConfig)


def reward_functions(training_args):
    """The rule-based rewards the config names (checked before any model loads)."""
    functions = rewards.resolve_reward_functions(training_args.reward_functions)
    if not functions and not training_args.reward_model_path:
        raise ConfigError(
            "PPO needs a reward: reward_model_path (a model from recipes/reward.py) and/or reward_functions "
            f"({', '.join(rewards.REWARD_FUNCTIONS)}, or a dotted path)"
        )
    return functions


def load_reward_model(training_args, model_args):
    """The reward model and its tokenizer in the policy's quantization, or (None, None) without reward_model_path."""
    if not training_args.reward_model_path:
        return None, None
    return models.load_reward_model_for_run(training_args.reward_model_path, model_args, training_args)


def main(argv=None):
    args, training_args, model_args = recipe.parse(make_parser(), argv, script=__file__)
    functions = reward_functions(training_args)
    train_ds, eval_ds = recipe.load_datasets(args, method="ppo", seed=training_args.seed)  # bad data fails here
    rewards.check_reward_columns(functions, train_ds, args.dataset_path or "dataset_mixture")
    tokenizer = models.load_tokenizer(model_args, training_args)
    model = models.load_model(model_args, training_args)
    reward_model, reward_tokenizer = load_reward_model(training_args, model_args)
    trainer = PPOTrainer(
        model=model,
        reward_model=[r for r in (reward_model, *functions) if r is not None],  # weights in this order
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        reward_processing_class=reward_tokenizer,
        peft_config=models.lora_config(model_args),  # reference = this base with the adapter disabled
        callbacks=recipe.callbacks(),
    )
    metrics = recipe.train(trainer)
    return recipe.finish(
        trainer, args, model_args, method="ppo", train_dataset=train_ds, eval_dataset=eval_ds, metrics=metrics
    )


if __name__ == "__main__":
    recipe.run_script(main)
