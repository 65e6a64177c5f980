"""KTO (Ethayarajh et al. 2024, https://arxiv.org/abs/2402.01306) with TRL's `KTOTrainer`: learns from
unpaired good/bad labels. With `use_peft` the reference model is the base with the adapter disabled.

Data: `binary` (prompt, response, label good/bad), or any shape `dataset_builders` can turn into labels
(e.g. `pairwise_ab`). `class_weights: auto` (the default) sets `desirable_weight`/`undesirable_weight` from the
label counts so `desirable_weight * n_good / (undesirable_weight * n_bad)` lies in [1, 4/3] (paper, section 4.2);
`class_weights: config` keeps the config's weights. KTO needs a batch size above 1 and shuffled data.

    # offline, CPU, about a minute (the embedded tiny model):
    accelerate launch recipes/kto.py --config recipes/configs/kto/tiny-cpu.yaml
    # one 24 GB GPU, a 7B model in 4-bit NF4 + LoRA:
    accelerate launch recipes/kto.py --config recipes/configs/kto/qlora-24gb.yaml \
        --dataset_path my_labels.jsonl --model_name_or_path Qwen/Qwen2.5-7B-Instruct --push_to_hub true
"""

import logging
from dataclasses import dataclass, field

from trl import KTOConfig, KTOTrainer

import dataset_builders
from trl_ext import models, recipe

logger = logging.getLogger(__name__)


@dataclass
class KTOArguments:
    class_weights: str = field(
        default="auto",
        metadata={"help": "auto: weights from the label counts; config: keep desirable/undesirable_weight as set.",
                  "choices": ["auto", "config"]},
    )  # fmt: skip


def make_parser():
    return recipe.make_parser(KTOConfig, extra_dataclasses=(KTOArguments,))


def main(argv=None):
    args, training_args, model_args, kto_args = recipe.parse(make_parser(), argv, script=__file__)
    train_ds, eval_ds = recipe.load_datasets(args, method="kto", seed=training_args.seed)  # bad data fails here
    tokenizer = models.load_tokenizer(model_args, training_args)
    model = models.load_model(model_args, training_args)
    if kto_args.class_weights == "auto":
        classes = dataset_builders.kto_class_weights(train_ds)
        training_args.desirable_weight = classes["desirable_weight"]
        training_args.undesirable_weight = classes["undesirable_weight"]
        logger.info("KTO classes and weights of the %d training rows: %s", len(train_ds), classes)
    trainer = KTOTrainer(
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
        trainer, args, model_args, method="kto", train_dataset=train_ds, eval_dataset=eval_ds, metrics=metrics
    )


if __name__ == "__main__":
    recipe.run_script(main)
