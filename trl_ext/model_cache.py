"""The cache of models the project builds locally (`trl_ext.embedded`'s SmolLM2, `trl_ext.toy.tiny`'s tiny Llama):
``$TRL_EXT_CACHE`` (default ``~/.cache/trl_ext``), each model written once, whole, by one process."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    return Path(os.environ.get("TRL_EXT_CACHE", Path.home() / ".cache" / "trl_ext"))


def build_once(folder_name: str, build: Callable[[], tuple[Any, Any]]) -> Path:
    """The cached folder `folder_name`, built with `build() -> (model, tokenizer)` if absent.

    Written to a temporary folder and renamed, so parallel processes (torchrun, pytest-xdist) never see half a model.
    """
    target = cache_dir() / folder_name
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    model, tokenizer = build()
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
    try:
        save_complete(model, tokenizer, tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep theirs
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def save_complete(model, tokenizer, folder: Path) -> None:
    """Write config, generation config, weights and tokenizer on *this* process.

    Not `model.save_pretrained`: under torch.distributed (recipes started by `accelerate launch` load the model after
    the process group exists) transformers 5 writes weights on rank 0 only, so another rank could rename a folder
    holding just the tokenizer into the cache before rank 0 finishes.
    """
    from safetensors.torch import save_file

    model.config.architectures = [type(model).__name__]  # what save_pretrained records
    model.config.dtype = str(model.dtype).removeprefix("torch.")
    model.config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    state = model.state_dict()
    if model.config.tie_word_embeddings:  # stored once, as transformers does; re-tied on load
        state.pop("lm_head.weight")
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)
    missing = [n for n in ("config.json", "model.safetensors", "tokenizer.json") if not (folder / n).exists()]
    if missing:
        raise RuntimeError(f"building a model in {folder}: {', '.join(missing)} not written")


# ----------------------------------------------------------------------------------------------------- SmolLM2
