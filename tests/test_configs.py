"""Every YAML config parses through its recipe's parser, so configs cannot drift from the code.

Recipes are discovered by folder: `recipes/configs/<method>/*.yaml` is parsed by `recipes/<method>.py`'s
`make_parser()` (configs added for new recipes are covered automatically). The accelerate configs load through
accelerate's own config class.
"""

import dataclasses
import shlex
from pathlib import Path

import pytest
import yaml
from _recipe_utils import RECIPES, load_recipe

# Training configs, one folder per method; `generate/` holds the preference-data generator's configs (no training).
CONFIGS = sorted(c for c in (RECIPES / "configs").glob("*/*.yaml") if c.parent.name != "generate")
GENERATE_CONFIGS = sorted((RECIPES / "configs" / "generate").glob("*.yaml"))
ACCELERATE_CONFIGS = sorted((RECIPES / "accelerate_configs").glob("*.yaml"))


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _parse(config: Path):
    method = config.parent.name
    assert (RECIPES / f"{method}.py").exists(), f"{_id(config)}: no recipes/{method}.py for this folder"
    parser = load_recipe(method).make_parser()
    # GPU configs say bf16, which TrainingArguments refuses on a machine without a GPU; `--use_cpu true` lets every
    # other field be checked here. fail_with_unknown_args (the default): a key no dataclass knows is an error.
    on_cpu = [] if "cpu" in config.stem else ["--use_cpu", "true"]
    return parser.parse_args_and_config(["--config", str(config), *on_cpu])


def test_every_method_folder_has_the_three_standard_configs():
    for folder in sorted(p for p in (RECIPES / "configs").iterdir() if p.is_dir() and p.name != "generate"):
        names = {p.name for p in folder.glob("*.yaml")}
        assert {"tiny-cpu.yaml", "smollm2-cpu.yaml", "qlora-24gb.yaml", "qlora-12gb.yaml"} <= names, folder.name


@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_config_parses_through_its_recipe(config, monkeypatch):
    monkeypatch.chdir(RECIPES.parent)
    parsed = _parse(config)
    recipe_args, training_args, model_args = parsed[:3]
    assert model_args.model_name_or_path
    assert getattr(training_args, "trust_remote_code", False) is False  # off unless a user turns it on
    assert dataclasses.is_dataclass(recipe_args)


@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_config_starts_with_the_command_that_runs_it(config):
    first = config.read_text().splitlines()[0]
    assert first.startswith("# "), f"{_id(config)}: the first line must be the command, as a comment"
    words = shlex.split(first[2:])
    method = config.parent.name
    assert f"recipes/{method}.py" in words, first
    assert words[words.index("--config") + 1] == f"recipes/configs/{method}/{config.name}", first


@pytest.mark.parametrize("config", GENERATE_CONFIGS, ids=_id)
def test_generate_configs_parse_and_start_with_their_command(config, monkeypatch):
    monkeypatch.chdir(RECIPES.parent)
    args, model_args = load_recipe("generate").make_parser().parse_args_and_config(["--config", str(config)])
    assert model_args.model_name_or_path and args.output_path.startswith("outputs/")
    assert (RECIPES.parent / args.dataset_path).exists() and args.reward_functions
    words = shlex.split(config.read_text().splitlines()[0][2:])
    assert words[:2] == ["python", "recipes/generate.py"] and words[words.index("--config") + 1] == _id_path(config)


def _id_path(config: Path) -> str:
    return f"recipes/configs/{config.parent.name}/{config.name}"


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.name == "tiny-cpu.yaml"], ids=_id)
def test_tiny_cpu_configs_run_offline_on_a_cpu(config, monkeypatch):
    monkeypatch.chdir(RECIPES.parent)
    recipe_args, training_args, model_args = _parse(config)[:3]
    assert model_args.model_name_or_path == "trl-ext/tiny-llama"
    assert training_args.use_cpu and not training_args.bf16 and not training_args.fp16
    assert not model_args.load_in_4bit  # QLoRA on CPU is tested, but the default stays quick
    if recipe_args.dataset_path:  # the example data shipped in recipes/data
        assert recipe_args.dataset_path.startswith("recipes/data/"), recipe_args.dataset_path


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.name.startswith("qlora-")], ids=_id)
def test_qlora_configs_are_4bit_nf4_double_quant_lora_with_bf16_compute(config, monkeypatch):
    monkeypatch.chdir(RECIPES.parent)
    _, training_args, model_args = _parse(config)[:3]
    assert model_args.load_in_4bit and model_args.bnb_4bit_quant_type == "nf4" and model_args.use_bnb_nested_quant
    assert model_args.use_peft
    # TRL's ModelConfig.dtype defaults to float32 and the 4-bit compute dtype follows it: GPU configs must say bf16
    assert model_args.dtype == "bfloat16" and training_args.bf16
    assert training_args.gradient_checkpointing


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_loads(config):
    from accelerate.commands.config.config_args import ClusterConfig

    first = config.read_text().splitlines()[0]
    assert first.startswith("# accelerate launch --config_file recipes/accelerate_configs/" + config.name), first
    cluster = ClusterConfig.from_yaml_file(str(config))
    assert cluster.num_processes >= 1 and cluster.compute_environment.value == "LOCAL_MACHINE"
    assert yaml.safe_load(config.read_text())["distributed_type"] in ("NO", "MULTI_GPU", "DEEPSPEED", "FSDP")


def test_the_four_accelerate_engines_are_there():
    names = {p.stem for p in ACCELERATE_CONFIGS}
    assert {"single_gpu", "ddp", "zero3", "fsdp"} <= names
