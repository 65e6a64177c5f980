"""Packaging beyond what pyproject.toml can say: `recipes/` stays at the top of the repository (scripts a clone runs
with `accelerate launch recipes/<method>.py`) and ships in the wheel as the package `trl_ext.recipes`, with its
configs, accelerate configs and example data (as data-only subpackages), so the `trl-ext` command finds them after
`pip install trl-ext`."""

from pathlib import Path

from setuptools import find_packages, setup

RECIPE_DATA = {  # folder under recipes/ -> its files the wheel ships
    "configs": ["*.yaml"],
    "accelerate_configs": ["*.yaml"],
    "data": ["*.jsonl", "*.json", "*.jsonc", "*.csv", "*.gz", "*LICENSE", "*.md"],
}
data_folders = {
    "trl_ext.recipes." + ".".join(folder.relative_to("recipes").parts): patterns
    for top, patterns in RECIPE_DATA.items()
    for folder in [Path("recipes", top), *sorted(p for p in Path("recipes", top).glob("*") if p.is_dir())]
}

setup(
    packages=[
        *find_packages(include=["trl_ext", "trl_ext.*", "dataset_builders", "dataset_builders.*"]),
        "trl_ext.recipes",
        *data_folders,
    ],
    package_dir={"trl_ext.recipes": "recipes"},
    package_data={"trl_ext": ["py.typed"], "dataset_builders": ["py.typed"], **data_folders},
)
