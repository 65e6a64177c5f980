"""The one place where trl_ext turns text into token ids, exactly as TRL 1.16's trainers do.

Every trainer and helper of ours that tokenizes (ranked GRPO, the Plackett-Luce reward model, PPO's rollouts and
reward scores, evaluation) calls these functions, so a chat-template rule is right (or wrong) in one place only.

TRL's rules (`DPOTrainer._prepare_dataset`, `RewardTrainer._prepare_dataset`, `GRPOTrainer`'s prompt encoding):

- A *conversational* value is a list of chat messages; the prompt goes through the chat template with the
  generation prompt, prompt + completion through the chat template without it. A plain-string completion after a
  conversational prompt becomes one assistant message.
- Plain text: ``tokenize(prompt)`` and ``tokenize(prompt + completion + eos)`` (EOS appended unless the completion
  already ends with it).
- The completion starts where the tokenized prompt and prompt + completion diverge (`common_prefix_length`); for a
  pair or a group, at the shortest such prefix over all of its completions, so every member sees the same prompt.

Example:
    >>> from trl_ext.tokenization import encode_completion, encode_prompt
    >>> prompt_ids, completion_ids = encode_completion(tokenizer, [{"role": "user", "content": "Hi"}], "Hello!")
    >>> encode_prompt(tokenizer, [{"role": "user", "content": "Hi"}]) == prompt_ids   # for templates that agree
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Text = str | list[dict[str, Any]]  # a plain string, or TRL's conversational form (a list of chat messages)


def is_conversational(value: Any) -> bool:
    """True for a list of chat messages (TRL's conversational form), including an empty list."""
    return isinstance(value, list) and (not value or isinstance(value[0], dict))


def _as_messages(completion: Text) -> list[dict[str, Any]]:
    return completion if is_conversational(completion) else [{"role": "assistant", "content": completion}]


def _as_text(value: Text) -> str:
    return "".join(str(m.get("content", "")) for m in value) if is_conversational(value) else value


def _chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"])


def with_eos(text: str, eos_token: str | None) -> str:
    """`text` with the EOS token appended unless it already ends with it (TRL's `add_eos` for plain text)."""
    eos = eos_token or ""
    return text if text.endswith(eos) else text + eos


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Text, max_length: int | None = None) -> list[int]:
    """Token ids of a prompt as a generation context: the chat template with the generation prompt for messages,
    else the plain text. With `max_length`, its last `max_length` tokens (left truncation keeps the question)."""
    ids = (
        _chat_ids(tokenizer, prompt, add_generation_prompt=True)
        if is_conversational(prompt)
        else list(tokenizer(text=prompt)["input_ids"])
    )
    return ids[-max_length:] if max_length else ids


def encode_group(
    tokenizer: PreTrainedTokenizerBase, prompt: Text, completions: Sequence[Text]
) -> tuple[list[int], list[list[int]]]:
    """``(prompt_ids, [completion_ids, ...])`` for a prompt and its completions (a pair, a ranked group), as TRL 1.16's
    `DPOTrainer._prepare_dataset` builds a pair: every completion starts at the shortest common prefix of the
    tokenized prompt and the tokenized prompt + completion. No truncation."""
    if is_conversational(prompt):
        prompt_ids = encode_prompt(tokenizer, prompt)
        full = [_chat_ids(tokenizer, prompt + _as_messages(c)) for c in completions]
    else:
        prompt_ids = list(tokenizer(text=prompt)["input_ids"])
        full = [list(tokenizer(text=prompt + with_eos(_as_text(c), tokenizer.eos_token))["input_ids"]) for c in completions]  # fmt: skip
    from trl.data_utils import common_prefix_length

    start = min((common_prefix_length(prompt_ids, ids) for ids in full), default=len(prompt_ids))
    return prompt_ids[:start], [ids[start:] for ids in full]


def encode_completion(tokenizer: PreTrainedTokenizerBase, prompt: Text, completion: Text) -> tuple[list[int], list[int]]:  # fmt: skip
    """``(prompt_ids, completion_ids)`` of one completion, as TRL's `DPOTrainer` tokenizes one side of a pair."""
    prompt_ids, (completion_ids,) = encode_group(tokenizer, prompt, [completion])
    return prompt_ids, completion_ids


def encode_sequence(tokenizer: PreTrainedTokenizerBase, prompt: Text, completion: Text) -> list[int]:
    """Token ids of prompt + completion as one sequence, as TRL 1.16's `RewardTrainer` builds `chosen` for training
    (a reward head reads the last token, so scoring must end exactly as training did: EOS on plain text, the chat
    template's end of turn on messages)."""
    prompt_ids, completion_ids = encode_completion(tokenizer, prompt, completion)
    return prompt_ids + completion_ids


def stop_token_ids(model: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokens that end a generated turn: the tokenizer's EOS first, then every EOS the model's generation config
    names (a chat model's end-of-turn token often differs from the tokenizer's EOS, e.g. ``<|im_end|>``)."""
    ids: list[int] = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    config = getattr(model, "generation_config", None) if model is not None else None
    extra = getattr(config, "eos_token_id", None)
    for token in [] if extra is None else [extra] if isinstance(extra, int) else list(extra):
        if int(token) not in ids:
            ids.append(int(token))
    return ids


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad id, else its EOS id, else 0 (the value padding positions hold; they are masked out)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad if pad is not None else 0)
