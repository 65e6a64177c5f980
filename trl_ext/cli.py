"""The `trl-ext` command: the recipes, their packaged configs, the data tools and evaluation, from an installed wheel.

    trl-ext dpo --config dpo/tiny-cpu --max_steps 2          # a packaged config by name, flags override it
    trl-ext dpo --config my.yaml --accelerate_config ddp     # through `accelerate launch` with a packaged config
    trl-ext configs                                          # every packaged config and what it is for
    trl-ext data inspect my_pairs.jsonl                      # = python -m dataset_builders inspect ...
    trl-ext evaluate --model_name_or_path outputs/dpo-tiny-cpu --dataset_path heldout.jsonl
    trl-ext plan --config dpo/qlora-24gb --gpu_memory 24          # will it fit? (trl_ext.plan)
    trl-ext constraints requests.jsonl --output prompts.jsonl  # IFEval constraints on your requests
    trl-ext generate --config generate/tiny-cpu               # sample, score, write preference data

A clone keeps working as before (`accelerate launch recipes/dpo.py --config recipes/configs/dpo/tiny-cpu.yaml`): the
same scripts are the package `trl_ext.recipes` in the wheel (setup.py maps `recipes/` there).
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from collections.abc import Sequence

from trl_ext.methods import NAMES
from trl_ext.packaged import (  # noqa: F401 (the CLI's names for them)
    CLIError,
    accelerate_configs,
    config_purpose,
    packaged_configs,
    recipes_dir,
    resolve_accelerate_config,
    resolve_config,
)

METHODS = NAMES  # trl_ext.methods: the one table
OTHER_COMMANDS = {
    "configs": "list the packaged configs and what each is for",
    "data": "inspect or convert a data file (inspect | convert; --help for their options)",
    "evaluate": "evaluate a trained adapter or model against its base (recipes/evaluate.py)",
    "generate": "on-policy preference data: sample, score, write a shape (--config generate/tiny-cpu; recipes/generate.py)",
    "constraints": "attach IFEval constraints to requests: prompts for the instruction_following reward",
    "rlhf": "SFT -> reward model -> PPO in one command (recipes/rlhf_pipeline.py)",
    "plan": "predict a config's peak GPU memory and whether it fits (--config C [--model M] [--gpu_memory GiB])",
}
USAGE = f"""usage: trl-ext <command> [options]

Train (each takes its recipe's flags; trl-ext <method> --help lists them):
  trl-ext <method> --config CONFIG [--accelerate_config ENGINE] [--flag value ...]
  methods: {", ".join(METHODS)}
  CONFIG: a YAML file, or a packaged config by name (trl-ext configs lists them), e.g. dpo/tiny-cpu
  ENGINE: launch through `accelerate launch` with a packaged accelerate config ({{engines}}) or a YAML path;
          without it the recipe runs in this process (one device)

Other commands:
{chr(10).join(f"  trl-ext {name:<11} {text}" for name, text in OTHER_COMMANDS.items())}
"""


def _take_option(args: list[str], name: str) -> tuple[str | None, list[str]]:
    """Remove ``--name value`` or ``--name=value`` from `args`; return the value (None if absent) and the rest."""
    rest, value, i = [], None, 0
    while i < len(args):
        arg = args[i]
        if arg == name:
            if i + 1 >= len(args):
                raise CLIError(f"{name} needs a value")
            value, i = args[i + 1], i + 2
            continue
        if arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return value, rest


def _with_config(args: list[str], method: str) -> list[str]:
    value, rest = _take_option(args, "--config")
    return rest if value is None else ["--config", resolve_config(value, method), *rest]


def run_recipe(name: str, args: Sequence[str]) -> int:
    """Run `trl_ext.recipes.<name>.main(args)` in this process."""
    module = importlib.import_module(f"trl_ext.recipes.{name}")
    module.main(list(args))
    return 0


def run_method(method: str, args: list[str]) -> int:
    engine, args = _take_option(args, "--accelerate_config")
    if any(a in ("-h", "--help") for a in args):
        print(f"trl-ext {method}: --config takes a YAML path or a packaged name (trl-ext configs); "
              f"--accelerate_config ENGINE runs it through accelerate launch ({', '.join(accelerate_configs())}).\n")  # fmt: skip
        return run_recipe(method, ["--help"])
    args = _with_config(args, method)
    if engine is None:
        return run_recipe(method, args)
    script = recipes_dir() / f"{method}.py"
    # --quiet: a failed run shows the recipe's own one-line error, without accelerate's traceback around it
    command = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--config_file",
               resolve_accelerate_config(engine), str(script), *args]  # fmt: skip
    print("+ " + " ".join(command), flush=True)
    return subprocess.call(command)


def list_configs() -> int:
    configs = packaged_configs()
    width = max(map(len, configs)) + 2
    for name, path in configs.items():
        print(f"{name:<{width}}{config_purpose(path)}")
    print(f"\naccelerate configs (--accelerate_config): {', '.join(accelerate_configs())}")
    return 0


def _one_line_errors() -> tuple[type[BaseException], ...]:
    """Errors a user causes: one line, not a traceback (the recipes' own list, and the command line's)."""
    from trl_ext.recipe import user_errors

    return (CLIError, *user_errors())


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE.format(engines=", ".join(accelerate_configs())))
        return 0
    command, rest = args[0], args[1:]
    try:
        if command in METHODS:
            return run_method(command, rest)
        if command == "configs":
            return list_configs()
        if command == "data":
            from dataset_builders.__main__ import main as data_main

            return int(data_main(rest) or 0)
        if command == "evaluate":
            return run_recipe("evaluate", rest)
        if command == "generate":
            module = importlib.import_module("trl_ext.recipes.generate")
            return module.run(_with_config(rest, "generate"))
        if command == "constraints":
            from trl_ext.rewards.constraints import main as constraints_main

            return constraints_main(rest)
        if command == "rlhf":
            return run_recipe("rlhf_pipeline", rest)
        if command == "plan":
            from trl_ext.plan import main as plan_main

            return plan_main(rest)
        raise CLIError(f"unknown command {command!r} (one of: {', '.join([*METHODS, *OTHER_COMMANDS])})")
    except _one_line_errors() as error:
        print(f"trl-ext {command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
