"""Reward model (step 2 of RLHF) with TRL's `RewardTrainer`: a sequence-classification head scoring a whole
conversation, trained with the Bradley-Terry loss on chosen/rejected pairs.

Data: `pairwise_ab` (prompt, response_a, response_b, preference A/B) or `pairs`, or any shape `dataset_builders`
can turn into chosen/rejected. With LoRA the new score head is trained in full (`modules_to_save`).

    # offline, CPU, about a minute (the embedded tiny model):
    accelerate launch recipes/reward.py --config recipes/configs/reward/tiny-cpu.yaml
    # one 24 GB GPU, a 7B model in 4-bit NF4 + LoRA:
    accelerate launch recipes/reward.py --config recipes/configs/reward/qlora-24gb.yaml \
        --dataset_path my_ab.jsonl --model_name_or_path Qwen/Qwen2.5-7B-Instruct --push_to_hub true
"""

from trl import RewardConfig, RewardTrainer

from trl_ext import models, recipe


def make_parser():
    return recipe.make_parser(RewardConfig)


def main(argv=None):
    args, training_args, model_args = recipe.parse(make_parser(), argv, script=__file__)
    train_ds, eval_ds = recipe.load_datasets(args, method="reward", seed=training_args.seed)  # bad data fails here
    tokenizer = models.load_tokenizer(model_args, training_args)
    model = models.load_model(model_args, training_args, head="seq-cls", num_labels=1, tokenizer=tokenizer)
    trainer = RewardTrainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=models.lora_config(model_args, head="seq-cls"),
        callbacks=recipe.callbacks(),
    )
    metrics = recipe.train(trainer)
    return recipe.finish(
        trainer, args, model_args, method="reward", train_dataset=train_ds, eval_dataset=eval_ds, metrics=metrics
    )


if __name__ == "__main__":
    recipe.run_script(main)
