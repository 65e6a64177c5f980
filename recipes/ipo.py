"""Length-aware IPO (Azar et al. 2023, https://arxiv.org/abs/2310.12036) with `trl_ext.LengthAwareIPOTrainer`.

Data: `pairs_with_lengths` (prompt, chosen, rejected, chosen_length, rejected_length), for the default
`length_source: declared`; with `length_source: tokens` or `chars` the trainer measures the completions itself,
so plain `pairs` (or any shape `dataset_builders` can turn into pairs) work too. IPO's `beta` is its own: with
`length_normalization: mean` the target 1/(2*beta) is a margin per token (docs/ipo.md). With `use_peft` the
reference model is the base with the adapter disabled.

    # offline, CPU, about a minute (the embedded tiny model):
    accelerate launch recipes/ipo.py --config recipes/configs/ipo/tiny-cpu.yaml
    # one 24 GB GPU, a 7B model in 4-bit NF4 + LoRA:
    accelerate launch recipes/ipo.py --config recipes/configs/ipo/qlora-24gb.yaml \
        --dataset_path my_pairs_with_lengths.jsonl --model_name_or_path Qwen/Qwen2.5-7B-Instruct --push_to_hub true
    # plain pairs, lengths counted in tokens:
    accelerate launch recipes/ipo.py --config recipes/configs/ipo/qlora-24gb.yaml \
        --dataset_path my_pairs.jsonl --length_source tokens
"""

from trl_ext import LengthAwareIPOConfig, LengthAwareIPOTrainer, models, recipe


def make_parser():
    return recipe.make_parser(LengthAwareIPOConfig)


def main(argv=None):
    args, training_args, model_args = recipe.parse(make_parser(), argv, script=__file__)
    # Declared lengths come with the data (dataset_builders' "ipo" columns); measured ones are counted by the
    # trainer, which then takes the same columns as DPO.
    data_method = "ipo" if training_args.length_source == "declared" else "dpo"
    train_ds, eval_ds = recipe.load_datasets(args, method=data_method, seed=training_args.seed)  # bad data fails here
    tokenizer = models.load_tokenizer(model_args, training_args)
    model = models.load_model(model_args, training_args)
    trainer = LengthAwareIPOTrainer(
        model=model,
        ref_model=None,  # PEFT: base with adapters disabled; full fine-tuning: TRL loads a frozen copy
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=models.lora_config(model_args),
        callbacks=recipe.callbacks(),
    )
    metrics = recipe.train(trainer)
    metrics["length_penalty_used"] = trainer.length_penalty  # the resolved alpha ("auto" is computed from the data)
    return recipe.finish(
        trainer, args, model_args, method="ipo", train_dataset=train_ds, eval_dataset=eval_ds, metrics=metrics
    )


if __name__ == "__main__":
    recipe.run_script(main)
