"""Supervised fine-tuning (step 1 of RLHF, as InstructGPT numbers them) with TRL's `SFTTrainer`; the loss is on the completion only.

Data: prompt/completion rows (or chat messages), or any shape `dataset_builders` can turn into SFT targets
(e.g. the chosen answers of `pairs`).

    # offline, CPU, about a minute (the embedded tiny model):
    accelerate launch recipes/sft.py --config recipes/configs/sft/tiny-cpu.yaml
    # one 24 GB GPU, a 7B model in 4-bit NF4 + LoRA:
    accelerate launch recipes/sft.py --config recipes/configs/sft/qlora-24gb.yaml \
        --dataset_path my_sft.jsonl --model_name_or_path Qwen/Qwen2.5-7B --push_to_hub true
"""

from trl import SFTConfig, SFTTrainer

from trl_ext import models, recipe


def make_parser():
    return recipe.make_parser(SFTConfig)


def main(argv=None):
    args, training_args, model_args = recipe.parse(make_parser(), argv, script=__file__)
    train_ds, eval_ds = recipe.load_datasets(args, method="sft", seed=training_args.seed)  # bad data fails here
    tokenizer = models.load_tokenizer(model_args, training_args)
    model = models.load_model(model_args, training_args)
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=models.lora_config(model_args),
        callbacks=recipe.callbacks(),
    )
    metrics = recipe.train(trainer)
    return recipe.finish(
        trainer, args, model_args, method="sft", train_dataset=train_ds, eval_dataset=eval_ds, metrics=metrics
    )


if __name__ == "__main__":
    recipe.run_script(main)
