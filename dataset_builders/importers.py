"""Importers for two public formats.

- Anthropic HH-RLHF: `chosen` and `rejected` are whole transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ...").
  The prompt is the conversation the two share, up to the assistant turn where they part, so that
  prompt + chosen and prompt + rejected give back the two transcripts exactly (standard form: strings; with
  ``conversational=True``: message lists, where the same holds for the parsed turns).
- UltraFeedback-style scored lists: `instruction` (or `prompt`) and `completions`, each completion a response
  with a score -> the `ranked` shape (higher score = better rank; equal scores are ties).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa

from .errors import short
from .formats import detect_format
from .readers import Source
from .shapes import is_messages_type
from .transcripts import hh_messages  # noqa: F401 (also this module's: the HH importer's parser)

_ASSISTANT = "\n\nAssistant:"


def hh_split(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) with prompt + chosen == the chosen transcript (and the same for rejected).

    The prompt ends with the last "\\n\\nAssistant:" that both transcripts still share: the assistant turn where
    they part (real transcripts may part inside that turn, or one may stop where the other goes on)."""
    common = len(_common_prefix(chosen, rejected))
    cut = chosen.rfind(_ASSISTANT, 0, common)
    if cut < 0:
        raise ValueError("the transcripts part before any shared 'Assistant:' turn")
    cut += len(_ASSISTANT)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _common_prefix(a: str, b: str) -> str:
    n = min(len(a), len(b))
    lo, hi = 0, n  # binary search on the longest shared prefix: fast for long transcripts
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return a[:lo]


def hh_split_messages(chosen: str, rejected: str) -> tuple[list, list, list]:
    """Conversational form: the shared leading turns are the prompt; the turns from where they part on are
    chosen / rejected (prompt + chosen == the parsed chosen transcript)."""
    mc, mr = hh_messages(chosen), hh_messages(rejected)
    k = 0
    while k < min(len(mc), len(mr)) and mc[k] == mr[k]:
        k += 1
    if k and mc[k - 1]["role"] == "assistant" and (k == len(mc) or k == len(mr)):
        k -= 1  # one transcript is the other plus more turns: they part at the last shared assistant turn
    return mc[:k], mc[k:], mr[k:]


def import_hh(src: Source, conversational: bool) -> Source:
    for name in ("chosen", "rejected"):
        if name not in src.table.column_names:
            raise src.error("missing (HH-RLHF transcripts come as chosen and rejected)", index=0, field=name)
    chosen, rejected = src.table.column("chosen"), src.table.column("rejected")
    for name, column in (("chosen", chosen), ("rejected", rejected)):
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise src.error(
                f"expected an HH-RLHF transcript string, got {short(column[0].as_py())}", index=0, field=name
            )
    prompts, chosens, rejecteds = [], [], []
    split = hh_split_messages if conversational else hh_split
    for i, (c, r) in enumerate(zip(chosen.to_pylist(), rejected.to_pylist())):
        if c is None or r is None:
            raise src.error("missing", index=i, field="chosen" if c is None else "rejected")
        if c == r:
            raise src.error("chosen and rejected transcripts are identical: no preference", index=i, field="rejected")
        try:
            p, c_part, r_part = split(c, r)
        except ValueError as e:
            raise src.error(str(e), index=i, field="chosen") from None
        prompts.append(p)
        chosens.append(c_part)
        rejecteds.append(r_part)
    table = pa.table({"prompt": prompts, "chosen": chosens, "rejected": rejecteds})
    return replace(src, table=table)


_SCORE_KEYS = ("overall_score", "score", "rating", "fine-grained_score")
_TEXT_KEYS = ("response", "text", "content", "completion")


def import_scored(src: Source, score_key: str | None) -> Source:
    """UltraFeedback-style rows -> ranked: rank = 1 + the number of completions that scored strictly higher."""
    table = src.table
    if "completions" not in table.column_names:
        fmt = detect_format(table.column_names, table.slice(0, 1).to_pylist()[0] if table.num_rows else None)
        hint = f"; these rows look like {fmt.project}: pass format={fmt.name}" if fmt else ""
        raise src.error(
            f"missing (the ultrafeedback shape needs 'prompt' or 'instruction' and 'completions'; found "
            f"{', '.join(table.column_names)}){hint}",
            index=0,
            field="completions",
        )
    prompt_field = "prompt" if "prompt" in table.column_names else "instruction"
    if prompt_field not in table.column_names:
        raise src.error(
            "missing (scored lists need 'prompt' or 'instruction' beside 'completions')", index=0, field="prompt"
        )
    prompts, responses, rankings = [], [], []
    for i, (prompt, completions) in enumerate(
        zip(table.column(prompt_field).to_pylist(), table.column("completions").to_pylist())
    ):
        if not isinstance(completions, list):
            raise src.error(
                f"expected a list of scored completions, got {short(completions)}", index=i, field="completions"
            )
        texts, scores = [], []
        for k, completion in enumerate(completions):
            if isinstance(completion, str) or not isinstance(completion, dict):
                raise src.error(
                    f"completion {k + 1}: expected an object with a response and a score, got {short(completion)}",
                    index=i,
                    field="completions",
                )
            key = score_key or next((s for s in _SCORE_KEYS if completion.get(s) is not None), None)
            score = completion.get(key) if key else None
            try:
                score = float(score)
            except (TypeError, ValueError):
                wanted = score_key or " / ".join(_SCORE_KEYS)
                raise src.error(
                    f"completion {k + 1}: no numeric score ({wanted}), got {short(score)}",
                    index=i,
                    field="completions",
                ) from None
            if np.isnan(score):
                raise src.error(f"completion {k + 1}: the score is NaN", index=i, field="completions")
            text = next((completion[t] for t in _TEXT_KEYS if completion.get(t) is not None), None)
            texts.append(text)
            scores.append(score)
        scores_arr = np.asarray(scores)
        prompts.append(prompt)
        responses.append(texts)
        rankings.append([int(1 + np.sum(scores_arr > s)) for s in scores_arr])
    out = pa.table(
        {"prompt": prompts, "responses": responses, "ranking": pa.array(rankings, type=pa.list_(pa.int64()))}
    )
    return replace(src, table=out)


def import_source(src: Source, shape: str, options: dict[str, Any]) -> tuple[Source, str]:
    if shape == "hh_rlhf":
        return import_hh(src, bool(options.get("conversational"))), "pairs"
    return import_scored(src, options.get("score_key")), "ranked"


def extract_implicit_prompt(src: Source) -> Source:
    """Pairs with no `prompt` column, whose prompt is the opening chosen and rejected share (TRL's implicit-prompt
    format, conversational or text: many Hub datasets): TRL's `maybe_extract_prompt` splits it off, row by row.
    Text pairs that share no opening at all are not this format: they stay as they are (validation then asks for the
    prompt); a row of them that shares nothing gets an empty prompt, which validation names."""
    from trl.data_utils import maybe_extract_prompt

    table = src.table
    texts = pa.types.is_string(table.column("chosen").type) or pa.types.is_large_string(table.column("chosen").type)
    if not texts and not is_messages_type(table.column("chosen").type):
        return src

    def split(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"prompt": [], "chosen": [], "rejected": []}
        for chosen, rejected in zip(batch["chosen"], batch["rejected"]):
            same_kind = (isinstance(chosen, list) and isinstance(rejected, list)) or (
                isinstance(chosen, str) and isinstance(rejected, str)
            )
            if same_kind and chosen and rejected and chosen != rejected:
                row = maybe_extract_prompt({"chosen": chosen, "rejected": rejected})
            else:  # leave it to validation to name the bad field
                row = {"prompt": None, "chosen": chosen, "rejected": rejected}
            for key in out:
                out[key].append(row[key])
        return out

    rest = {name: table.column(name) for name in table.column_names if name not in ("chosen", "rejected")}
    pieces = []
    for start in range(0, table.num_rows, 10_000):
        batch = table.slice(start, 10_000).select(["chosen", "rejected"]).to_pydict()
        pieces.append(pa.table(split(batch)))
    out = pa.concat_tables(pieces, promote_options="permissive")
    if texts and not any(out.column("prompt").to_pylist()):
        return src  # no row shares an opening: answers without their prompt, not the implicit-prompt format
    for name, column in rest.items():
        out = out.append_column(name, column)
    return replace(src, table=out)


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def split_shared_prompt(src: Source) -> Source:
    """Pairs whose `chosen`/`rejected` conversations repeat the prompt (HuggingFaceH4/ultrafeedback_binarized and
    axolotl's `chatml.ultra`: a string `prompt`, and full conversations `[user, assistant]`): the shared turns become
    the prompt (TRL's `maybe_extract_prompt`) and the answers the rest, so prompt + chosen is the conversation once,
    not with the user turn twice. The string prompt must be that user turn (else the row is refused: the two disagree);
    a message-list prompt that chosen and rejected both start with is taken off them. Other rows are unchanged."""
    table = src.table
    if not {"prompt", "chosen", "rejected"} <= set(table.column_names):
        return src
    if not (is_messages_type(table.column("chosen").type) and is_messages_type(table.column("rejected").type)):
        return src  # plain-text answers cannot repeat a conversation: no row to look at (the fast path stays columnar)
    from trl.data_utils import extract_prompt  # only here: importing TRL takes seconds

    columns = table.select(["prompt", "chosen", "rejected"]).to_pydict()
    changed = False
    for i, (prompt, chosen, rejected) in enumerate(zip(columns["prompt"], columns["chosen"], columns["rejected"])):
        if not (_is_messages(chosen) and _is_messages(rejected)) or chosen[0].get("role") == "assistant":
            continue
        if _is_messages(prompt):
            n = len(prompt)
            if chosen[:n] == prompt and rejected[:n] == prompt and len(chosen) > n and len(rejected) > n:
                columns["chosen"][i], columns["rejected"][i] = chosen[n:], rejected[n:]
                changed = True
            continue
        if not isinstance(prompt, str):
            continue
        shared = extract_prompt({"chosen": chosen, "rejected": rejected})
        head = shared["prompt"]
        if not head or not shared["chosen"] or not shared["rejected"]:
            continue
        last_user = next((m for m in reversed(head) if m.get("role") == "user"), None)
        if last_user is None or str(last_user.get("content", "")).strip() != prompt.strip():
            raise src.error(  # refused even with on_error="drop": which of the two questions is right is not ours to guess
                "is a string while chosen and rejected are conversations that start with a different user turn: "
                "prompt + chosen would hold two questions (drop the prompt column to use the conversations' own)",
                i,
                "prompt",
            )
        columns["prompt"][i], columns["chosen"][i], columns["rejected"][i] = head, shared["chosen"], shared["rejected"]
        changed = True
    if not changed:
        return src
    out = table
    for name in ("prompt", "chosen", "rejected"):
        out = out.set_column(out.column_names.index(name), name, pa.array(columns[name]))
    return replace(src, table=out)


def system_into_prompt(src: Source) -> Source:
    """A `system` column (LLaMA-Factory, axolotl's `chatml.intel`, ms-swift) goes to the head of the prompt as a
    system message, where chat templates expect it; rows with an empty or missing system value keep their prompt.
    The column is then gone: its content is in the prompt."""
    table = src.table
    if "system" not in table.column_names or "prompt" not in table.column_names:
        return src
    systems, prompts = table.column("system").to_pylist(), table.column("prompt").to_pylist()
    if not any(isinstance(v, str) and v.strip() for v in systems):
        return replace(src, table=table.drop_columns(["system"]))
    merged = []
    for i, (system, prompt) in enumerate(zip(systems, prompts)):
        if system is not None and not isinstance(system, str):
            raise src.error(f"must be a string, got {type(system).__name__}", i, "system")
        if prompt is None:
            raise src.error("missing", i, "prompt")
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
            messages = prompt
        else:
            raise src.error(f"expected text (a string or a message list), got {short(prompt)}", i, "prompt")
        if system and system.strip() and not (messages and messages[0].get("role") == "system"):
            messages = [{"role": "system", "content": system}, *messages]
        merged.append(messages)
    out = table.drop_columns(["system"])
    out = out.set_column(out.column_names.index("prompt"), "prompt", pa.array(merged))
    return replace(src, table=out)
