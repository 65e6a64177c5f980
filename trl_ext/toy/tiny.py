"""The embedded default model: a tiny Llama built locally, so recipes and tests run offline on a CPU.

`tiny-cpu.yaml` configs name ``trl-ext/tiny-llama``; `trl_ext.models.resolve_model_name` turns that name into a local
folder, building it the first time (deterministic: same seed, same weights) and caching it under
``$TRL_EXT_CACHE`` (default ``~/.cache/trl_ext``). Any other name is passed through untouched.

The tokenizer is byte-level (256 byte tokens + 4 specials, no merges), saved as a plain ``tokenizer.json`` so
``AutoTokenizer.from_pretrained`` loads it without this package. Unlike ByT5's tokenizer it adds no ``</s>`` to
plain text, so a tokenized prompt is a prefix of the tokenized prompt + completion, as TRL's trainers expect.

Example:
    >>> from transformers import AutoModelForCausalLM
    >>> from trl_ext.models import resolve_model_name
    >>> model = AutoModelForCausalLM.from_pretrained(resolve_model_name("trl-ext/tiny-llama"))
"""

from __future__ import annotations

from pathlib import Path

from trl_ext.model_cache import build_once

TINY_MODEL_ID = "trl-ext/tiny-llama"
# Bump when the architecture, tokenizer or chat template changes, so stale caches are not reused.
_TINY_VERSION = "v1"

SPECIAL_TOKENS = ["<pad>", "</s>", "<s>", "<unk>"]
# Roles as plain text markers; every turn ends with the EOS token so generation learns to stop.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>' }}{%- endif %}"
)

TINY_CONFIG = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)


def build_byte_tokenizer():
    """A byte-level `PreTrainedTokenizerFast` with a chat template; needs no vocabulary files or network."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", bos_token="<s>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(seed: int = 0):
    """A randomly initialised tiny `LlamaForCausalLM` (about 0.5M parameters) and its tokenizer."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **TINY_CONFIG,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    return model, tokenizer


def tiny_model_path(seed: int = 0) -> Path:
    """Build (once) and return the folder holding the tiny model and tokenizer."""
    return build_once(f"tiny-llama-{_TINY_VERSION}-seed{seed}", lambda: build_tiny_model(seed))
