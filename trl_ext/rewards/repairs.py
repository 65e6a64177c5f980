"""Answers rewritten to follow their prompt's constraints, for the chosen side of a preference pair.

A small model rarely follows some instructions in a few samples (all lowercase, JSON, a title, a postscript...), so
sampling alone gives those instructions no pair to learn from. `repair` rewrites one of the model's own answers by
the rule each instruction states (lowercase it, wrap it in JSON, append the postscript, split it into the asked
sections ...), and keeps the rewrite only when IFEval's checkers confirm that it follows *every* constraint of the
prompt: the chosen side is then a verified answer one edit away from the model's own, the rejected side the answer
as the model wrote it.

An answer cut at the token limit is first trimmed back to its last whole sentence (within `max_words`), so the
chosen side is an answer that ends. Instructions without a rule here (the response language, letter counts, word
counts, the nth paragraph's first word) leave the answer unrepaired: `repair` returns None.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from .checkers import check_constraints, verify

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_PLACEHOLDERS = ("name", "place", "date", "time", "address", "phone", "email", "city", "company", "amount")


def sentences(text: str) -> list[str]:
    """`text` split after each '.', '!' or '?' followed by white space (empty pieces dropped)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def trim_to_sentences(text: str, max_words: int) -> str:
    """The longest run of whole sentences from the start of `text` within `max_words` words ('' if none ends)."""
    kept: list[str] = []
    words = 0
    for sentence in sentences(text):
        n = len(sentence.split())
        if words + n > max_words or not sentence.endswith((".", "!", "?")):
            break
        kept.append(sentence)
        words += n
    return " ".join(kept)


def _groups(text: str, n: int) -> list[str] | None:
    """`text` cut into `n` non-empty consecutive groups of sentences (of words when there are too few sentences)."""
    units = sentences(text)
    joiner = " "
    if len(units) < n:
        units = text.split()
    if len(units) < n or n < 1:
        return None
    size, extra = divmod(len(units), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(joiner.join(units[start:end]))
        start = end
    return out


def _without(text: str, word: str) -> str:
    return re.sub(r"\s*\b" + re.escape(word) + r"\b", "", text, flags=re.IGNORECASE).strip()


def _keywords(text: str, a: dict[str, Any]) -> str:
    missing = [k for k in a["keywords"] if not re.search(re.escape(k), text, flags=re.IGNORECASE)]
    return text + (" " + " ".join(f"{k.capitalize()} matters here." for k in missing) if missing else "")


def _frequency(text: str, a: dict[str, Any]) -> str:
    keyword, frequency = a["keyword"], int(a["frequency"])
    if a["relation"] == "less than":
        return _without(text, keyword)
    have = len(re.findall(r"\b" + re.escape(keyword) + r"\b", text, flags=re.IGNORECASE))
    return text + "".join(f" {keyword.capitalize()}." for _ in range(max(0, frequency - have)))


def _forbidden(text: str, a: dict[str, Any]) -> str:
    for word in a["forbidden_words"]:
        text = _without(text, word)
    return text


def _placeholders(text: str, a: dict[str, Any]) -> str:
    n = int(a["num_placeholders"])
    names = [_PLACEHOLDERS[i % len(_PLACEHOLDERS)] + ("" if i < len(_PLACEHOLDERS) else str(i)) for i in range(n)]
    return text + "\n\nFill in: " + ", ".join(f"[{p}]" for p in names) + "."


def _joined(text: str, n: int, render: Callable[[int, str], str], sep: str) -> str | None:
    groups = _groups(text, n)
    return None if groups is None else sep.join(render(i, g) for i, g in enumerate(groups, start=1))


def _highlights(text: str, a: dict[str, Any]) -> str | None:
    n = int(a["num_highlights"])
    units = [u.replace("\n", " ") for u in sentences(text.replace("*", ""))]
    if len(units) < n:
        return None
    return " ".join(f"*{u}*" if i < n else u for i, u in enumerate(units))


def _two_responses(text: str, a: dict[str, Any]) -> str | None:
    groups = _groups(text, 2)
    return None if groups is None or groups[0] == groups[1] else groups[0] + "\n******\n" + groups[1]


def _title(text: str, a: dict[str, Any], prompt: str) -> str:
    words = re.findall(r"[A-Za-z']+", prompt)[:5] or ["Answer"]
    return "<<" + " ".join(w.capitalize() for w in words) + ">>\n\n" + text


# Applied in this order: content first, then structure, then what goes at the start or the end, then wrappers,
# then case and punctuation (which keep everything before them valid). Each: (text, kwargs, prompt) -> text | None.
_RULES: dict[str, Callable[[str, dict[str, Any], str], str | None]] = {
    "keywords:existence": lambda t, a, p: _keywords(t, a),
    "keywords:frequency": lambda t, a, p: _frequency(t, a),
    "keywords:forbidden_words": lambda t, a, p: _forbidden(t, a),
    "detectable_content:number_placeholders": lambda t, a, p: _placeholders(t, a),
    "detectable_format:number_highlighted_sections": lambda t, a, p: _highlights(t, a),
    "detectable_format:multiple_sections": lambda t, a, p: _joined(
        t, int(a["num_sections"]), lambda i, g: f"{a['section_spliter']} {i}\n{g}", "\n\n"
    ),
    "detectable_format:number_bullet_lists": lambda t, a, p: _joined(
        t.replace("*", "").replace("\n-", "\n"), int(a["num_bullets"]), lambda i, g: f"* {g}", "\n"
    ),
    "length_constraints:number_paragraphs": lambda t, a, p: _joined(
        t.replace("***", ""), int(a["num_paragraphs"]), lambda i, g: g, "\n\n***\n\n"
    ),
    "combination:two_responses": lambda t, a, p: _two_responses(t, a),
    "detectable_format:title": _title,
    "combination:repeat_prompt": lambda t, a, p: a["prompt_to_repeat"].strip() + "\n\n" + t,
    "detectable_content:postscript": lambda t, a, p: t + f"\n\n{a['postscript_marker']} I hope this helps.",
    "detectable_format:constrained_response": lambda t, a, p: t + "\n\nMy answer is maybe.",
    "startend:end_checker": lambda t, a, p: t.rstrip() + " " + a["end_phrase"].strip(),
    "detectable_format:json_format": lambda t, a, p: json.dumps({"answer": t}, ensure_ascii=False),
    "startend:quotation": lambda t, a, p: '"' + t.strip().strip('"') + '"',
    "punctuation:no_comma": lambda t, a, p: t.replace(",", ""),
    "change_case:english_lowercase": lambda t, a, p: t.lower(),
    "change_case:english_capital": lambda t, a, p: t.upper(),
}
REPAIRABLE = tuple(_RULES)


def repair(
    answer: str,
    instruction_id_list: Sequence[str],
    kwargs: Any,
    prompt: str = "",
    *,
    finished: bool = True,
    max_words: int = 70,
) -> str | None:
    """`answer` rewritten to follow every constraint, or None when a constraint has no rule here or the rewrite does
    not pass IFEval's strict check. An unfinished answer (`finished=False`) is trimmed to whole sentences first."""
    ids, arguments = check_constraints(instruction_id_list, kwargs)
    if not ids or any(i not in _RULES for i in ids):
        return None
    text = answer.strip() if finished else trim_to_sentences(answer, max_words)
    if not text:
        return None
    by_id = dict(zip(ids, arguments))
    for instruction_id, rule in _RULES.items():
        if instruction_id in by_id:
            text = rule(text, by_id[instruction_id], prompt)
            if not text:
                return None
    return text if verify(text, ids, arguments, prompt=prompt).all_followed else None
