"""Where the packaged recipes, their configs and the accelerate configs live (`recipes/` in a clone, the package
`trl_ext.recipes` in a wheel), and how a config is named. Library code asks here, not the command line."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


class CLIError(Exception):
    """A mistake on the command line (here: a config that is neither a file nor packaged): one line, exit status 2."""


def recipes_dir() -> Path:
    """The recipes folder: `trl_ext/recipes` in an installed wheel, `recipes/` in a clone (editable install)."""
    spec = importlib.util.find_spec("trl_ext.recipes")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parents[1] / "recipes"


def packaged_configs() -> dict[str, Path]:
    """``{"dpo/tiny-cpu": path, ...}`` for every packaged recipe config."""
    root = recipes_dir() / "configs"
    return {f"{p.parent.name}/{p.stem}": p for p in sorted(root.glob("*/*.yaml"))}


def accelerate_configs() -> dict[str, Path]:
    return {p.stem: p for p in sorted((recipes_dir() / "accelerate_configs").glob("*.yaml"))}


def config_purpose(path: Path) -> str:
    """The config's purpose: the first sentence of its opening comment (after the command line), whole even when it
    runs over several comment lines."""
    words: list[str] = []
    for line in path.read_text().splitlines()[1:]:
        text = line.lstrip("# ").strip() if line.startswith("#") else ""
        if not text or text.startswith("---"):
            if words:
                break
            continue
        words.append(text)
    paragraph = " ".join(words)
    depth = 0
    for i, char in enumerate(paragraph):  # the first full stop outside parentheses ends the sentence
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "." and depth == 0 and (i + 1 == len(paragraph) or paragraph[i + 1] == " "):
            return paragraph[: i + 1]
    return paragraph


def resolve_config(value: str, method: str) -> str:
    """A YAML path as given, else a packaged config (``dpo/tiny-cpu``, ``tiny-cpu`` for this method, ``.yaml`` optional)."""
    if Path(value).is_file():
        return value
    configs = packaged_configs()
    name = value.removesuffix(".yaml")
    for candidate in (name, f"{method}/{name}"):
        if candidate in configs:
            return str(configs[candidate])
    mine = [n for n in configs if n.startswith(f"{method}/")]
    raise CLIError(f"--config {value}: no such file, nor a packaged config (for {method}: {', '.join(mine)})")


def resolve_accelerate_config(value: str) -> str:
    if Path(value).is_file():
        return value
    known = accelerate_configs()
    if value.removesuffix(".yaml") in known:
        return str(known[value.removesuffix(".yaml")])
    raise CLIError(f"--accelerate_config {value}: no such file, nor one of {', '.join(known)}")


def load_recipe(name: str) -> ModuleType:
    """The recipe script `recipes/<name>.py` (scripts, not a package) imported once as module `recipes_<name>`: the
    one way the pipeline, the benchmarks, the measurer and the tests load a recipe."""
    module_name = f"recipes_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, recipes_dir() / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
