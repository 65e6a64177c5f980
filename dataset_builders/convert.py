"""Mappings from a validated shape (canonical columns) to the columns each method's trainer takes.

All of it is column arithmetic on Arrow tables (``pyarrow.compute`` and numpy index arrays), so a million rows
convert in about the time it takes to read them. Two steps run per row in Python by design: TRL's own
`unpair_preference_dataset` (pairs -> KTO) and token counting with a tokenizer.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trl_ext.methods import NAMES

from .errors import DataError
from .shapes import CONSTRAINT_FIELDS, PAIR_SHAPES, TOOLS_FIELD, _np_lengths, is_messages_type

logger = logging.getLogger("dataset_builders")

METHODS = NAMES  # trl_ext.methods: the one table (a method names the mapping its recipe reads)
PAIR_STRATEGIES = ("all_pairs", "adjacent", "best_vs_rest", "best_vs_worst")
# Text columns that hold a completion (role "assistant" when wrapped); `prompt` is the user's turn.
_COMPLETION_COLUMNS = ("chosen", "rejected", "response", "response_a", "response_b", "completion")


class Refusal(Exception):
    """The data cannot serve the method; the message says why and what would."""


# --- TRL standard <-> conversational ----------------------------------------------------------------------------


def wrap_messages(column: pa.ChunkedArray | pa.Array, role: str) -> pa.ChunkedArray:
    """Strings -> one-message lists [{"role": role, "content": text}] (TRL's conversational form), vectorized."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out = []
    for chunk in chunks:
        n = len(chunk)
        messages = pa.StructArray.from_arrays(
            [pa.repeat(pa.scalar(role), n), chunk.cast(pa.string())], names=["role", "content"]
        )
        out.append(pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), messages))
    return pa.chunked_array(out, type=pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))


def _wrap_list_items(column: pa.ChunkedArray, role: str) -> pa.ChunkedArray:
    """list<string> -> list<list<message>>."""
    lengths = _np_lengths(column)
    flat = wrap_messages(pc.list_flatten(column), role).combine_chunks()
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.chunked_array([pa.ListArray.from_arrays(pa.array(offsets), flat)])


def _is_conversational_column(column: pa.ChunkedArray) -> bool:
    t = column.type
    if is_messages_type(t):
        return True
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and is_messages_type(t.value_type)


def harmonize(table: pa.Table, conversational: bool = False) -> pa.Table:
    """Keep the text columns in one form: if any is a message list (or `conversational=True`), wrap the plain
    strings as messages too (prompt -> user, completions -> assistant), so the result is valid conversational
    TRL data rather than a mix TRL would reject. `sft_target` keeps its "chosen"/"rejected" keywords."""
    text_columns = [c for c in table.column_names if c == "prompt" or c in _COMPLETION_COLUMNS or c == "responses"]
    triggers = text_columns + (["sft_target"] if "sft_target" in table.column_names else [])
    if not conversational and not any(_is_conversational_column(table.column(c)) for c in triggers):
        return table
    for name in text_columns:
        column = table.column(name)
        if _is_conversational_column(column):
            continue
        role = "user" if name == "prompt" else "assistant"
        wrapped = _wrap_list_items(column, role) if name == "responses" else wrap_messages(column, role)
        table = table.set_column(table.column_names.index(name), name, wrapped)
    return table


def _same_type(a: pa.ChunkedArray, b: pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """Two columns that must be combined row-wise (if_else/take) need one Arrow type; message structs with
    different keys (say one has "name") are unified through Python, which is rare and small."""
    if a.type == b.type:
        return a, b
    try:
        unified = pa.unify_schemas(
            [pa.schema([("x", a.type)]), pa.schema([("x", b.type)])], promote_options="permissive"
        )
        return a.cast(unified.field("x").type), b.cast(unified.field("x").type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        both = pa.array(a.to_pylist() + b.to_pylist())
        return pa.chunked_array([both.slice(0, len(a))]), pa.chunked_array([both.slice(len(a))])


# --- cross-shape: to pairs --------------------------------------------------------------------------------------


def ab_to_pairs(table: pa.Table, skipped: dict[str, int]) -> pa.Table:
    """pairwise_ab -> pairs: the preferred response is `chosen`; ties (allowed only by opt-in) make no pair."""
    preference = table.column("preference")
    tie = pc.equal(preference, "tie")
    n_ties = pc.sum(tie).as_py() or 0
    if n_ties:
        skipped["tie (no pair)"] = skipped.get("tie (no pair)", 0) + n_ties
        table = table.filter(pc.invert(tie))
        preference = table.column("preference")
    a, b = _same_type(table.column("response_a"), table.column("response_b"))
    is_a = pc.equal(preference, "A")
    return pa.table(
        {"prompt": table.column("prompt"), "chosen": pc.if_else(is_a, a, b), "rejected": pc.if_else(is_a, b, a)}
    )


def _rank_matrix_groups(ranking: pa.ChunkedArray):
    """Yield (rows, R, starts) per distinct list length n: R is the (rows, n) rank matrix, starts the flat offsets."""
    lengths = _np_lengths(ranking)
    flat = pc.list_flatten(ranking).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    for n in np.unique(lengths):
        rows = np.flatnonzero(lengths == n)
        yield int(n), rows, flat[starts[rows][:, None] + np.arange(n)], starts[rows]


def ranked_to_pairs(table: pa.Table, strategy: str, skipped: dict[str, int]) -> pa.Table:
    """ranked -> pairs (chosen = the better-ranked response). Equal ranks are ties and make no pair.

    - all_pairs: every two responses with different ranks.
    - adjacent: each response against the responses at the next worse rank level.
    - best_vs_rest: the best-ranked response(s) against every worse one.
    - best_vs_worst: the best-ranked response(s) against the worst-ranked one(s).
    """
    if strategy not in PAIR_STRATEGIES:
        raise ValueError(f"pair_strategy must be one of {PAIR_STRATEGIES}, got {strategy!r}")
    row_parts, chosen_parts, rejected_parts, order_parts = [], [], [], []
    for n, rows, R, starts in _rank_matrix_groups(table.column("ranking")):
        a, b = np.triu_indices(n, 1)  # every unordered pair of positions, (P,)
        ra, rb = R[:, a], R[:, b]  # (m, P)
        better = np.where(ra < rb, a, b)
        worse = np.where(ra < rb, b, a)
        r_better, r_worse = np.minimum(ra, rb), np.maximum(ra, rb)
        keep = ra != rb
        if strategy == "adjacent":
            # next rank level after each response's own: min over ranks strictly greater than it
            greater = np.where(R[:, None, :] > R[:, :, None], R[:, None, :], np.iinfo(np.int64).max)  # (m, n, n)
            next_level = greater.min(axis=2)  # (m, n)
            keep &= r_worse == np.take_along_axis(next_level, better, axis=1)
        elif strategy == "best_vs_rest":
            keep &= r_better == R.min(axis=1, keepdims=True)
        elif strategy == "best_vs_worst":
            keep &= (r_better == R.min(axis=1, keepdims=True)) & (r_worse == R.max(axis=1, keepdims=True))
        m_idx, p_idx = np.nonzero(keep)
        row_parts.append(rows[m_idx])
        order_parts.append(p_idx)
        chosen_parts.append(starts[m_idx] + better[m_idx, p_idx])
        rejected_parts.append(starts[m_idx] + worse[m_idx, p_idx])
    if not row_parts:
        return _empty_pairs(table)
    row_idx = np.concatenate(row_parts)
    order = np.lexsort((np.concatenate(order_parts), row_idx))  # file order, then pair order within a row
    row_idx = row_idx[order]
    no_pair = table.num_rows - len(np.unique(row_idx))
    if no_pair:
        skipped["all responses tied (no pair)"] = skipped.get("all responses tied (no pair)", 0) + no_pair
    flat = pc.list_flatten(table.column("responses"))
    return pa.table(
        {
            "prompt": pc.take(table.column("prompt"), pa.array(row_idx)),
            "chosen": pc.take(flat, pa.array(np.concatenate(chosen_parts)[order])),
            "rejected": pc.take(flat, pa.array(np.concatenate(rejected_parts)[order])),
        }
    )


def _empty_pairs(table: pa.Table) -> pa.Table:
    item = getattr(table.column("responses").type, "value_type", pa.string())  # no rows left: Arrow may type it null
    return pa.table(
        {
            "prompt": table.column("prompt").slice(0, 0),
            "chosen": pa.array([], type=item),
            "rejected": pa.array([], type=item),
        }
    )


def best_responses(table: pa.Table) -> pa.Table:
    """ranked -> prompt/completion with the best-ranked response (the first listed, if several share rank 1)."""
    n_rows = table.num_rows
    flat_index = np.zeros(n_rows, dtype=np.int64)
    for _, rows, R, starts in _rank_matrix_groups(table.column("ranking")):
        flat_index[rows] = starts + R.argmin(axis=1)
    flat = pc.list_flatten(table.column("responses"))
    return pa.table({"prompt": table.column("prompt"), "completion": pc.take(flat, pa.array(flat_index))})


def to_pairs(table: pa.Table, shape: str, options: dict[str, Any], skipped: dict[str, int], method: str) -> pa.Table:
    """Any shape with a preference -> prompt/chosen/rejected (+ declared lengths / sft_target where the shape has them)."""
    if shape in PAIR_SHAPES:
        return table
    if shape == "pairwise_ab":
        return ab_to_pairs(table, skipped)
    if shape == "ranked":
        strategy = options.get("pair_strategy") or "all_pairs"
        return ranked_to_pairs(table, strategy, skipped)
    raise Refusal(_refusal(shape, method))


def _refusal(shape: str, method: str) -> str:
    why = {
        "binary": "binary rows rate one response at a time; there is no second response to prefer it over "
        "(use kto, or sft for the good rows)",
        "prompts": "prompt-only rows have no responses (use ppo, or grpo with grpo_mode='online')",
        "prompt_completion": "prompt/completion rows hold one response and no preference (use sft, or ppo / online grpo for the prompts)",
        "messages": "message-list rows are conversations with no preference (use sft)",
    }.get(shape, f"{shape} rows do not carry what {method} needs")
    return f"cannot build {method} data from the {shape} shape: {why}"


# --- per method -------------------------------------------------------------------------------------------------


def resolve_sft_target(table: pa.Table) -> pa.Table:
    """ORPO: `chosen` must be the SFT target. sft_target "chosen" keeps the pair, any other text becomes `chosen` (the
    rejected response stays), "rejected" swaps the pair (for ORPO only with `sft_target_rejected="swap"`: `load`
    refuses such rows otherwise, as the swap prefers the rejected answer); SFT takes the resolved `chosen`."""
    chosen, rejected = _same_type(table.column("chosen"), table.column("rejected"))
    target = table.column("sft_target")
    if is_messages_type(target.type):  # a literal message list for every row
        literal, is_chosen, is_rejected = target, pc.equal(pc.list_value_length(target), -1), None
    else:
        keyword = pc.utf8_lower(pc.utf8_trim_whitespace(target))
        is_chosen, is_rejected = pc.equal(keyword, "chosen"), pc.equal(keyword, "rejected")
        literal = wrap_messages(target, "assistant") if is_messages_type(chosen.type) else target
    chosen, literal = _same_type(chosen, literal)
    rejected, _ = _same_type(rejected, chosen)
    new_chosen = pc.if_else(is_chosen, chosen, literal)
    new_rejected = rejected
    if is_rejected is not None:
        new_chosen = pc.if_else(is_rejected, rejected, new_chosen)
        new_rejected = pc.if_else(is_rejected, chosen, rejected)
    return pa.table({"prompt": table.column("prompt"), "chosen": new_chosen, "rejected": new_rejected})


def text_lengths(column: pa.ChunkedArray, tokenizer: Any = None) -> pa.Array:
    """Length of each completion: characters (utf-8 code points) or, with a tokenizer, tokens (no special
    tokens). A message list counts the content of all its messages."""
    if tokenizer is None:
        if is_messages_type(column.type):
            lengths = _np_lengths(column)
            content = pc.utf8_length(pc.struct_field(pc.list_flatten(column), "content")).to_numpy(
                zero_copy_only=False
            )
            parents = np.repeat(np.arange(len(lengths)), lengths)
            return pa.array(np.bincount(parents, weights=content, minlength=len(lengths)).astype(np.int64))
        return pc.utf8_length(column).combine_chunks().cast(pa.int64())
    out = []
    batch = 4096
    for start in range(0, len(column), batch):
        values = column.slice(start, batch).to_pylist()
        texts = ["".join(str(m.get("content") or "") for m in v) if isinstance(v, list) else v for v in values]
        out.extend(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return pa.array(out, type=pa.int64())


def _tokenizer(value: Any) -> Any:
    if isinstance(value, str):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(value)
    return value


def with_lengths(table: pa.Table, shape: str, options: dict[str, Any], source: str) -> pa.Table:
    """IPO columns: declared lengths kept as given; otherwise computed by the explicit `count_lengths` option."""
    columns = {
        "prompt": table.column("prompt"),
        "chosen": table.column("chosen"),
        "rejected": table.column("rejected"),
    }
    if "chosen_length" in table.column_names and "rejected_length" in table.column_names:
        if options.get("count_lengths"):
            logger.info(
                "%s: keeping the declared chosen_length/rejected_length (count_lengths=%r not used)",
                source,
                options["count_lengths"],
            )
        columns["chosen_length"] = table.column("chosen_length")
        columns["rejected_length"] = table.column("rejected_length")
        return pa.table(columns)
    count_lengths = options.get("count_lengths")
    if count_lengths not in ("chars", "tokens"):
        raise DataError(
            source,
            "ipo needs chosen_length and rejected_length, and the data declares none; pass count_lengths='chars', "
            "or count_lengths='tokens' with tokenizer=<name or tokenizer> (CLI: --count-lengths chars | "
            "--count-lengths tokens --tokenizer NAME), or add the fields (shape pairs_with_lengths)",
        )
    tokenizer = None
    if count_lengths == "tokens":
        if options.get("tokenizer") is None:
            raise DataError(
                source, "count_lengths='tokens' needs tokenizer=<name or tokenizer object> (CLI: --tokenizer NAME)"
            )
        tokenizer = _tokenizer(options["tokenizer"])
    columns["chosen_length"] = text_lengths(columns["chosen"], tokenizer)
    columns["rejected_length"] = text_lengths(columns["rejected"], tokenizer)
    return pa.table(columns)


def to_ranked_group(table: pa.Table, shape: str) -> pa.Table:
    """Offline GRPO keeps each prompt's responses as a group with their ranks; a pair is a group of two."""
    if shape == "ranked":
        return table
    if shape == "pairwise_ab":
        first, second = _same_type(table.column("response_a"), table.column("response_b"))
        preference = table.column("preference")
        rank_a = pc.if_else(pc.equal(preference, "B"), 2, 1)
        rank_b = pc.if_else(pc.equal(preference, "A"), 2, 1)  # a tie ranks both 1
    else:
        first, second = _same_type(table.column("chosen"), table.column("rejected"))
        rank_a = pa.repeat(pa.scalar(1, pa.int64()), table.num_rows)
        rank_b = pa.repeat(pa.scalar(2, pa.int64()), table.num_rows)
    n = table.num_rows
    interleave = pa.array(np.stack([np.arange(n), np.arange(n) + n], axis=1).reshape(-1))
    offsets = pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32))
    values = pc.take(pa.chunked_array(first.chunks + second.chunks, type=first.type), interleave).combine_chunks()
    ranks = pc.take(pa.chunked_array([_arr(rank_a), _arr(rank_b)]), interleave).combine_chunks().cast(pa.int64())
    return pa.table(
        {
            "prompt": table.column("prompt"),
            "responses": pa.ListArray.from_arrays(offsets, values),
            "ranking": pa.ListArray.from_arrays(offsets, ranks),
        }
    )


def _arr(x: pa.Array | pa.ChunkedArray) -> pa.Array:
    return x.combine_chunks() if isinstance(x, pa.ChunkedArray) else x


def to_sft(table: pa.Table, shape: str, skipped: dict[str, int]) -> pa.Table:
    """SFT: prompt/completion with the response worth imitating, or `messages` passed through."""
    if shape == "messages":
        return table.select(["messages"])
    if shape == "prompt_completion":
        return table.select(["prompt", "completion"])
    if shape == "binary":
        good = table.column("label")
        n_bad = table.num_rows - (pc.sum(good).as_py() or 0)
        if n_bad:
            skipped["label bad (sft keeps the good rows)"] = n_bad
        table = table.filter(good)
        return pa.table({"prompt": table.column("prompt"), "completion": table.column("response")})
    if shape == "ranked":
        return best_responses(table)
    if shape == "pairs_sft_target":
        table = resolve_sft_target(table)
    elif shape == "pairwise_ab":
        table = ab_to_pairs(table, skipped)
    elif shape not in PAIR_SHAPES:
        raise Refusal(_refusal(shape, "sft"))
    return pa.table({"prompt": table.column("prompt"), "completion": table.column("chosen")})


def keeps_constraints(method: str | None, options: dict[str, Any]) -> bool:
    """Whether `method`'s rows keep the prompt's constraint fields: the methods that sample and score (PPO, online
    GRPO) and the canonical shape (no method). The others train on fixed answers and leave them out (reported)."""
    return method in (None, "ppo") or (method == "grpo" and options.get("grpo_mode") == "online")


# the methods whose TRL trainer passes a `tools` column to the chat template
TOOLS_METHODS = ("sft", "reward", "dpo", "ipo", "kto")


def keeps_tools(table: pa.Table, converted: pa.Table, shape: str, method: str) -> bool:
    """Whether `converted` (from `table`) carries the tools column: the trainer reads it and the mapping kept every
    row in place (pairs to DPO, binary to KTO, conversations to SFT: not ranked lists expanded into pairs, nor
    pairs unpaired for KTO)."""
    return (
        TOOLS_FIELD in table.column_names
        and method in TOOLS_METHODS
        and converted.num_rows == table.num_rows
        and not (method == "kto" and "chosen" in converted.column_names)
        and shape in (*PAIR_SHAPES, "binary", "messages", "prompt_completion")
    )


def convert(
    table: pa.Table, shape: str, method: str, options: dict[str, Any], source: str, skipped: dict[str, int]
) -> pa.Table:
    """Canonical columns of `shape` -> exactly the columns `method`'s trainer takes (an Arrow table; KTO from
    pairs is finished by the caller with TRL's `unpair_preference_dataset`), and the tools column where
    `keeps_tools` says so."""
    out = _convert(table, shape, method, options, source, skipped)
    if keeps_tools(table, out, shape, method):
        out = out.append_column(TOOLS_FIELD, table.column(TOOLS_FIELD))
    return out


def _convert(
    table: pa.Table, shape: str, method: str, options: dict[str, Any], source: str, skipped: dict[str, int]
) -> pa.Table:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "ppo" or (method == "grpo" and options.get("grpo_mode") == "online"):
        if "prompt" not in table.column_names:
            raise Refusal(_refusal(shape, method))
        # the prompt's constraints travel with it: reward functions read them while sampling
        return table.select(["prompt", *(c for c in CONSTRAINT_FIELDS if c in table.column_names)])
    if method == "grpo":
        if options.get("grpo_mode", "offline") not in ("offline", None):
            raise ValueError(f"grpo_mode must be 'offline' or 'online', got {options['grpo_mode']!r}")
        if shape not in ("ranked", "pairwise_ab", *PAIR_SHAPES):
            raise Refusal(_refusal(shape, method))
        return to_ranked_group(table, shape).select(["prompt", "responses", "ranking"])
    if method == "sft":
        return to_sft(table, shape, skipped)
    if method == "kto":
        if shape == "binary":
            return pa.table(
                {
                    "prompt": table.column("prompt"),
                    "completion": table.column("response"),
                    "label": table.column("label"),
                }
            )
        if shape == "ranked":
            strategy = options.get("pair_strategy") or "best_vs_worst"
            if strategy not in ("best_vs_worst", "best_vs_rest"):
                raise Refusal(
                    f"kto from ranked data needs pair_strategy 'best_vs_worst' (the default for kto) or 'best_vs_rest': "
                    f"with {strategy!r} a middle response would be labelled both desirable and undesirable"
                )
            return ranked_to_pairs(table, strategy, skipped).select(["prompt", "chosen", "rejected"])
        return to_pairs(table, shape, options, skipped, method).select(["prompt", "chosen", "rejected"])
    pairs = to_pairs(table, shape, options, skipped, method)
    if method == "orpo":
        return (
            resolve_sft_target(pairs)
            if "sft_target" in pairs.column_names
            else pairs.select(["prompt", "chosen", "rejected"])
        )
    if method == "ipo":
        return with_lengths(pairs, shape, options, source)
    return pairs.select(["prompt", "chosen", "rejected"])  # reward, dpo
