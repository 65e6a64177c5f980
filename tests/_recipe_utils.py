"""Helpers for the recipe tests: import a recipe script, write ToyTask data in its input shape, run it in-process."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainerCallback

from trl_ext.toy.synthetic import ToyTask

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES = REPO_ROOT / "recipes"

# method -> the input shape its tests feed through dataset_builders (the shape README.md pairs with each method)
SHAPE = {"sft": "sft", "reward": "pairwise_ab", "dpo": "pairs", "kto": "binary", "orpo": "pairs_sft_target"}


def load_recipe(method: str):
    """Import `recipes/<method>.py` (not a package) as module `recipes_<method>` (`trl_ext.packaged.load_recipe`)."""
    from trl_ext.packaged import load_recipe as load

    return load(method)


def write_data(method: str, folder: Path, n: int, split: str = "train", seed: int = 0, **task) -> Path:
    shape = SHAPE[method]
    return ToyTask(seed=seed, **task).write_jsonl(shape, n, Path(folder) / f"{method}-{split}-{n}.jsonl", split=split)


def tiny_args(method: str, data: Path, output_dir: Path, *flags: str) -> list[str]:
    """Command-line arguments for a short run of `method` on its tiny-cpu config."""
    return [
        "--config", str(RECIPES / "configs" / method / "tiny-cpu.yaml"),
        "--dataset_path", str(data),
        "--output_dir", str(output_dir),
        "--logging_steps", "1",
        *flags,
    ]  # fmt: skip


class ParamSnapshot(TrainerCallback):
    """Records the trainable parameters (and the model's layer types) at the start and the end of training."""

    def __init__(self):
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}
        self.module_types: set[str] = set()
        self.logs: list[dict] = []

    @staticmethod
    def _trainable(model):
        return {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = self._trainable(model)
        self.module_types = {type(m).__name__ for m in model.modules()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = self._trainable(model)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))

    def changed(self) -> list[str]:
        return [n for n, p in self.after.items() if not torch.equal(p, self.before[n])]


class StopAtStep(TrainerCallback):
    """Simulates a killed run: raises once `global_step` reaches `step` (after that step's checkpoint is saved)."""

    class Killed(RuntimeError):
        pass

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise self.Killed(f"killed after the checkpoint of step {state.global_step}")
