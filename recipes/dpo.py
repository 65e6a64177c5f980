"""DPO (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290) with TRL's `DPOTrainer`; with `prefix_sharing: true`
(the GPU configs) each pair's prompt is computed once (`trl_ext.dpo.PrefixSharingDPOTrainer`, same loss).

Data: `pairs` (prompt, chosen, rejected), or any shape `dataset_builders` can turn into pairs.
With `use_peft` the reference model is the base with the adapter disabled (no second copy in memory).

    # offline, CPU, about a minute (the embedded tiny model):
    accelerate launch recipes/dpo.py --config recipes/configs/dpo/tiny-cpu.yaml
    # one 24 GB GPU, a 7B model in 4-bit NF4 + LoRA:
    accelerate launch recipes/dpo.py --config recipes/configs/dpo/qlora-24gb.yaml \
        --dataset_path my_pairs.jsonl --model_name_or_path Qwen/Qwen2.5-7B-Instruct --push_to_hub true
"""

from trl_ext import models, recipe
from trl_ext.dpo import PrefixSharingDPOConfig, PrefixSharingDPOTrainer


def make_parser():
    return recipe.make_parser(PrefixSharingDPOConfig)


def main(argv=None):
    args, training_args, model_args = recipe.parse(make_parser(), argv, script=__file__)
    train_ds, eval_ds = recipe.load_datasets(args, method="dpo", seed=training_args.seed)  # bad data fails here
    tokenizer = models.load_tokenizer(model_args, training_args)
    model = models.load_model(model_args, training_args)
    trainer = PrefixSharingDPOTrainer(
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
    return recipe.finish(
        trainer, args, model_args, method="dpo", train_dataset=train_ds, eval_dataset=eval_ds, metrics=metrics
    )


if __name__ == "__main__":
    recipe.run_script(main)
