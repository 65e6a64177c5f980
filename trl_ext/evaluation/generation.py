"""Generation for evaluation: completions sampled from exactly the model's distribution, their lengths, and the KL of
the policy to its reference on its own samples."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from trl_ext.ops import KLEstimator
from trl_ext.sampling import sample, sampling_config
from trl_ext.tokenization import Text, encode_prompt, pad_token_id, stop_token_ids

from .metrics import KLEstimate, kl_summary
from .scoring import _batches, _device, _pad_stack, _progress, reference_model, sequence_token_logps

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class Generations:
    """Completions generated for `prompts` (one per prompt per `num_return_sequences`, in prompt order)."""

    prompts: list[Text]
    completions: list[str]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]  # generated tokens up to and including EOS (if generated), no padding
    finished: list[bool] = field(default_factory=list)  # ended with EOS before max_new_tokens


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Text],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    do_sample: bool = True,
    temperature: float = 1.0,
    num_return_sequences: int = 1,
    seed: int | None = 0,
    progress: bool = True,
    desc: str = "generating",
) -> Generations:
    """Batched generation (left padding) of completions for `prompts`.

    Samples ``softmax(logits / temperature)`` exactly (temperature 1 by default: the model's own distribution, which a
    KL estimate on the policy's samples needs), or decodes greedily with `do_sample=False`; nothing is taken from the
    checkpoint's generation config (`trl_ext.sampling`). A completion ends at the tokenizer's EOS or any end-of-turn
    token the model's generation config names (`trl_ext.tokenization.stop_token_ids`). `seed` makes sampling
    reproducible (torch's RNG is forked, not disturbed).
    """
    device = _device(model)
    stops = stop_token_ids(model, tokenizer)
    pad = pad_token_id(tokenizer)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    expanded = [(i, ids) for i, ids in enumerate(encoded) for _ in range(num_return_sequences)]
    completions: list[list[int]] = [[] for _ in expanded]
    finished = [False] * len(expanded)
    order = sorted(range(len(expanded)), key=lambda k: len(expanded[k][1]))
    config = sampling_config(
        max_new_tokens=max_new_tokens,
        eos_token_id=stops,
        pad_token_id=pad,
        temperature=temperature,
        do_sample=do_sample,
    )
    was_training = model.training
    model.eval()
    rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else []) if seed is not None else None
    try:
        with rng if rng is not None else contextlib.nullcontext():
            if seed is not None:
                torch.manual_seed(seed)
            n_batches = math.ceil(len(order) / batch_size)
            for idx in _progress(_batches(order, batch_size), desc, total=n_batches, enabled=progress):
                width = max(len(expanded[k][1]) for k in idx)
                ids = torch.full((len(idx), width), pad, dtype=torch.long)
                attn = torch.zeros((len(idx), width), dtype=torch.long)
                for row, k in enumerate(idx):
                    p = expanded[k][1]
                    ids[row, width - len(p) :] = torch.tensor(p)
                    attn[row, width - len(p) :] = 1
                output = sample(model, ids.to(device), attn.to(device), config)
                new = output[:, width:].cpu()
                for row, k in enumerate(idx):
                    tokens = new[row].tolist()
                    end = next((t for t, token in enumerate(tokens) if token in stops), None)
                    if end is not None:
                        tokens = tokens[: end + 1]
                        finished[k] = True
                    else:  # ran to max_new_tokens; trailing pads come only after EOS, so none here
                        finished[k] = False
                    completions[k] = tokens
    finally:
        model.train(was_training)
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in completions]
    return Generations(
        prompts=[prompts[i] for i, _ in expanded],
        completions=texts,
        prompt_ids=[list(ids) for _, ids in expanded],
        completion_ids=completions,
        finished=finished,
    )


def kl_to_reference(
    model: torch.nn.Module,
    generations: Generations,
    *,
    ref_model: torch.nn.Module | None = None,
    pad_token_id: int = 0,
    estimator: KLEstimator = "k1",
    batch_size: int = 16,
    progress: bool = True,
) -> KLEstimate:
    """KL(pi || pi_ref) on the policy's own samples `generations` (sampled at temperature 1 from `model`)."""
    kwargs = dict(pad_token_id=pad_token_id, batch_size=batch_size, progress=progress)
    pol, mask = _pad_stack(
        sequence_token_logps(
            model, generations.prompt_ids, generations.completion_ids, desc="policy log-probs", **kwargs
        )
    )
    with reference_model(model, ref_model) as ref:
        rows = sequence_token_logps(ref, generations.prompt_ids, generations.completion_ids, desc="reference log-probs", **kwargs)  # fmt: skip
    return kl_summary(pol, _pad_stack(rows)[0], mask, estimator=estimator)


def completion_lengths(generations: Generations, unit: Literal["tokens", "words", "chars"] = "tokens") -> list[int]:
    """Length of each generated completion: tokens (EOS excluded), whitespace words, or characters."""
    if unit == "tokens":
        return [len(ids) - (1 if done else 0) for ids, done in zip(generations.completion_ids, generations.finished)]
    if unit == "words":
        return [len(text.split()) for text in generations.completions]
    if unit == "chars":
        return [len(text) for text in generations.completions]
    raise ValueError(f"unit must be tokens, words or chars, got {unit!r}")
