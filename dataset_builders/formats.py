"""Layouts other projects write, converted row by row to our shapes (pairs, binary, ranked, messages, prompts).

Each `Format` names the project, the fields that mark it (auto-detection needs all of them, so it never guesses
between two layouts), the shape it becomes and an example row. A converter returns the canonical row(s) and the
fields it used; every other field of the row is reported (`LoadReport.unused_fields`, `inspect`), never dropped
silently. Prompt + answer gives back each source conversation exactly: the converters only regroup turns, they do not
edit text (LLaMA-Factory's alpaca `instruction` and `input` are joined with a newline, as LLaMA-Factory joins them).
A row the layout cannot express raises `FormatProblem(field, reason)`, which becomes the one-line `DataError`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from .errors import short
from .readers import Source
from .transcripts import hh_messages


class FormatProblem(Exception):
    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


# canonical rows (usually one), the source fields used, optionally nested fields left out ("input.tools"), and
# optionally what the source project's own loader leaves out, counted by reason ({"trees not ready_for_export": 1})
Converted = (
    tuple[list[dict[str, Any]], set[str]]
    | tuple[list[dict[str, Any]], set[str], set[str]]
    | tuple[list[dict[str, Any]], set[str], set[str], dict[str, int]]
)


@dataclass(frozen=True)
class Format:
    name: str
    project: str
    shape: str  # what the rows become
    marks: tuple[str, ...]  # all present -> this format (checked in FORMATS order)
    convert: Callable[[dict[str, Any], dict[str, Any]], Converted]
    example: dict[str, Any]
    # optional: the first row must also pass this (two layouts with the same field names)
    first_row: Callable[[dict[str, Any]], bool] | None = None
    refusal: str | None = None  # a layout no method here trains on: refused with this message
    empty: str = ""  # why rows of this layout can give nothing (said when none of them does)


# ------------------------------------------------------------------------------------------------ message helpers
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                   "observation": "tool", "function_call": "assistant", "tool": "tool"}  # fmt: skip


_TOOL_KEYS = ("tool_calls", "tool_call_id", "name")


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise FormatProblem(field, f"expected a string, got {short(value)}")
    return value


def _message(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def _messages(value: Any, field: str) -> list[dict[str, str]]:
    """OpenAI-style messages (role/content; content a string or text parts) or ShareGPT (from/value)."""
    if not isinstance(value, list) or not value:
        raise FormatProblem(field, f"expected a non-empty list of messages, got {short(value)}")
    out = []
    for k, message in enumerate(value):
        if not isinstance(message, dict):
            raise FormatProblem(field, f"message {k + 1}: expected an object, got {short(message)}")
        if "from" in message and "role" not in message:
            tag = message.get("from")
            if tag not in _SHAREGPT_ROLES:
                raise FormatProblem(field, f"message {k + 1}: unknown 'from' {short(tag)} (expected human, gpt, system, observation, function_call)")  # fmt: skip
            out.append(_sharegpt_turn(tag, message.get("value"), field, k))
        else:
            role = message.get("role")
            if not isinstance(role, str) or not role:
                raise FormatProblem(field, f"message {k + 1}: no 'role'")
            calls = message.get("tool_calls")
            if calls and message.get("content") is None:  # an assistant turn that only calls tools (OpenAI)
                out.append({"role": role, "content": ""})
            else:
                out.append(_message(role, _content(message.get("content"), field, k)))
            # what chat templates read beside the text: the calls, and which call a tool message answers
            out[-1].update({key: message[key] for key in _TOOL_KEYS if message.get(key) not in (None, [], "")})
    return out


def _lf_messages(value: Any, field: str, options: dict[str, Any]) -> list[dict[str, str]]:
    """LLaMA-Factory sharegpt messages, under the tag names its `dataset_info.json` declares (`message_tags` option:
    role/content keys and the user/assistant/system/observation/function values); the defaults are ShareGPT's."""
    tags = options.get("message_tags")
    if not tags:
        return _messages(value, field)
    if not isinstance(value, list) or not value:
        raise FormatProblem(field, f"expected a non-empty list of messages, got {short(value)}")
    # the entry's tag names -> ShareGPT's own
    roles = {tags.get("user_tag", "human"): "human", tags.get("assistant_tag", "gpt"): "gpt",
             tags.get("system_tag", "system"): "system", tags.get("observation_tag", "observation"): "observation",
             tags.get("function_tag", "function_call"): "function_call"}  # fmt: skip
    role_key, content_key = tags.get("role_tag", "from"), tags.get("content_tag", "value")
    out = []
    for k, message in enumerate(value):
        if not isinstance(message, dict) or message.get(role_key) not in roles:
            raise FormatProblem(field, f"message {k + 1}: expected {role_key!r} one of {sorted(map(str, roles))}, got {short(message)}")  # fmt: skip
        out.append(_sharegpt_turn(roles[message[role_key]], message.get(content_key), field, k))
    return out


def _sharegpt_turn(tag: str, value: Any, field: str, k: int) -> dict[str, Any]:
    """A ShareGPT turn as a message; a `function_call` turn (its value the JSON call, {"name", "arguments"}, or a
    list of them) becomes the assistant's `tool_calls`, as chat templates render a call."""
    if tag != "function_call":
        return _message(_SHAREGPT_ROLES[tag], _content(value, field, k))
    try:
        calls = json.loads(_content(value, field, k))
    except ValueError:
        raise FormatProblem(field, f"message {k + 1}: a function_call value must be JSON ({{\"name\": ..., \"arguments\": ...}}), got {short(value)}") from None  # fmt: skip
    calls = calls if isinstance(calls, list) else [calls]
    if not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
        raise FormatProblem(field, f'message {k + 1}: a function_call needs a "name", got {short(value)}')
    return {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": c["name"], "arguments": c.get("arguments", {})}} for c in calls]}  # fmt: skip


def _content(content: Any, field: str, k: int) -> str:
    """A message's content: a string, or a list of text parts ({"type": "text", "text"|"value": ...}) joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            text = part.get("text", part.get("value")) if isinstance(part, dict) else None
            if kind != "text" or not isinstance(text, str):
                raise FormatProblem(field, f"message {k + 1}: only text parts can be trained on here, got {short(part)}")  # fmt: skip
            texts.append(text)
        return "".join(texts)
    raise FormatProblem(field, f"message {k + 1}: expected a string content (or text parts), got {short(content)}")


def _assistant(value: Any, field: str) -> list[dict[str, str]]:
    """One answer: a string, a message, or a list of messages (OpenAI's preferred_output)."""
    if isinstance(value, str):
        return [_message("assistant", value)]
    if isinstance(value, dict):
        return _messages([value], field)
    return _messages(value, field)


def _with_system(system: Any, prompt: list[dict[str, str]]) -> list[dict[str, str]]:
    if isinstance(system, str) and system.strip() and not (prompt and prompt[0]["role"] == "system"):
        return [_message("system", system), *prompt]
    if system is not None and not isinstance(system, str):
        raise FormatProblem("system", f"expected a string, got {short(system)}")
    return prompt


def _split_last_answer(messages: list[dict[str, str]], field: str) -> tuple[list, list]:
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise FormatProblem(field, "must end with the assistant's answer, after at least one earlier turn")
    return messages[:-1], messages[-1:]


def _history(value: Any) -> list[dict[str, str]]:
    """LLaMA-Factory's alpaca `history`: [[query, answer], ...] before this turn."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise FormatProblem("history", f"expected a list of [query, answer] pairs, got {short(value)}")
    out = []
    for k, turn in enumerate(value):
        if not (isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise FormatProblem("history", f"turn {k + 1}: expected [query, answer], got {short(turn)}")
        out += [_message("user", turn[0]), _message("assistant", turn[1])]
    return out


def _alpaca_prompt(row: dict[str, Any]) -> tuple[list[dict[str, str]], set[str]]:
    query = _text(row.get("instruction"), "instruction")
    used = {"instruction", "input", "system", "history"}
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise FormatProblem("input", f"expected a string, got {short(extra)}")
    if extra:
        query = f"{query}\n{extra}" if query else extra
    prompt = _with_system(row.get("system"), [*_history(row.get("history")), _message("user", query)])
    return prompt, used


def _label(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise FormatProblem(field, f"expected true or false, got {short(value)}")


# ---------------------------------------------------------------------------------------------------- converters
def _query_prompt(row: dict[str, Any]) -> list[dict[str, str]]:
    """ms-swift's query-response layout: `history` ([[query, answer], ...]) then `query`, after `system`."""
    return _with_system(row.get("system"), [*_history(row.get("history")), _message("user", _text(row.get("query"), "query"))])  # fmt: skip


def _swift_query(row, options) -> Converted:
    messages = [*_query_prompt(row), _message("assistant", _text(row.get("response"), "response"))]
    return [{"messages": messages}], {"system", "query", "response", "history"}


def _swift_query_pairs(row, options) -> Converted:
    chosen = _assistant(_text(row.get("response"), "response"), "response")
    rejected = _assistant(_text(row.get("rejected_response"), "rejected_response"), "rejected_response")
    return [{"prompt": _query_prompt(row), "chosen": chosen, "rejected": rejected}], {"system", "query", "response", "history", "rejected_response"}  # fmt: skip


def _swift_query_kto(row, options) -> Converted:
    response = _assistant(_text(row.get("response"), "response"), "response")
    return [{"prompt": _query_prompt(row), "response": response, "label": _label(row.get("label"), "label")}], {"system", "query", "response", "history", "label"}  # fmt: skip


_SWIFT_USER_KEYS, _SWIFT_ASSISTANT_KEYS = ("human", "user"), ("assistant", "gpt", "bot")


def _swift_sharegpt_turns(row: dict[str, Any]) -> list[dict[str, str]]:
    """ms-swift's `conversation` (its messages preprocessor reads all three): turns as {"human"|"user": ...,
    "assistant"|"gpt"|"bot": ...} (or {"tool": ...} for the user side), or messages with role/content or
    from/value keys; after `system`."""
    turns = row.get("conversation")
    if not isinstance(turns, list) or not turns:
        raise FormatProblem("conversation", f"expected a non-empty list of turns, got {short(turns)}")
    if all(isinstance(t, dict) and ({"role", "from"} & t.keys()) for t in turns):
        turns = [{**t, "from": "gpt"} if t.get("from") == "bot" else t for t in turns]  # ms-swift also reads "bot"
        return _with_system(row.get("system"), _messages(turns, "conversation"))
    messages = []
    for k, turn in enumerate(turns):
        user = next((turn[key] for key in (*_SWIFT_USER_KEYS, "tool") if isinstance(turn, dict) and key in turn), None)
        answer = next((turn[key] for key in _SWIFT_ASSISTANT_KEYS if isinstance(turn, dict) and key in turn), None)
        if not isinstance(user, str) or not isinstance(answer, str):
            raise FormatProblem("conversation", f"turn {k + 1}: expected {{\"human\": text, \"assistant\": text}} (or user/gpt/bot keys, or role/content messages), got {short(turn)}")  # fmt: skip
        user_role = "tool" if "tool" in turn and not any(key in turn for key in _SWIFT_USER_KEYS) else "user"
        messages += [_message(user_role, user), _message("assistant", answer)]
    return _with_system(row.get("system"), messages)


def _swift_sharegpt(row, options) -> Converted:
    return [{"messages": _swift_sharegpt_turns(row)}], {"system", "conversation"}


def _swift_sharegpt_pairs(row, options) -> Converted:
    prompt, chosen = _split_last_answer(_swift_sharegpt_turns(row), "conversation")
    rejected = _assistant(_text(row.get("rejected_response"), "rejected_response"), "rejected_response")
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}], {"system", "conversation", "rejected_response"}  # fmt: skip


def _swift_alpaca_pairs(row, options) -> Converted:
    prompt, used = _alpaca_prompt(row)
    chosen = _assistant(_text(row.get("output"), "output"), "output")
    rejected = _assistant(_text(row.get("rejected_response"), "rejected_response"), "rejected_response")
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}], used | {"output", "rejected_response"}


def _trl_unpaired(row, options) -> Converted:
    return [{"prompt": row["prompt"], "response": row["completion"], "label": row["label"]}], {"prompt", "completion", "label"}  # fmt: skip


def _openai_dpo(row, options) -> Converted:
    source = row.get("input")
    if not isinstance(source, dict):
        raise FormatProblem("input", f"expected an object with 'messages', got {short(source)}")
    prompt = _messages(source.get("messages"), "input.messages")
    used = {"input", "preferred_output", "non_preferred_output"}
    chosen = _assistant(row.get("preferred_output"), "preferred_output")
    rejected = _assistant(row.get("non_preferred_output"), "non_preferred_output")
    rows = [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]
    _with_tools(rows, source.get("tools"))  # the tool definitions the model saw travel as the `tools` column
    nested = {
        f"input.{k}" for k, v in source.items() if k not in ("messages", "tools") and v not in (None, [], {}, "")
    }
    return rows, used, nested


def _swift_rejected_messages(row, options) -> Converted:
    """ms-swift's `messages` + `rejected_messages`: two conversations with the same turns up to their last
    answers; the chosen answer ends `messages`, the rejected one `rejected_messages`."""
    prompt, chosen = _split_last_answer(_messages(row.get("messages"), "messages"), "messages")
    rejected_prompt, rejected = _split_last_answer(_messages(row.get("rejected_messages"), "rejected_messages"), "rejected_messages")  # fmt: skip
    if rejected_prompt != prompt:
        raise FormatProblem("rejected_messages", "must repeat the turns of messages before its last answer (ms-swift pairs the two turn by turn)")  # fmt: skip
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}], {"messages", "rejected_messages"}


def _swift_pairs(row, options) -> Converted:
    prompt, chosen = _split_last_answer(_messages(row.get("messages"), "messages"), "messages")
    rejected = _assistant(_text(row.get("rejected_response"), "rejected_response"), "rejected_response")
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}], {"messages", "rejected_response"}


def _messages_label(row, options, tag: str, conversation: str) -> Converted:
    prompt, response = _split_last_answer(_lf_messages(row.get(conversation), conversation, options), conversation)
    prompt = _with_system(row.get("system"), prompt)
    return [{"prompt": prompt, "response": response, "label": _label(row.get(tag), tag)}], {
        conversation,
        tag,
        "system",
    }


def _swift_kto(row, options) -> Converted:
    return _messages_label(row, options, "label", "messages")


def _lf_kto(row, options) -> Converted:
    if "instruction" in row:
        prompt, used = _alpaca_prompt(row)
        response = _assistant(_text(row.get("output"), "output"), "output")
        return [{"prompt": prompt, "response": response, "label": _label(row.get("kto_tag"), "kto_tag")}], used | {"output", "kto_tag"}  # fmt: skip
    conversation = "messages" if "messages" in row else "conversations"
    return _messages_label(row, options, "kto_tag", conversation)


def _lf_alpaca_label(row, options) -> Converted:
    """LLaMA-Factory alpaca KTO rows whose kto_tag column is named `label` (a boolean)."""
    prompt, used = _alpaca_prompt(row)
    response = _assistant(_text(row.get("output"), "output"), "output")
    return [{"prompt": prompt, "response": response, "label": _label(row.get("label"), "label")}], used | {"output", "label"}  # fmt: skip


def _label_is_bool(row: dict[str, Any]) -> bool:
    return isinstance(row.get("label"), bool)


def _lf_sharegpt_pairs(row, options) -> Converted:
    prompt = _with_system(row.get("system"), _lf_messages(row.get("conversations"), "conversations", options))
    if prompt[-1]["role"] not in ("user", "tool"):  # LLaMA-Factory skips these rows as invalid
        raise FormatProblem("conversations", "a preference row's conversation must end on a user (or observation) turn, the answers following in chosen and rejected")  # fmt: skip

    def answer(field: str) -> list[dict[str, str]]:
        value = row.get(field)
        return _assistant(value, field) if isinstance(value, str) else _lf_messages([value] if isinstance(value, dict) else value, field, options)  # fmt: skip

    chosen, rejected = answer("chosen"), answer("rejected")
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}], {"conversations", "system", "chosen", "rejected"}  # fmt: skip


def _lf_alpaca_pairs(row, options) -> Converted:
    prompt, used = _alpaca_prompt(row)
    chosen, rejected = _assistant(_text(row.get("chosen"), "chosen"), "chosen"), _assistant(_text(row.get("rejected"), "rejected"), "rejected")  # fmt: skip
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}], used | {"chosen", "rejected"}


def _lf_alpaca_ranking(row, options) -> Converted:
    prompt, used = _alpaca_prompt(row)
    outputs = row.get("output")
    if not isinstance(outputs, list) or len(outputs) < 2:
        raise FormatProblem("output", f"expected a best-first list of at least 2 answers, got {short(outputs)}")
    responses = [_assistant(_text(o, "output"), "output") for o in outputs]
    return [{"prompt": prompt, "responses": responses, "ranking": list(range(1, len(outputs) + 1))}], used | {"output"}


def _lf_alpaca_sft(row, options) -> Converted:
    prompt, used = _alpaca_prompt(row)
    return [{"messages": [*prompt, _message("assistant", _text(row.get("output"), "output"))]}], used | {"output"}


def _lf_sharegpt_sft(row, options) -> Converted:
    messages = _with_system(row.get("system"), _lf_messages(row.get("conversations"), "conversations", options))
    return [{"messages": messages}], {"conversations", "system"}


def _lf_v1_pairs(row, options) -> Converted:
    chosen = _messages(row.get("chosen_messages"), "chosen_messages")
    rejected = _messages(row.get("rejected_messages"), "rejected_messages")
    # Full conversations: the shared turns become the prompt downstream (TRL's maybe_extract_prompt).
    return [{"chosen": chosen, "rejected": rejected}], {"chosen_messages", "rejected_messages"}


def _axolotl_intel(row, options) -> Converted:
    prompt = _with_system(row.get("system"), [_message("user", _text(row.get("question"), "question"))])
    chosen, rejected = _assistant(_text(row.get("chosen"), "chosen"), "chosen"), _assistant(_text(row.get("rejected"), "rejected"), "rejected")  # fmt: skip
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}], {"system", "question", "chosen", "rejected"}


def _axolotl_argilla(row, options) -> Converted:
    prompt = [_message("user", _text(row.get("instruction"), "instruction"))]
    chosen = _assistant(_text(row.get("chosen_response"), "chosen_response"), "chosen_response")
    rejected = _assistant(_text(row.get("rejected_response"), "rejected_response"), "rejected_response")
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}], {"instruction", "chosen_response", "rejected_response"}  # fmt: skip


def _axolotl_chat_template(row, options) -> Converted:
    prompt = _messages(row.get("messages"), "messages")
    chosen, rejected = _assistant(row.get("chosen"), "chosen"), _assistant(row.get("rejected"), "rejected")
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}], {"messages", "chosen", "rejected"}


def _hh_prompt(prompt: str) -> Any:
    """Nectar's prompt is an HH-RLHF transcript ending "\\n\\nAssistant:": its turns, without the empty last one."""
    if "Human:" not in prompt:
        return prompt
    messages = hh_messages(prompt)
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages = messages[:-1]
    return messages


def _nectar(row, options) -> Converted:
    prompt = _text(row.get("prompt"), "prompt")
    answers = row.get("answers")
    if not isinstance(answers, list) or len(answers) < 2:
        raise FormatProblem("answers", f"expected a list of at least 2 ranked answers, got {short(answers)}")
    responses, ranking = [], []
    for k, answer in enumerate(answers):
        if not isinstance(answer, dict) or not isinstance(answer.get("answer"), str):
            raise FormatProblem("answers", f"answer {k + 1}: expected an object with 'answer' and 'rank', got {short(answer)}")  # fmt: skip
        rank = answer.get("rank")
        if isinstance(rank, bool) or not isinstance(rank, (int, float)) or rank != rank:
            raise FormatProblem("answers", f"answer {k + 1}: 'rank' must be a number, got {short(rank)}")
        responses.append(answer["answer"])
        ranking.append(rank)
    order = {r: i + 1 for i, r in enumerate(sorted(set(ranking)))}  # dense ranks 1..n (equal ranks: ties)
    prompt = _hh_prompt(prompt)
    if isinstance(prompt, list):
        responses = [[_message("assistant", r)] for r in responses]
    return [{"prompt": prompt, "responses": responses, "ranking": [order[r] for r in ranking]}], {"prompt", "answers"}


def _index(value: Any) -> int | None:
    """0 or 1 written as an integer (1.0 too, as JSON tools write numbers); anything else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in (0, 1):
        return None
    return int(value)


def _pku(row, options) -> Converted:
    prefer = options.get("prefer") or "better"
    key = f"{prefer}_response_id"
    choice = _index(row.get(key))
    if choice not in (0, 1):
        raise FormatProblem(key, f"expected 0 or 1, got {short(row.get(key))}")
    responses = [_text(row.get("response_0"), "response_0"), _text(row.get("response_1"), "response_1")]
    chosen, rejected = responses[choice], responses[1 - choice]
    return [{"prompt": _text(row.get("prompt"), "prompt"), "chosen": chosen, "rejected": rejected}], {"prompt", "response_0", "response_1", key}  # fmt: skip


def _score_ratio(row: dict[str, Any]) -> float | None:
    """SHP's `score_ratio` (the higher comment score over the lower), or from `score_A`/`score_B`."""
    ratio = row.get("score_ratio")
    if isinstance(ratio, (int, float)) and not isinstance(ratio, bool):
        return float(ratio)
    a, b = row.get("score_A"), row.get("score_B")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)) and min(a, b) > 0:
        return max(a, b) / min(a, b)
    return None


def _shp(row, options) -> Converted:
    label = _index(row.get("labels"))
    if label not in (0, 1):
        raise FormatProblem("labels", f"expected 1 (A preferred) or 0 (B preferred), got {short(row.get('labels'))}")
    used = {"history", "human_ref_A", "human_ref_B", "labels"}
    threshold = options.get("min_score_ratio")
    if threshold is not None:
        ratio = _score_ratio(row)
        if ratio is None:
            raise FormatProblem("score_ratio", "min_score_ratio needs score_ratio (or score_A and score_B above 0)")
        used |= {"score_ratio", "score_A", "score_B"}
        if ratio < threshold:
            return [], used, set(), {f"SHP pairs with score_ratio below min_score_ratio={threshold:g}": 1}
    a, b = _text(row.get("human_ref_A"), "human_ref_A"), _text(row.get("human_ref_B"), "human_ref_B")
    chosen, rejected = (a, b) if label == 1 else (b, a)
    return [{"prompt": _text(row.get("history"), "history"), "chosen": chosen, "rejected": rejected}], used


_OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


def _oasst_excluded(message: dict[str, Any]) -> bool:
    """What OpenAssistant's own export leaves out: deleted messages and those that failed review."""
    return message.get("deleted") is True or message.get("review_result") is False


def _oasst(row, options) -> Converted:
    """An OpenAssistant message tree: a ranked group at every node with two or more ranked replies; the prompt is
    the conversation from the root to that node. As OpenAssistant's export does, trees not `ready_for_export` and
    deleted or review-failed messages (with the replies under them) are left out, counted."""
    used = {"prompt", "tree_state"}
    state = row.get("tree_state")
    if state is not None and state != "ready_for_export":
        return [], used, set(), {"OpenAssistant trees not ready_for_export": 1}
    root = row.get("prompt")
    if not isinstance(root, dict):
        raise FormatProblem("prompt", f"expected the tree's root message (an object with 'text' and 'replies'), got {short(root)}")  # fmt: skip
    if _oasst_excluded(root):
        return [], used, set(), {"OpenAssistant trees whose first message is deleted or failed review": 1}
    groups: list[dict[str, Any]] = []
    excluded = 0

    def visit(node: Any, path: list[dict[str, str]], depth: int) -> None:
        nonlocal excluded
        if not isinstance(node, dict) or not isinstance(node.get("text"), str):
            raise FormatProblem("prompt", f"a message at depth {depth} has no 'text'")
        role = _OASST_ROLES.get(node.get("role"))
        if role is None:
            raise FormatProblem("prompt", f"a message at depth {depth} has role {short(node.get('role'))} (expected prompter or assistant)")  # fmt: skip
        here = [*path, _message(role, node["text"])]
        replies = node.get("replies") or []
        if not isinstance(replies, list):
            raise FormatProblem("prompt", f"'replies' at depth {depth} must be a list")
        kept = [r for r in replies if not (isinstance(r, dict) and _oasst_excluded(r))]
        excluded += len(replies) - len(kept)
        ranked = [r for r in kept if isinstance(r, dict) and isinstance(r.get("rank"), int) and not isinstance(r.get("rank"), bool)]  # fmt: skip
        if role == "user" and len(ranked) >= 2:
            texts = []
            for r in ranked:
                if not isinstance(r.get("text"), str):
                    raise FormatProblem("prompt", f"a reply at depth {depth + 1} has no 'text'")
                texts.append([_message("assistant", r["text"])])
            order = {v: i + 1 for i, v in enumerate(sorted({r["rank"] for r in ranked}))}  # rank 0 = best
            groups.append({"prompt": here, "responses": texts, "ranking": [order[r["rank"]] for r in ranked]})
        for reply in kept:
            visit(reply, here, depth + 1)

    visit(root, [], 0)
    left_out = {"OpenAssistant replies deleted or failing review (with the replies under them)": excluded} if excluded else {}  # fmt: skip
    return groups, used, set(), left_out


def _alpaca_prompts(row, options) -> Converted:
    prompt, used = _alpaca_prompt(row)
    return [{"prompt": prompt}], used


def _is_list_output(row: dict[str, Any]) -> bool:
    return isinstance(row.get("output"), list)


def _chosen_is_one_message(row: dict[str, Any]) -> bool:
    return isinstance(row.get("chosen"), dict)


FORMATS: tuple[Format, ...] = (
    Format("trl_stepwise", "TRL (stepwise supervision)", "", ("prompt", "completions", "labels"), None,
           {"prompt": "Which number is larger, 9.8 or 9.11?", "completions": ["The fractional part of 9.8 is 0.8.", "So 9.8 is larger."], "labels": [True, True]},
           refusal="TRL's stepwise-supervision format (a label per reasoning step): no method here trains on step labels (TRL's PRMTrainer does); for preference training give pairs, labels or rankings of whole answers"),
    Format("trl_unpaired", "TRL (unpaired preference)", "binary", ("prompt", "completion", "label"), _trl_unpaired,
           {"prompt": "The sky is", "completion": " blue.", "label": True}),
    Format("openai_dpo", "OpenAI (DPO fine-tuning)", "pairs", ("input", "preferred_output", "non_preferred_output"), _openai_dpo,
           {"input": {"messages": [{"role": "user", "content": "Hello, can you tell me how cold San Francisco is today?"}], "tools": [], "parallel_tool_calls": True},
            "preferred_output": [{"role": "assistant", "content": "Today in San Francisco, it is not quite cold as expected."}],
            "non_preferred_output": [{"role": "assistant", "content": "It is not particularly cold in San Francisco today."}]}),
    Format("ms_swift_rejected_messages", "ms-swift (DPO/ORPO/RM, rejected_messages)", "pairs", ("messages", "rejected_messages"), _swift_rejected_messages,
           {"messages": [{"role": "user", "content": "Tell me tomorrow's weather"}, {"role": "assistant", "content": "Tomorrow's weather will be sunny"}],
            "rejected_messages": [{"role": "user", "content": "Tell me tomorrow's weather"}, {"role": "assistant", "content": "I don't know"}]}),
    Format("ms_swift_rlhf", "ms-swift (DPO/ORPO/RM)", "pairs", ("messages", "rejected_response"), _swift_pairs,
           {"messages": [{"role": "system", "content": "You are a useful assistant"}, {"role": "user", "content": "Tell me tomorrow's weather"}, {"role": "assistant", "content": "Tomorrow's weather will be sunny"}],
            "rejected_response": "I don't know"}),
    Format("ms_swift_query_pairs", "ms-swift (query-response, DPO/ORPO/RM)", "pairs", ("query", "response", "rejected_response"), _swift_query_pairs,
           {"system": "You are a useful assistant", "query": "Tell me tomorrow's weather", "response": "Tomorrow's weather will be sunny", "rejected_response": "I don't know", "history": []}),
    Format("ms_swift_query_kto", "ms-swift (query-response, KTO)", "binary", ("query", "response", "label"), _swift_query_kto,
           {"query": "What is 1 + 1?", "response": "It equals 2", "label": True}),
    Format("ms_swift_query", "ms-swift (query-response, SFT)", "messages", ("query", "response"), _swift_query,
           {"system": "You are a useful assistant", "query": "Hi", "response": "Hello!", "history": [["2+2?", "4"]]}),
    Format("ms_swift_sharegpt_pairs", "ms-swift (sharegpt, DPO/ORPO/RM)", "pairs", ("conversation", "rejected_response"), _swift_sharegpt_pairs,
           {"system": "You are a useful assistant", "conversation": [{"human": "Tell me tomorrow's weather", "assistant": "Tomorrow's weather will be sunny"}], "rejected_response": "I don't know"}),
    Format("ms_swift_sharegpt", "ms-swift (sharegpt, SFT)", "messages", ("conversation",), _swift_sharegpt,
           {"system": "You are a useful assistant", "conversation": [{"human": "Hi", "assistant": "Hello!"}, {"human": "2+2?", "assistant": "4"}]}),
    Format("ms_swift_alpaca_pairs", "ms-swift (alpaca, DPO/ORPO/RM)", "pairs", ("instruction", "output", "rejected_response"), _swift_alpaca_pairs,
           {"system": "You are a useful assistant", "instruction": "Tell me", "input": "tomorrow's weather", "output": "Sunny", "rejected_response": "I don't know"}),
    Format("ms_swift_kto", "ms-swift (KTO)", "binary", ("messages", "label"), _swift_kto,
           {"messages": [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "It equals 2"}], "label": True}),
    Format("llamafactory_kto", "LLaMA-Factory (KTO, kto_tag)", "binary", ("kto_tag",), _lf_kto,
           {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}], "kto_tag": True}),
    Format("llamafactory_v1_pairs", "LLaMA-Factory v1 (pair)", "pairs", ("chosen_messages", "rejected_messages"), _lf_v1_pairs,
           {"chosen_messages": [{"role": "user", "content": [{"type": "text", "value": "2+2?"}], "loss_weight": 0.0}, {"role": "assistant", "content": [{"type": "text", "value": "4"}], "loss_weight": 1.0}],
            "rejected_messages": [{"role": "user", "content": [{"type": "text", "value": "2+2?"}], "loss_weight": 0.0}, {"role": "assistant", "content": [{"type": "text", "value": "5"}], "loss_weight": 1.0}]}),
    Format("llamafactory_sharegpt_pairs", "LLaMA-Factory (sharegpt preference)", "pairs", ("conversations", "chosen", "rejected"), _lf_sharegpt_pairs,
           {"conversations": [{"from": "human", "value": "What is the capital of France?"}], "chosen": {"from": "gpt", "value": "Paris."}, "rejected": {"from": "gpt", "value": "Lyon."}}),
    Format("axolotl_chat_template", "axolotl (chat_template.default)", "pairs", ("messages", "chosen", "rejected"), _axolotl_chat_template,
           {"messages": [{"role": "user", "content": "2+2?"}], "chosen": {"role": "assistant", "content": "4"}, "rejected": {"role": "assistant", "content": "5"}},
           first_row=_chosen_is_one_message),
    Format("llamafactory_alpaca_pairs", "LLaMA-Factory (alpaca preference)", "pairs", ("instruction", "chosen", "rejected"), _lf_alpaca_pairs,
           {"instruction": "Translate to French", "input": "cat", "chosen": "chat", "rejected": "chien", "system": "", "history": []}),
    Format("axolotl_intel", "axolotl (chatml.intel)", "pairs", ("question", "chosen", "rejected"), _axolotl_intel,
           {"system": "You are a helpful assistant.", "question": "2+2?", "chosen": "4", "rejected": "5"}),
    Format("axolotl_argilla", "axolotl (chatml.argilla)", "pairs", ("instruction", "chosen_response", "rejected_response"), _axolotl_argilla,
           {"instruction": "2+2?", "chosen_response": "4", "rejected_response": "5"}),
    Format("nectar", "Nectar / axolotl zephyr.nectar", "ranked", ("prompt", "answers"), _nectar,
           {"prompt": "\n\nHuman: What is 2+2?\n\nAssistant:", "answers": [{"answer": "4", "model": "a", "rank": 1.0}, {"answer": "5", "model": "b", "rank": 2.0}]}),
    Format("pku_saferlhf", "PKU-SafeRLHF", "pairs", ("prompt", "response_0", "response_1", "better_response_id"), _pku,
           {"prompt": "How do I pick a lock?", "response_0": "I can't help with that.", "response_1": "Use a tension wrench...", "better_response_id": 1, "safer_response_id": 0}),
    Format("shp", "Stanford SHP", "pairs", ("history", "human_ref_A", "human_ref_B", "labels"), _shp,
           {"history": "What makes a good pizza dough?", "human_ref_A": "Time: let it rise overnight.", "human_ref_B": "Flour.", "labels": 1, "score_A": 52, "score_B": 3}),
    Format("oasst_tree", "OpenAssistant (message trees)", "ranked", ("message_tree_id", "prompt"), _oasst,
           {"message_tree_id": "t1", "tree_state": "ready_for_export", "prompt": {"role": "prompter", "text": "2+2?", "replies": [
               {"role": "assistant", "text": "4", "rank": 0, "replies": []}, {"role": "assistant", "text": "5", "rank": 1, "replies": []}]}},
           empty=" (a group needs a prompter message with two or more ranked replies)"),
    Format("llamafactory_alpaca_kto_label", "LLaMA-Factory (alpaca KTO, kto_tag column `label`)", "binary", ("instruction", "output", "label"), _lf_alpaca_label,
           {"instruction": "2+2?", "input": "", "output": "4", "label": True}, first_row=_label_is_bool),
    Format("llamafactory_alpaca_ranking", "LLaMA-Factory (alpaca ranking: output best first)", "ranked", ("instruction", "output"), _lf_alpaca_ranking,
           {"instruction": "2+2?", "input": "", "output": ["4", "5"], "history": []}, first_row=_is_list_output),
    Format("llamafactory_alpaca", "LLaMA-Factory / Stanford Alpaca (SFT)", "messages", ("instruction", "output"), _lf_alpaca_sft,
           {"instruction": "Give three tips for staying healthy.", "input": "", "output": "1. Eat well. 2. Sleep. 3. Move.", "system": "", "history": []}),
    Format("llamafactory_sharegpt", "LLaMA-Factory / ShareGPT (SFT)", "messages", ("conversations",), _lf_sharegpt_sft,
           {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}], "system": "Be brief."}),
    Format("alpaca_prompts", "Alpaca-style prompts (instruction, input)", "prompts", ("instruction",), _alpaca_prompts,
           {"instruction": "Write a haiku about autumn.", "input": ""}),
)  # fmt: skip
BY_NAME = {f.name: f for f in FORMATS}


def parse_column_map(text: str) -> dict[str, str]:
    """`"prompt=Question,chosen=Good"` -> `{"prompt": "Question", "chosen": "Good"}` (the CLI's and recipes' form of
    `columns=`); a malformed item raises `ValueError`."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if not pairs or any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise ValueError(f"expected ours=yours[,ours=yours...], got {text!r}")
    return {ours.strip(): yours.strip() for ours, yours in pairs}


def detect_format(columns: list[str], first: dict[str, Any] | None) -> Format | None:
    """The first format whose marking fields are all present (and whose first-row test passes)."""
    cols = set(columns)
    if "completions" in cols and not {"prompt", "labels"} <= cols:
        return None  # UltraFeedback-style scored lists: their own importer (shape "ultrafeedback")
    for fmt in FORMATS:
        if set(fmt.marks) <= cols and (fmt.first_row is None or (first is not None and fmt.first_row(first))):
            return fmt
    return None


def apply_format(
    src: Source, fmt: Format, options: dict[str, Any], on_error: str
) -> tuple[Source, set[str], list[str], dict[str, int]]:
    """Convert every row of `src`; returns the new source (row numbers still point into the file), the fields no
    converter used, the problems of rows dropped with on_error="drop", and what the layout's own project leaves out
    by design, counted by reason (the report's `skipped`)."""
    if fmt.refusal:
        raise src.error(fmt.refusal, index=0, field=None)
    rows = src.table.to_pylist()
    out: list[dict[str, Any]] = []
    origin: list[int] = []
    unused: set[str] = set()
    problems: list[str] = []
    skipped: dict[str, int] = {}
    for i, row in enumerate(rows):
        try:
            missing = next((m for m in fmt.marks if row.get(m) is None), None)
            if missing is not None:
                raise FormatProblem(missing, "missing")
            result = fmt.convert(row, options)
        except FormatProblem as problem:
            error = src.error(f"{problem.reason} ({fmt.project} layout)", index=i, field=problem.field)
            if on_error != "drop":
                raise error from None
            problems.append(str(error))
            continue
        converted, used = result[0], result[1]
        if "system" not in used and _system_first(converted, row.get("system")):
            used = used | {"system"}
        if "tools" not in used and _with_tools(converted, row.get("tools")):
            used = used | {"tools"}
        unused |= {k for k, v in row.items() if k not in used and v not in (None, "", [], {})}
        unused |= result[2] if len(result) > 2 else set()
        for reason, count in (result[3] if len(result) > 3 else {}).items():
            skipped[reason] = skipped.get(reason, 0) + count
        out += converted
        origin += [i] * len(converted)
    if not out and not problems and rows:
        left_out = "".join(f"; {count} left out: {reason}" for reason, count in skipped.items())
        raise src.error(f"no {fmt.shape} rows in these {fmt.project} rows{fmt.empty}{left_out}")
    lines = np.asarray([src.locate(i) for i in origin], dtype=np.int64)
    converted = replace(src, table=pa.table({}), line_numbers=lines, offset=0)
    return replace(converted, table=_to_table(out, converted)), unused, problems, skipped


def _system_first(rows: list[dict[str, Any]], system: Any) -> bool:
    """One rule for every layout with a `system` column (ms-swift, axolotl, LLaMA-Factory all put it first): a
    system message at the head of each converted conversation (the prompt, an SFT conversation, or both full
    conversations of a pair) that does not open with one. False when there is nothing to put (no system text, or
    only text prompts, which cannot hold a message: then the column stays reported as unused)."""
    if not (isinstance(system, str) and system.strip()):
        return False
    placed = False
    for row in rows:
        keys = [k for k in ("prompt", "messages") if isinstance(row.get(k), list)]
        if not keys and "prompt" not in row:
            keys = [k for k in ("chosen", "rejected") if isinstance(row.get(k), list)]
        for key in keys:
            row[key] = _with_system(system, row[key])
            placed = True
    return placed


def _with_tools(rows: list[dict[str, Any]], tools: Any) -> bool:
    """The tool definitions of a row (LLaMA-Factory's and ms-swift's `tools`, OpenAI's `input.tools`) as a `tools`
    column of JSON text on each conversation converted from it, which TRL hands to the chat template (LLaMA-Factory
    writes them into the system prompt in its own template's words). False when there are none."""
    if tools in (None, "", [], {}) or tools == "[]":
        return False
    text = tools if isinstance(tools, str) else json.dumps(tools, ensure_ascii=False)
    for row in rows:
        row["tools"] = text
    return bool(rows)


def _to_table(rows: list[dict[str, Any]], src: Source) -> pa.Table:
    """Arrow columns from the converted rows; a field that is text in one row and a message list in another (a
    string prompt beside a conversation) cannot share a column: the first row that differs from row 1 is named."""
    if not rows:
        return pa.table({})
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    for field in rows[0]:
        kind = type(rows[0].get(field))
        for i, row in enumerate(rows):
            if type(row.get(field)) is not kind:
                raise src.error(
                    f"is {type(row.get(field)).__name__} here but {kind.__name__} in the first row: one column "
                    "cannot hold both (write every row's conversation the same way)",
                    index=i,
                    field=field,
                )
    raise src.error("the converted rows do not fit one table", index=0)


def describe(fmt: Format) -> str:
    return f"{fmt.name} ({fmt.project}) -> {fmt.shape or 'refused'}"
