"""The `trl-ext` command: packaged configs by name, the accelerate launcher, data and evaluate subcommands, one-line
errors; and (slow) the wheel, installed with its dependencies into a fresh venv, run from an empty folder."""

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from _recipe_utils import REPO_ROOT, load_recipe

from trl_ext import cli, recipe


def test_every_packaged_config_is_listed_with_its_purpose(capsys):
    assert cli.main(["configs"]) == 0
    out = capsys.readouterr().out
    configs = sorted((REPO_ROOT / "recipes" / "configs").glob("*/*.yaml"))
    for path in configs:
        line = next(x for x in out.splitlines() if x.startswith(f"{path.parent.name}/{path.stem} "))
        purpose = cli.config_purpose(path)
        assert purpose in line and purpose.endswith((".", ")")), purpose  # a whole sentence, never cut mid-way
        assert purpose.count("(") == purpose.count(")"), purpose
    assert "ddp" in out and "fsdp" in out


@pytest.mark.parametrize("name", ["dpo/tiny-cpu", "dpo/tiny-cpu.yaml", "tiny-cpu", "smollm2-cpu"])
def test_a_packaged_config_by_name(name):
    path = Path(cli.resolve_config(name, "dpo"))
    assert path.parent.name == "dpo" and path.is_file() and path.stem == name.split("/")[-1].removesuffix(".yaml")


def test_unknown_configs_and_commands_are_one_line_errors(capsys):
    assert cli.main(["dpo", "--config", "dpo/nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trl-ext dpo: error: --config dpo/nope") and "dpo/tiny-cpu" in err and "\n" not in err
    assert cli.main(["train"]) == 2
    assert "unknown command 'train'" in capsys.readouterr().err
    assert cli.main(["dpo", "--config", "dpo/tiny-cpu", "--accelerate_config", "nope"]) == 2
    assert "single_gpu" in capsys.readouterr().err


def test_accelerate_config_launches_the_packaged_script(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda command: calls.append(command) or 0)
    assert cli.main(["dpo", "--accelerate_config", "ddp", "--config", "dpo/tiny-cpu", "--max_steps", "2"]) == 0
    (command,) = calls
    assert command[1:5] == [
        "-m",
        "accelerate.commands.launch",
        "--quiet",
        "--config_file",
    ]  # our one line, no traceback
    assert Path(command[5]).name == "ddp.yaml" and Path(command[6]) == cli.recipes_dir() / "dpo.py"
    assert command[7:] == [
        "--config",
        str(cli.recipes_dir() / "configs" / "dpo" / "tiny-cpu.yaml"),
        "--max_steps",
        "2",
    ]


def test_method_help_names_the_cli_options_then_the_recipes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["kto", "--help"])
    out = capsys.readouterr().out
    assert "--accelerate_config" in out and "--desirable_weight" in out


def test_data_subcommand_is_the_data_cli(capsys):
    assert cli.main(["data", "inspect", str(REPO_ROOT / "recipes" / "data" / "pairs.jsonl")]) == 0
    assert "pairs" in capsys.readouterr().out


def test_packaged_data_paths_resolve_outside_a_clone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = Path(recipe.packaged_data("recipes/data/pairs.jsonl"))
    assert found.is_file() and found == cli.recipes_dir() / "data" / "pairs.jsonl"
    assert recipe.packaged_data("my/own.jsonl") == "my/own.jsonl"  # not ours: untouched, the loader says it is missing


@pytest.mark.slow
def test_the_wheel_installs_and_runs_from_an_empty_folder(tmp_path):
    """Build the wheel, install it with its dependencies into a fresh venv outside the repository (CPU torch via the
    constraints file, as the README's set-up), then from an empty folder: `trl-ext configs` and a 2-step DPO run."""
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(REPO_ROOT)],
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (wheel,) = dist.glob("trl_ext-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(REPO_ROOT / "constraints" / "cpu.txt"),
                              str(wheel)], capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"
    trl_ext = str(env_dir / "bin" / "trl-ext")
    listed = subprocess.run([trl_ext, "configs"], cwd=empty, env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0 and "dpo/tiny-cpu" in listed.stdout, listed.stderr[-2000:]
    run = subprocess.run([trl_ext, "dpo", "--config", "dpo/tiny-cpu", "--max_steps", "2"], cwd=empty, env=env,
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = empty / "outputs" / "dpo-tiny-cpu"
    assert (out / "adapter_model.safetensors").is_file() and (out / "README.md").is_file()
    where = subprocess.run([str(python), "-c", "import trl_ext.recipes as r; print(r.__file__)"], cwd=empty, env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert str(env_dir) in where.stdout  # the installed package, not the checkout


@pytest.mark.parametrize(
    "script, flags, says",
    [
        ("dpo", ["--config", "dpo/tiny-cpu.yaml", "--dataset_path", "missing.jsonl"], "no such file"),
        ("kto", ["--config", "kto/tiny-cpu.yaml", "--dataset_path", "empty.jsonl"], "no rows"),
        ("ppo", ["--config", "ppo/tiny-cpu.yaml", "--reward_functions", "", "--reward_model_path", "no-such-rm"],
         "reward model 'no-such-rm'"),
        ("ppo", ["--config", "ppo/tiny-cpu.yaml", "--reward_functions", "", "--reward_model_path", ""],
         "PPO needs a reward"),
        ("grpo", ["--config", "grpo/tiny-cpu-online.yaml", "--reward_functions", "no_such_reward"],
         "reward function 'no_such_reward': not a known name"),
    ],
)  # fmt: skip
def test_a_recipe_run_as_a_script_says_a_user_error_in_one_line(tmp_path, script, flags, says):
    # as `trl-ext` does: the sentence, exit status 2, no traceback (it was 94-118 lines under accelerate launch)
    (tmp_path / "empty.jsonl").write_text("")
    flags = [str(REPO_ROOT / "recipes" / "configs" / f) if f.endswith(".yaml") else f for f in flags]
    command = [
        sys.executable,
        str(REPO_ROOT / "recipes" / f"{script}.py"),
        *flags,
        "--output_dir",
        str(tmp_path / "out"),
    ]
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith(f"{script}: error:")]
    assert done.returncode == 2 and len(errors) == 1 and says in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("script", ["sft", "reward", "dpo", "ipo", "kto", "orpo", "grpo", "ppo"])
def test_the_data_is_checked_before_the_model_loads(tmp_path, monkeypatch, script):
    from dataset_builders import DataError
    from trl_ext import models

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before the data was checked")

    monkeypatch.setattr(models, "load_model", no_model)
    monkeypatch.setattr(models, "load_reward_model", no_model, raising=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"unrelated": 1}\n')
    config = REPO_ROOT / "recipes" / "configs" / script / "tiny-cpu.yaml"
    with pytest.raises(DataError):
        load_recipe(script).main(
            ["--config", str(config), "--dataset_path", str(bad), "--output_dir", str(tmp_path / "o")]
        )
