"""On-policy preference data: sample k answers per prompt from a model, score them with a reward function and/or a
reward model, and write one of the input shapes (`trl_ext.preference_data`), ready for any recipe.

Prompts: any data file with a prompt; with `reward_functions: [instruction_following]` the prompts carry IFEval
constraints (`trl-ext constraints REQUESTS --output prompts.jsonl` makes them). The output is a JSONL file in the
asked shape (`pairs`, `binary`, `ranked`, `pairs_with_lengths`, `pairs_sft_target`) with a sidecar
`<output_path>.meta.json` (model, rewards, sampling settings, seed, commit, counts, speed). Run the same command
again after an interruption and it continues where it stopped.

    # offline, CPU, seconds (the embedded tiny model, toy prompts with one constraint each):
    python recipes/generate.py --config recipes/configs/generate/tiny-cpu.yaml
    # SmolLM2-135M-Instruct on the shipped constraint prompts, scored by IFEval's checkers:
    python recipes/generate.py --config recipes/configs/generate/smollm2-ifeval-cpu.yaml
    # then train on it, e.g. DPO:
    accelerate launch recipes/dpo.py --config recipes/configs/dpo/smollm2-cpu.yaml --dataset_path outputs/pairs.jsonl
"""

import logging
import sys

from trl import ModelConfig, TrlParser

from trl_ext.preference_data import GenerateArguments, generate_preference_data
from trl_ext.recipe import format_command


def make_parser():
    return TrlParser((GenerateArguments, ModelConfig))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args, model_args = make_parser().parse_args_and_config(argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, stream=sys.stdout
    )
    return generate_preference_data(args, model_args, command=format_command(argv, __file__))


def run(argv=None) -> int:
    """`main` as a command: a mistake in the data, the settings or a path is one line on stderr and exit status 2."""
    from dataset_builders.errors import DataError

    try:
        main(argv)
    except (DataError, ValueError, FileNotFoundError) as error:  # ConstraintError is a ValueError
        print(f"generate: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run())
