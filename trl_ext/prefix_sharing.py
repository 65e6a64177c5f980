"""Prefix sharing: the responses of a group (a ranked list, a chosen/rejected pair) share their prompt, so one forward
pass computes the prompt once and every response after it, instead of one pass per response that recomputes the
prompt each time (the idea of arXiv:2410.20305, which reports 1.1-1.5x DPO throughput).

How. The `N` right-padded sequences of a batch (each prompt + response, `(N, T)`) are repacked into one row per
group, `(G, L)`:

    [ trunk = the group's common prompt minus its last token | last prompt token, response 1 | last prompt token,
      response 2 | ... | padding ]

with a 4D attention mask that lets every token see the trunk and the earlier tokens of its own segment, never
another response, and position ids that restart after the trunk in every segment, so each segment sees exactly the
context it has in its own sequence. The last prompt token opens every segment so that, inside a segment, position
`p` still predicts token `p + 1`: causal-LM labels (`-100` outside the completions) and TRL's fused LM head work on
the packed row unchanged; a segment's first label is `-100` (what precedes it is the other response). Per-token
outputs `(G, L-1)` are then gathered back to the unshared layout `(N, T-1)`, gradients included, so every loss is
computed on exactly the tensors it had before. Equal to the unshared computation up to floating-point summation
order (tests/test_prefix_sharing.py: padding, truncated prompts, LoRA, 4-bit).

The shared part is the longest common prefix of the group's sequences within their prompts (token-equal at equal
positions), so truncation that cuts the prompts of a group differently shares less, never wrongly.

Cost. A group of n responses of length R after a prompt of length P runs `P + n (R + 1)` tokens instead of
`n (P + R)` (plus padding), but its attention is dense over the packed row (the mask is not exploited by sdpa):
worthwhile when prompts are long against responses, not when responses dominate.

Where it works: the model families it is known to be exact for (`EXACT_FAMILIES`: every layer full attention,
positions taken from `position_ids`; each checked against the unshared forward in tests/test_prefix_sharing.py),
with an attention implementation that takes a 4D mask (`eager`, `sdpa`). Everything else runs unshared, after one
warning that says why (`supports_prefix_sharing`): `flash_attention_*` and `flex_attention` cannot take the mask;
sliding-window layers would lose their window; recurrent, convolution and linear-attention layers (Mamba hybrids,
Qwen3-Next, Qwen3.5, LFM2) carry state from one response into the next, which no mask stops; ALiBi (MPT, Bloom,
Falcon) computes its bias from distances in the row, not from `position_ids`; a router's load-balancing loss
(`output_router_logits`) reads the 2D mask; mrope positions are not plain position ids. A batch whose groups share
no prompt token (e.g. prompts cut differently by `keep_end` truncation) also runs unshared: packing it would only make
its attention denser.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

SUPPORTED_ATTENTION = ("eager", "sdpa")

# `model_type`s of the text model whose every layer is full attention with positions from `position_ids`, each
# checked shared == unshared over a tiny random config in tests/test_prefix_sharing.py. Add one only with its test.
EXACT_FAMILIES = frozenset(
    {"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma", "phi3", "olmo2", "gpt_neox", "gpt2",
     "granite", "smollm3"}
)  # fmt: skip
ALIBI_FAMILIES = frozenset({"mpt", "bloom"})
SLIDING_WINDOW = "the model has sliding-window attention layers, which a custom 4D mask would turn into full attention"


def supports_prefix_sharing(model: Any) -> str | None:
    """None if `model` gives on a packed row (a 4D attention mask + position ids) exactly what it gives unshared,
    else why not, in a few words. Only what is known to be exact passes (`EXACT_FAMILIES`)."""
    config = getattr(model, "config", None)
    if config is None:
        return "the model has no config"
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    implementation = getattr(text, "_attn_implementation", None) or getattr(config, "_attn_implementation", None)
    if implementation not in SUPPORTED_ATTENTION:
        return f"attn_implementation={implementation!r} cannot take a 4D attention mask (use 'sdpa' or 'eager')"
    model_type = getattr(text, "model_type", None)
    layer_types = getattr(text, "layer_types", None)
    if layer_types:  # the per-layer truth where the config has it (Qwen2's use_sliding_window alone says nothing)
        other = sorted(set(layer_types) - {"full_attention", "attention"})
        if "sliding_attention" in other:
            return SLIDING_WINDOW
        if other:
            return (f"the model has {'/'.join(other)} layers (recurrent, convolution or linear attention), whose "
                    "state runs from one response into the next whatever the attention mask")  # fmt: skip
    elif getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return SLIDING_WINDOW
    if model_type in ALIBI_FAMILIES or getattr(text, "alibi", False):
        return "ALiBi attention biases come from distances within the row, not from position_ids"
    if getattr(text, "rope_scaling", None) and (text.rope_scaling or {}).get("mrope_section"):
        return "multimodal rotary positions (mrope) are not plain position ids"
    if getattr(text, "output_router_logits", False):
        return "output_router_logits=True: the router's load-balancing loss reads the 2D attention mask"
    if model_type not in EXACT_FAMILIES:
        return (f"model_type {model_type!r} is not one prefix sharing is known to be exact for "
                f"({', '.join(sorted(EXACT_FAMILIES))})")  # fmt: skip
    return None


_warned: set[str] = set()


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        logger.warning("prefix sharing skipped: %s; this forward runs unshared", reason)


NOTHING_SHARED = "the groups of this batch share no prompt token (e.g. prompts cut differently by keep_end truncation)"


@dataclass
class PackedGroups:
    """A batch of `N` sequences repacked as `G` rows, one per group (see the module docstring).

    `input_ids`, `position_ids`, `labels`, `segments` are `(G, L)`; `segments` is 0 on the trunk, `k + 1` on the
    k-th member of the group, -1 on padding. `gather_index` `(N, T-1)` holds, for each unshared per-token position,
    its flat index in a packed per-token tensor `(G, L-1)`, or -1 where the unshared tensor has no value to take
    (prompt tokens, padding). `last_index` `(N,)`: the flat index in `(G, L)` of each member's last token.
    `group_of`, `trunk_lengths`, `lengths` `(N,)`: each member's row, the length of its row's shared trunk, its own
    length; `shared_tokens`: the tokens packing saves (each trunk counted once instead of once per member).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    segments: torch.Tensor
    gather_index: torch.Tensor
    last_index: torch.Tensor
    group_of: torch.Tensor
    trunk_lengths: torch.Tensor
    lengths: torch.Tensor
    shared_tokens: int
    unshared_tokens: int  # tokens the unshared batch holds (N x T)

    @property
    def packed_tokens(self) -> int:
        return int(self.segments.numel())

    def allowed(self) -> torch.Tensor:
        """`(G, 1, L, L)` bool: True where query q may attend to key k."""
        seg = self.segments
        length = seg.size(1)
        causal = torch.ones(length, length, dtype=torch.bool, device=seg.device).tril()
        query, key = seg[:, :, None], seg[:, None, :]
        allowed = causal & (query >= 0) & ((key == 0) | (key == query))
        allowed |= torch.eye(length, dtype=torch.bool, device=seg.device)  # padding attends to itself (no empty rows)
        return allowed[:, None]

    def attention_mask(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """`(G, 1, L, L)` additive mask: 0 where query q may attend to key k, the dtype's minimum elsewhere."""
        mask = torch.zeros(self.segments.size(0), 1, self.segments.size(1), self.segments.size(1), dtype=dtype)
        return mask.masked_fill_(~self.allowed().to(mask.device), torch.finfo(dtype).min)

    def unpack(self, packed: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """A per-token tensor of the packed rows, `(G, L-1, ...)` -> `(N, T-1, ...)` in the unshared layout."""
        flat = packed.reshape(-1, *packed.shape[2:])
        index = self.gather_index.to(packed.device)
        taken = flat[index.clamp(min=0)]
        valid = (index >= 0).reshape(*index.shape, *([1] * (packed.dim() - 2)))
        return torch.where(valid, taken, torch.full_like(taken, fill))

    def flat_index(self, positions: torch.Tensor) -> torch.Tensor:
        """`(N,)` flat indices in `(G, L)` of the packed tokens that are each member's token at `positions` `(N,)`
        of its unshared sequence (a trunk position is the row's shared trunk token)."""
        positions = positions.cpu()
        width = self.input_ids.size(1)
        in_segment = self.last_index - (self.lengths - 1 - positions)
        return torch.where(positions >= self.trunk_lengths, in_segment, self.group_of * width + positions)

    def at_positions(self, packed: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """A per-position tensor of the packed rows, `(G, L, ...)` -> its value at each member's unshared position
        `positions` `(N,)` (default: each member's last token), `(N, ...)`."""
        index = self.last_index if positions is None else self.flat_index(positions)
        return packed.reshape(-1, *packed.shape[2:])[index.to(packed.device)]


def pack_groups(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    group_index: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    prompt_lengths: torch.Tensor | None = None,
    pad_token_id: int = 0,
    pad_to_multiple_of: int | None = None,
) -> PackedGroups:
    """Pack right-padded sequences `(N, T)` into one row per group (`group_index` `(N,)`, groups numbered 0..G-1).

    The shared trunk of a group is its longest common prefix, capped at the shortest prompt of the group:
    `prompt_lengths` `(N,)`, else where each sequence's labels start (`labels != -100`), else no cap. Raises
    ValueError on left padding or an empty group number.
    """
    input_ids, attention_mask = input_ids.cpu(), attention_mask.cpu()
    n, width = input_ids.shape
    lengths = attention_mask.sum(1)
    if not torch.equal(attention_mask.bool(), torch.arange(width)[None, :] < lengths[:, None]):
        raise ValueError("prefix sharing needs right-padded sequences (attention_mask 1...1 0...0)")
    if labels is not None:
        labels = labels.cpu()
    if prompt_lengths is None:
        if labels is not None:
            has_label = labels != -100
            prompt_lengths = torch.where(has_label.any(1), has_label.int().argmax(1), lengths)
        else:
            prompt_lengths = lengths
    prompt_lengths = prompt_lengths.cpu()
    groups = group_index.cpu().tolist()
    num_groups = max(groups) + 1 if groups else 0
    members: list[list[int]] = [[] for _ in range(num_groups)]
    for i, g in enumerate(groups):
        members[g].append(i)
    if any(not m for m in members):
        raise ValueError("group_index must number the groups 0..G-1 with no gap")

    rows: list[tuple[list[int], list[int], list[int], list[int]]] = []  # ids, positions, labels, segments
    gather = torch.full((n, max(width - 1, 0)), -1, dtype=torch.long)
    last = torch.zeros(n, dtype=torch.long)
    trunk_lengths = torch.zeros(n, dtype=torch.long)
    shared_tokens = 0
    starts: list[list[tuple[int, int, int]]] = []  # per group: (member, segment start in row, trunk length)
    for m in members:
        cap = int(min(min(int(prompt_lengths[i]), int(lengths[i])) for i in m))
        first = input_ids[m[0], :cap]
        common = cap
        for i in m[1:]:
            differs = (input_ids[i, :cap] != first).nonzero()
            if len(differs):
                common = min(common, int(differs[0]))
        trunk = max(common - 1, 0)
        shared_tokens += trunk * (len(m) - 1)
        trunk_lengths[m] = trunk
        ids, positions, labs, segs = first[:trunk].tolist(), list(range(trunk)), [-100] * trunk, [0] * trunk
        placed = []
        for k, i in enumerate(m):
            length = int(lengths[i])
            start = len(ids)
            ids += input_ids[i, trunk:length].tolist()
            positions += list(range(trunk, length))
            member_labels = labels[i, trunk:length].tolist() if labels is not None else [-100] * (length - trunk)
            if member_labels:
                member_labels[0] = -100  # what precedes a segment in the row is not what precedes it in its sequence
            labs += member_labels
            segs += [k + 1] * (length - trunk)
            placed.append((i, start, trunk))
        rows.append((ids, positions, labs, segs))
        starts.append(placed)

    packed_width = max(len(r[0]) for r in rows) if rows else 0
    if pad_to_multiple_of:
        packed_width = -(-packed_width // pad_to_multiple_of) * pad_to_multiple_of
    shape = (num_groups, packed_width)
    packed_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    packed_positions = torch.zeros(shape, dtype=torch.long)
    packed_labels = torch.full(shape, -100, dtype=torch.long)
    packed_segments = torch.full(shape, -1, dtype=torch.long)
    for g, (ids, positions, labs, segs) in enumerate(rows):
        packed_ids[g, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        packed_positions[g, : len(ids)] = torch.tensor(positions, dtype=torch.long)
        packed_labels[g, : len(ids)] = torch.tensor(labs, dtype=torch.long)
        packed_segments[g, : len(ids)] = torch.tensor(segs, dtype=torch.long)
        for i, start, trunk in starts[g]:
            length = int(lengths[i])
            # Unshared per-token position t holds the log-prob of token t + 1. Token u >= trunk + 1 of member i sits
            # at row position start + u - trunk, and its log-prob at packed per-token position start + u - trunk - 1.
            tokens = torch.arange(trunk + 1, length)
            gather[i, tokens - 1] = g * (packed_width - 1) + start + tokens - trunk - 1
            last[i] = g * packed_width + start + length - 1 - trunk
    return PackedGroups(
        input_ids=packed_ids,
        position_ids=packed_positions,
        labels=packed_labels,
        segments=packed_segments,
        gather_index=gather,
        last_index=last,
        group_of=group_index.cpu().long(),
        trunk_lengths=trunk_lengths,
        lengths=lengths.long(),
        shared_tokens=shared_tokens,
        unshared_tokens=n * width,
    )


def packed_model_inputs(packed: PackedGroups, model: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """`input_ids`, the 4D `attention_mask` and `position_ids` for a forward of `model` on the packed rows. sdpa gets a
    boolean mask (True = attend), which it takes whatever the compute dtype (bf16 under autocast, a 4-bit base's
    float embeddings); eager gets an additive float32 mask, which type promotion adds to scores of any dtype."""
    core = _core_model(model)
    config = getattr(core, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    mask = packed.allowed() if implementation == "sdpa" else packed.attention_mask(torch.float32)
    return {
        "input_ids": packed.input_ids.to(device),
        "attention_mask": mask.to(device),
        "position_ids": packed.position_ids.to(device),
    }


def shared_prefix_log_probs(model: Any, inputs: dict[str, torch.Tensor], labels: torch.Tensor,
                            group_index: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, Any]:  # fmt: skip
    """`(N, T-1)` per-token log-probabilities of `labels` (TRL's fused LM head, `fused_lm_head=True`), computed with
    one packed forward per group; returns them and the model's outputs on the packed rows (the unshared forward's
    when the groups share nothing). `model` may be wrapped (DDP, PEFT); `inputs` holds the unshared `input_ids` and
    `attention_mask` `(N, T)`."""
    packed = pack_groups(inputs["input_ids"], inputs["attention_mask"], group_index, labels=labels)
    device = inputs["input_ids"].device
    if not packed.shared_tokens:
        _warn_once(NOTHING_SHARED)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels,
                        fused_lm_head=True, use_cache=False, **kwargs)  # fmt: skip
        return outputs.log_probs[:, -(inputs["input_ids"].size(1) - 1) :], outputs
    outputs = model(
        **packed_model_inputs(packed, model, device),
        labels=packed.labels.to(device),
        fused_lm_head=True,
        use_cache=False,
        **kwargs,
    )
    log_probs = outputs.log_probs[:, -(packed.input_ids.size(1) - 1) :]
    return packed.unpack(log_probs), outputs


def _core_model(model: Any) -> Any:
    while hasattr(model, "module"):  # DDP and similar wrappers
        model = model.module
    return model


class PairPrefixSharing:
    """Forward hooks that make every `fused_lm_head=True` call on a model, made by code we do not own (TRL's
    `DPOTrainer._compute_loss`, on `[chosen; rejected]` batches of `2B` right-padded sequences), run prefix-shared:
    a pre-hook repacks the pairs into `B` rows, a post-hook gathers the per-token outputs back to `(2B, T-1)`.

    Register on the policy as the trainer holds it (`self.model`, which DDP/DeepSpeed/FSDP wrap and call) and on a
    separate reference model. Calls it cannot pack (no attention mask, padding-free batches, an odd batch, an
    unsupported model) pass through unchanged; the first such call of each kind logs why.
    """

    def __init__(self) -> None:
        self._pending: list[PackedGroups | None] = []  # one per call in flight, None for one that runs unshared
        self._warned: set[str] = set()
        self.packed_tokens = 0
        self.unshared_tokens = 0

    def register(self, module: torch.nn.Module) -> None:
        module.register_forward_pre_hook(self._before, with_kwargs=True)
        # First among the forward hooks: hooks registered earlier (e.g. LengthAwareIPOTrainer's recorder) must see
        # the outputs in the unshared layout.
        module.register_forward_hook(self._after, with_kwargs=True, prepend=True)

    def _skip(self, reason: str) -> None:
        if reason not in self._warned:
            self._warned.add(reason)
            logger.warning("prefix sharing skipped: %s; this forward runs unshared", reason)

    def _before(self, module, args, kwargs):
        if not kwargs.get("fused_lm_head"):
            return None
        self._pending.append(None)
        input_ids, attention_mask, labels = kwargs.get("input_ids"), kwargs.get("attention_mask"), kwargs.get("labels")
        why = None
        if args or input_ids is None or attention_mask is None or attention_mask.dim() != 2:
            why = "the call has no 2D attention_mask (padding-free batches cannot be repacked)"
        elif "position_ids" in kwargs:
            why = "the call brings its own position_ids"
        elif kwargs.get("output_router_logits"):
            why = "output_router_logits=True: the router's load-balancing loss reads the 2D attention mask"
        elif input_ids.size(0) % 2:
            why = "the batch is not [chosen; rejected] pairs (an odd number of sequences)"
        if why is not None:
            self._skip(why)
            return None
        pairs = input_ids.size(0) // 2
        group_index = torch.arange(pairs).repeat(2)
        try:
            packed = pack_groups(input_ids, attention_mask, group_index, labels=labels)
        except ValueError as error:
            self._skip(str(error))
            return None
        if not packed.shared_tokens:
            self._skip(NOTHING_SHARED)
            return None
        self._pending[-1] = packed
        self.packed_tokens += packed.packed_tokens
        self.unshared_tokens += packed.unshared_tokens
        device = input_ids.device
        kwargs = dict(kwargs, labels=packed.labels.to(device))
        kwargs.update(packed_model_inputs(packed, module, device))
        return args, kwargs

    def _after(self, module, args, kwargs, output):
        if not kwargs.get("fused_lm_head") or not self._pending:
            return None
        packed = self._pending.pop()
        if packed is None:
            return None
        packed_width = packed.input_ids.size(1)
        for name, value in list(output.items()):
            # Per-token fields of the fused head: (G, L-1), possibly after virtual tokens of prompt-learning PEFT
            if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.size(1) >= packed_width - 1 and \
                    value.size(0) == packed.input_ids.size(0):  # fmt: skip
                output[name] = packed.unpack(value[:, -(packed_width - 1) :])
        return output


def prefix_sharing_usable(requested: bool, model: Any, role: str = "the model") -> bool:
    """Whether to share: `requested` and `model` can take a packed row; when it cannot, one warning says why and
    `role`'s forwards run unshared (same loss, the usual forward)."""
    if not requested or model is None:
        return False
    why = supports_prefix_sharing(model)
    if why is not None:
        logger.warning("prefix_sharing=True but %s: %s", why,
                       "training runs unshared" if role == "the model" else f"{role} runs unshared")  # fmt: skip
    return why is None


def enable_pair_prefix_sharing(trainer: Any) -> PairPrefixSharing | None:
    """Hook a `DPOTrainer` (or subclass) whose `args.prefix_sharing` is set: its policy (`trainer.model`) and separate
    reference (`trainer.ref_model`, checked on its own) run their `fused_lm_head=True` calls prefix-shared. Returns
    the hooks (their `packed_tokens` / `unshared_tokens` count the work), or None when off or when the policy cannot
    take it (logged)."""
    if not getattr(trainer.args, "prefix_sharing", False):
        return None
    if getattr(trainer, "aux_loss_enabled", False):  # TRL asks the policy for router logits on every forward
        logger.warning("prefix_sharing=True but the router's load-balancing loss (router_aux_loss_coef=%s) reads the "
                       "2D attention mask: training runs unshared (router_aux_loss_coef=0 shares)",
                       getattr(trainer, "router_aux_loss_coef", None))  # fmt: skip
        return None
    if not prefix_sharing_usable(True, trainer.model):
        return None
    sharing = PairPrefixSharing()
    sharing.register(trainer.model)
    reference = getattr(trainer, "ref_model", None)
    if prefix_sharing_usable(reference is not None, reference, role="the reference model"):
        sharing.register(reference)
    return sharing


def pooled_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """`(N,)` the position a sequence-classification model of transformers pools each right-padded sequence at:
    its rightmost token that is not `pad_token_id` (so with `pad_token_id == eos_token_id` a trailing EOS is
    skipped), or its last token when the model has no pad token."""
    lengths = attention_mask.sum(1)
    if pad_token_id is None:
        return (lengths - 1).clamp(min=0)
    index = torch.arange(input_ids.size(1), device=input_ids.device)
    return (index * (input_ids != pad_token_id).int()).argmax(-1)


def shared_prefix_scores(model: Any, inputs: dict[str, torch.Tensor], group_index: torch.Tensor) -> torch.Tensor:
    """`(N, num_labels)` scores of a sequence-classification model (a reward model), each read where the model's own
    pooling reads it (`pooled_positions`), computed with one packed forward per group. The shared part is the
    group's whole common prefix (no labels: every token before a sequence's last is context). The per-position
    scores are read from the score head with a forward hook."""
    input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    packed = pack_groups(input_ids, attention_mask, group_index)
    core = _core_model(model)
    if not packed.shared_tokens:
        _warn_once(NOTHING_SHARED)
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    base = core.get_base_model() if hasattr(core, "get_base_model") else core
    head = next((getattr(base, name) for name in ("score", "classifier") if hasattr(base, name)), None)
    if head is None:
        raise ValueError(f"{type(base).__name__} has no `score` or `classifier` head to read per-position scores from")
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    positions = pooled_positions(input_ids.cpu(), attention_mask.cpu(), getattr(config, "pad_token_id", None))
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        model(**packed_model_inputs(packed, model, input_ids.device), use_cache=False)
    finally:
        handle.remove()
    return packed.at_positions(captured[-1], positions)
