"""Sampling the distribution the loss assumes: generation that inherits nothing from a checkpoint.

`model.generate` fills every unset generation field from the checkpoint's `generation_config.json` and then from
transformers' global defaults (`top_k=50`). A chat checkpoint typically ships `top_k=20`, `top_p=0.8` or
`repetition_penalty=1.05`; rollouts sampled with those come from a truncated, re-weighted distribution, while PPO's
ratio and KL penalty (and a KL estimate on "the policy's own samples") use the full softmax. `sample` runs
`generate` with the checkpoint's settings switched off (its token ids kept) and every distribution-changing field at
its neutral value, so the sampled tokens follow ``softmax(logits / temperature)`` exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import GenerationConfig

# Fields whose neutral value must be set explicitly: left unset (None), transformers would fill them from its
# global defaults (top_k=50) or from the checkpoint.
_NEUTRAL = dict(top_k=0, top_p=1.0, typical_p=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0, min_length=0)


def sampling_config(
    *,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int | None,
    temperature: float = 1.0,
    do_sample: bool = True,
    num_return_sequences: int = 1,
) -> GenerationConfig:
    """A `GenerationConfig` that samples from ``softmax(logits / temperature)`` (or decodes greedily) and nothing
    else: no top-k, top-p, typical-p, repetition penalty or minimum length."""
    from transformers import GenerationConfig

    eos = list(eos_token_id) if isinstance(eos_token_id, Sequence) else eos_token_id
    neutral = dict(_NEUTRAL)
    if do_sample:
        neutral["temperature"] = temperature
    else:  # greedy: the sampling-only fields stay unset (transformers warns about them otherwise)
        for key in ("top_k", "top_p", "typical_p"):
            neutral.pop(key)
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        eos_token_id=eos,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        num_return_sequences=num_return_sequences,
        **neutral,
    )


@contextlib.contextmanager
def checkpoint_generation_defaults_off(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, `model.generate` sees a bare `GenerationConfig` (token ids only) instead of the
    checkpoint's, on the model and on a PEFT model's base alike; restored afterwards."""
    from transformers import GenerationConfig

    holders = [model]
    if hasattr(model, "get_base_model"):
        holders.append(model.get_base_model())
    saved = [(m, m.generation_config) for m in holders if getattr(m, "generation_config", None) is not None]
    if not saved:
        yield
        return
    original = saved[0][1]
    bare = GenerationConfig(
        bos_token_id=original.bos_token_id, eos_token_id=original.eos_token_id, pad_token_id=original.pad_token_id
    )
    try:
        for holder, _ in saved:
            holder.generation_config = bare
        yield
    finally:
        for holder, config in saved:
            holder.generation_config = config


def sample(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    generation_config: GenerationConfig,
    **generate_kwargs,
):
    """`model.generate` with `generation_config` as the only source of settings (see the module docstring)."""
    with checkpoint_generation_defaults_off(model):
        return model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config, **generate_kwargs
        )
