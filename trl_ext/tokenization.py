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


_PROBE = [{"role": "user", "content": "qz1"}, {"role": "assistant", "content": "qz2"}]
_NEXT = {"role": "user", "content": "qz3"}


def generation_prompt_always_added(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The generation prompt a chat template appends even with ``add_generation_prompt=False``, else None.

    Early Llama-3-Instruct templates end with an unconditional ``<|start_header_id|>assistant<|end_header_id|>``: every
    rendered conversation, a finished one included, then ends with a new assistant header, so a completion built from
    it (by TRL's trainers or ours) would end with that header after its ``<|eot_id|>``.

    Found by rendering probes: a user + assistant conversation renders the same with and without the flag, and
    continuing it with a user turn replaces its tail: that tail, starting where the new user turn starts (the first
    point after the assistant's text from which the rest is also how a lone user turn renders), is the prompt.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None

    def render(messages, flag=False):
        return _chat_ids(tokenizer, messages, add_generation_prompt=flag)

    try:
        two, two_flagged, three, lone = render(_PROBE), render(_PROBE, True), render([*_PROBE, _NEXT]), render([_NEXT])
    except Exception:  # templates that refuse the probes (strict role checks, ...) are left alone
        return None
    if two != two_flagged:
        return None
    shared = 0  # token ids, not characters: special tokens are whole, so a match cannot start inside one
    while shared < min(len(two), len(three)) and two[shared] == three[shared]:
        shared += 1
    if shared == len(two):
        return None  # nothing rendered after the finished conversation: the template never adds a prompt
    answer = _PROBE[1]["content"]
    after_answer = next((i for i in range(len(two) + 1) if answer in tokenizer.decode(two[:i])), None)
    if after_answer is None:
        return None
    for start in range(after_answer, shared + 1):
        if lone[len(lone) - (len(three) - start) :] == three[start:]:
            text = tokenizer.decode(two[start:], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            rendered = tokenizer.apply_chat_template(_PROBE, tokenize=False)
            return text if text and rendered.endswith(text) else None
    return None


def repair_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Make a template that always appends its generation prompt append it only when asked (see
    `generation_prompt_always_added`); True if the template was changed. The rest of the rendering is untouched."""
    import json

    suffix = generation_prompt_always_added(tokenizer)
    if suffix is None:
        return False
    literal = json.dumps(suffix)  # a valid Jinja string literal
    tokenizer.chat_template = (
        "{% set rendered %}" + tokenizer.chat_template + "{% endset %}"
        "{% if add_generation_prompt or not rendered.endswith(" + literal + ") %}{{ rendered }}"
        "{% else %}{{ rendered[:rendered | length - " + str(len(suffix)) + "] }}{% endif %}"
    )
    return True


def end_of_turn_text(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """What the chat template writes after an assistant message, stripped (``<|im_end|>`` for ChatML, ``<|eot_id|>``
    for Llama-3); None without a template, or if it writes nothing there."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = tokenizer.apply_chat_template(_PROBE, tokenize=False)
    except Exception:
        return None
    answer = _PROBE[1]["content"]
    if not isinstance(text, str) or answer not in text:
        return None
    return text[text.rindex(answer) + len(answer) :].strip() or None


def encode_rendered_group(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completions: Sequence[str]
) -> tuple[list[int], list[list[int]]]:
    """`encode_group` for text that is either plain or already rendered by the chat template (what TRL's
    `maybe_apply_chat_template` hands to a trainer that tokenizes text, such as ORPO's): no second BOS when the text
    already starts with it, and EOS appended only to a completion that ends with neither EOS nor the template's end
    of turn (TRL's ORPO appends it after ``<|im_end|>\n``, ending every answer with two ends of turn)."""
    from trl.data_utils import common_prefix_length

    bos = tokenizer.bos_token
    special = not (bos and prompt.startswith(bos))
    ends = [e for e in (tokenizer.eos_token, end_of_turn_text(tokenizer)) if e]

    def finished(text: str) -> str:
        return text if any(text.rstrip().endswith(e) for e in ends) else with_eos(text, tokenizer.eos_token)

    def ids(text: str) -> list[int]:
        return list(tokenizer(text=text, add_special_tokens=special)["input_ids"])

    prompt_ids = ids(prompt)
    full = [ids(prompt + finished(c)) for c in completions]
    start = min((common_prefix_length(prompt_ids, f) for f in full), default=len(prompt_ids))
    return prompt_ids[:start], [f[start:] for f in full]


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
