"""ORPO (Hong et al. 2024, https://arxiv.org/abs/2403.07691) with TRL's `trl.experimental.orpo.ORPOTrainer`:
SFT and preference alignment in one stage, no reference model. TRL's `beta` is the weight (lambda in the paper,
0.1 there) of the odds-ratio term, not a temperature.

Data: `pairs_sft_target` (pairs + which answer is the SFT target) or `pairs`, via `dataset_builders`.

    # offline, CPU, about a minute (the embedded tiny model):
    accelerate launch recipes/orpo.py --config recipes/configs/orpo/tiny-cpu.yaml
    # one 24 GB GPU, a 7B model in 4-bit NF4 + LoRA:
    accelerate launch recipes/orpo.py --config recipes/configs/orpo/qlora-24gb.yaml \
        --dataset_path my_pairs.jsonl --model_name_or_path Qwen/Qwen2.5-7B --push_to_hub true
"""

from trl.experimental.orpo import ORPOConfig

from trl_ext import models, recipe
from trl_ext.orpo import ORPOTrainer


def make_parser():
    return recipe.make_parser(ORPOConfig)


def main(argv=None):
    args, training_args, model_args = recipe.parse(make_parser(), argv, script=__file__)
    train_ds, eval_ds = recipe.load_datasets(args, method="orpo", seed=training_args.seed)  # bad data fails here
    tokenizer = models.load_tokenizer(model_args, training_args)
    model = models.load_model(model_args, training_args)
    trainer = ORPOTrainer(
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
        trainer, args, model_args, method="orpo", train_dataset=train_ds, eval_dataset=eval_ds, metrics=metrics
    )


if __name__ == "__main__":
    recipe.run_script(main)
