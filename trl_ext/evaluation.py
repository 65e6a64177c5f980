"""Evaluation of an aligned policy: pure metric functions on tensors, and model-level helpers built on them.

Two layers:

- **Metrics** (pure, typed, no model): per-token log-probabilities from logits, sequence sums and means, the
  implicit reward ``log pi(y|x) - log pi_ref(y|x)``, preference accuracy, win rate, a per-token KL estimate, length
  summaries. Each is a few lines of tensor arithmetic, tested against hand-computed numbers.
- **Model helpers**: log-probabilities of completions under a model (batched, with TRL's tokenization), the same under
  the reference, reward-model scores, batched generation, and `evaluate_policy`, which runs them all and returns one
  flat dict of metrics (what `recipes/evaluate.py` and `benchmarks/alignment.py` report).

The reference model: for a PEFT model it is the base with the adapters disabled (``model.disable_adapter()``; no
second copy in memory). For a full model pass the base explicitly (`ref_model`).

Definitions (as TRL's trainers use them):

- implicit reward: ``r(x, y) = log pi(y|x) - log pi_ref(y|x)``, summed over the completion tokens (EOS included);
  the per-token mean divides by the completion's token count (what IPO/ORPO-style length normalization uses).
- preference accuracy on pairs: the fraction of pairs whose chosen completion gets the higher score; a tie counts
  one half (so a model equal to its reference scores exactly 0.5).
- win rate: the fraction of prompts where the policy's generation scores higher than the reference's; ties one half.
- KL to the reference: on the policy's own samples (temperature 1, no top-k/top-p), the mean over generated tokens
  of ``log pi(y_t|...) - log pi_ref(y_t|...)`` (the "k1" estimator, unbiased for KL(pi || pi_ref) per sequence;
  "k3" = ``exp(-d) - 1 + d`` with ``d = log pi - log pi_ref`` is also unbiased and never negative).

Example:
    >>> from trl_ext import evaluation as ev
    >>> report = ev.evaluate_policy(model, tokenizer, pairs=test_pairs, prompts=test_prompts,
    ...                             score_fn=ev.reward_model_scorer(rm, rm_tokenizer))
    >>> report["metrics"]["preference_accuracy"], report["metrics"]["win_rate"], report["metrics"]["kl_per_token"]
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

Text = str | list[dict[str, Any]]  # a plain string, or TRL's conversational form (a list of chat messages)
ScoreFn = Callable[[Sequence[Text], Sequence[str]], Sequence[float]]  # (prompts, completions) -> one score each
KLEstimator = Literal["k1", "k3"]


# ================================================================================================ pure metrics
def token_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """Log-probability of each label under `logits`: ``log_softmax(logits)[..., label]``.

    `logits` (B, T, V) must already be aligned with `labels` (B, T) (i.e. logits of position t predict label t).
    Computed in float32. Returns (B, T).
    """
    logps = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    return logps.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)  # (B, T)


@dataclass(frozen=True)
class SequenceLogps:
    """Per-sequence sum and per-token mean of token log-probabilities over a mask, and the token count."""

    sum: Tensor  # (B,)
    mean: Tensor  # (B,)
    count: Tensor  # (B,)


def sequence_logps(token_logps: Tensor, mask: Tensor) -> SequenceLogps:
    """Sum and mean over the positions where `mask` (B, T) is true. An empty mask gives sum 0 and mean 0."""
    mask = mask.to(token_logps.dtype)
    total = (token_logps * mask).sum(-1)  # (B,)
    count = mask.sum(-1)  # (B,)
    return SequenceLogps(sum=total, mean=total / count.clamp(min=1.0), count=count)


def implicit_rewards(policy_logps: Tensor, ref_logps: Tensor) -> Tensor:
    """DPO's implicit reward (without beta): ``log pi(y|x) - log pi_ref(y|x)``, elementwise. (B,) -> (B,)."""
    return policy_logps - ref_logps


def reward_margins(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Per-pair margin ``score(chosen) - score(rejected)``. (B,) -> (B,)."""
    return chosen - rejected


def preference_accuracy(chosen: Tensor, rejected: Tensor, tie: float = 0.5) -> float:
    """Fraction of pairs with ``chosen > rejected``; a tie counts `tie` (default one half). NaN for no pairs."""
    if chosen.numel() == 0:
        return float("nan")
    wins = (chosen > rejected).float() + tie * (chosen == rejected).float()
    return wins.mean().item()


def win_rate(policy_scores: Tensor, reference_scores: Tensor, tie: float = 0.5) -> float:
    """Fraction of prompts where the policy's generation outscores the reference's; a tie counts `tie`."""
    return preference_accuracy(policy_scores, reference_scores, tie=tie)


def pairwise_auc(positive: Tensor, negative: Tensor, tie: float = 0.5) -> float:
    """Probability that a random `positive` score exceeds a random `negative` one (ties `tie`): the preference
    accuracy over all (good, bad) pairs of unpaired, labelled data (KTO's `binary` shape)."""
    if positive.numel() == 0 or negative.numel() == 0:
        return float("nan")
    diff = positive[:, None] - negative[None, :]  # (P, N)
    return ((diff > 0).float() + tie * (diff == 0).float()).mean().item()


@dataclass(frozen=True)
class KLEstimate:
    """KL(pi || pi_ref) estimated on samples from pi: per token (pooled over all tokens) and per sequence."""

    per_token: float
    per_sequence: float
    per_sequence_values: Tensor  # (B,)


def kl_estimate(policy_logps: Tensor, ref_logps: Tensor, mask: Tensor, estimator: KLEstimator = "k1") -> KLEstimate:
    """KL of the policy to the reference from the log-probabilities (B, T) both give the policy's sampled tokens.

    k1: ``d = log pi - log pi_ref`` per token (unbiased; single values can be negative); k3: ``exp(-d) - 1 + d``
    (unbiased, never negative; Schulman 2020, "Approximating KL divergence"). `per_token` pools all masked tokens:
    ``sum(d * mask) / sum(mask)``; `per_sequence` is the mean over sequences of the summed estimate.
    """
    d = policy_logps.float() - ref_logps.float()  # (B, T)
    if estimator == "k1":
        per_token_values = d
    elif estimator == "k3":
        per_token_values = torch.expm1(-d) + d
    else:
        raise ValueError(f"estimator must be 'k1' or 'k3', got {estimator!r}")
    mask = mask.float()
    per_sequence = (per_token_values * mask).sum(-1)  # (B,)
    tokens = mask.sum()
    return KLEstimate(
        per_token=(per_sequence.sum() / tokens).item() if tokens > 0 else float("nan"),
        per_sequence=per_sequence.mean().item() if per_sequence.numel() else float("nan"),
        per_sequence_values=per_sequence,
    )


def summarize(values: Sequence[float] | Tensor) -> dict[str, float]:
    """mean, std (population), min, median, max of `values` (all NaN when empty)."""
    xs = [float(v) for v in (values.tolist() if isinstance(values, Tensor) else values)]
    if not xs:
        nan = float("nan")
        return {"mean": nan, "std": nan, "min": nan, "median": nan, "max": nan}
    return {
        "mean": statistics.fmean(xs),
        "std": statistics.pstdev(xs),
        "min": min(xs),
        "median": statistics.median(xs),
        "max": max(xs),
    }


def mean_and_spread(values: Sequence[float]) -> dict[str, float]:
    """Across seeds: mean, sample standard deviation (Bessel; 0 for one value), min, max and n. NaNs are left out."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {
        "mean": statistics.fmean(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
    }


# ============================================================================================= tokenization
def _is_conversational(value: Any) -> bool:
    return isinstance(value, list) and (not value or isinstance(value[0], dict))


def _as_message_list(completion: Text) -> list[dict[str, Any]]:
    return completion if _is_conversational(completion) else [{"role": "assistant", "content": completion}]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Text) -> list[int]:
    """Token ids of a prompt as a generation context: the chat template with the generation prompt for a message list,
    else the plain text (as TRL tokenizes it)."""
    if _is_conversational(prompt):
        return list(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"])  # fmt: skip
    return list(tokenizer(text=prompt)["input_ids"])


def encode_completion(
    tokenizer: PreTrainedTokenizerBase, prompt: Text, completion: Text
) -> tuple[list[int], list[int]]:
    """(prompt_ids, completion_ids) exactly as TRL 1.16's `DPOTrainer._prepare_dataset` builds them.

    Plain text: ``tokenize(prompt)`` and ``tokenize(prompt + completion + eos)`` (EOS appended unless present).
    Conversational: the chat template of the prompt (with the generation prompt) and of prompt + completion (a plain
    string completion becomes one assistant message). The completion starts where the two token lists diverge.
    """
    from trl.data_utils import common_prefix_length

    if _is_conversational(prompt):
        prompt_ids = encode_prompt(tokenizer, prompt)
        full = tokenizer.apply_chat_template(prompt + _as_message_list(completion), tokenize=True, return_dict=True)
        full_ids = list(full["input_ids"])
    else:
        if _is_conversational(completion):  # plain prompt, chat-form completion: use the message text
            completion = "".join(m["content"] for m in completion)
        eos = tokenizer.eos_token or ""
        text = completion if completion.endswith(eos) else completion + eos
        prompt_ids = list(tokenizer(text=prompt)["input_ids"])
        full_ids = list(tokenizer(text=prompt + text)["input_ids"])
    start = common_prefix_length(prompt_ids, full_ids)
    return full_ids[:start], full_ids[start:]


# ================================================================================================ model helpers
def _progress(iterable, desc: str, total: int | None = None, enabled: bool = True):
    """tqdm over `iterable`, quiet when disabled or when TQDM_DISABLE is set."""
    if not enabled or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes"):
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)


def _device(model: torch.nn.Module) -> torch.device:
    try:
        return next(p.device for p in model.parameters())
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


def _batches(order: list[int], batch_size: int) -> Iterator[list[int]]:
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


@torch.no_grad()
def sequence_token_logps(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int = 0,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
    desc: str = "log-probs",
) -> list[Tensor]:
    """Log-probability of every completion token given its prompt, one 1-D float tensor per sequence.

    Sequences are right-padded in batches of similar length (sorted, then put back in order). With `max_length`, the
    prompt is cut from the left so prompt + completion fits (the completion is kept whole where it can be).
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    device = _device(model)
    seqs: list[tuple[list[int], int]] = []
    for p, c in zip(prompt_ids, completion_ids):
        p, c = list(p), list(c)
        if max_length is not None and len(p) + len(c) > max_length:
            keep = max(max_length - len(c), 1)
            p = p[-keep:]
            c = c[: max_length - len(p)]
        seqs.append((p + c, len(p)))
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    out: list[Tensor | None] = [None] * len(seqs)
    was_training = model.training
    model.eval()
    try:
        n_batches = math.ceil(len(order) / batch_size)
        for idx in _progress(_batches(order, batch_size), desc, total=n_batches, enabled=progress):
            width = max(len(seqs[i][0]) for i in idx)
            ids = torch.full((len(idx), width), pad_token_id, dtype=torch.long)
            attn = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                s = seqs[i][0]
                ids[row, : len(s)] = torch.tensor(s)
                attn[row, : len(s)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits  # (b, T, V)
            lps = token_logps(logits[:, :-1], ids[:, 1:].to(device)).cpu()  # (b, T-1): position t predicts t+1
            for row, i in enumerate(idx):
                full, n_prompt = seqs[i]
                out[i] = lps[row, max(n_prompt - 1, 0) : len(full) - 1].clone()
    finally:
        model.train(was_training)
    return [t if t is not None else torch.zeros(0) for t in out]


def _pad_stack(rows: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Right-pad 1-D tensors into (B, T) values and a (B, T) boolean mask."""
    width = max((len(r) for r in rows), default=0)
    values = torch.zeros((len(rows), width))
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        values[i, : len(r)] = r
        mask[i, : len(r)] = True
    return values, mask


@contextlib.contextmanager
def reference_model(model: torch.nn.Module, ref_model: torch.nn.Module | None = None) -> Iterator[torch.nn.Module]:
    """The reference to compare `model` with: `ref_model` if given, else (PEFT) `model` with its adapters disabled.

    A full model without `ref_model` raises: there is no reference to compare it with.
    """
    if ref_model is not None:
        yield ref_model
        return
    if hasattr(model, "disable_adapter") and hasattr(model, "peft_config"):
        with model.disable_adapter():
            yield model
        return
    raise ValueError(
        "no reference model: pass ref_model (the base it was trained from), or a PEFT model whose base with the "
        "adapters disabled is the reference"
    )


def has_reference(model: torch.nn.Module, ref_model: torch.nn.Module | None = None) -> bool:
    return ref_model is not None or (hasattr(model, "disable_adapter") and hasattr(model, "peft_config"))


@dataclass
class CompletionScores:
    """Log-probabilities of completions under the policy and (if available) the reference: sums, means, counts."""

    policy: SequenceLogps
    reference: SequenceLogps | None = None

    @property
    def implicit_reward(self) -> Tensor:  # (N,)
        if self.reference is None:
            raise ValueError("no reference log-probabilities")
        return implicit_rewards(self.policy.sum, self.reference.sum)

    @property
    def implicit_reward_mean(self) -> Tensor:  # (N,): per-token mean of the log-ratio
        if self.reference is None:
            raise ValueError("no reference log-probabilities")
        return implicit_rewards(self.policy.mean, self.reference.mean)


def completion_scores(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Text],
    completions: Sequence[Text],
    *,
    ref_model: torch.nn.Module | None = None,
    with_reference: bool = True,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
) -> CompletionScores:
    """log pi(y|x) of each completion (sum and per-token mean, EOS included) and, with `with_reference` and a
    reference available (`ref_model`, or a PEFT model's base), log pi_ref(y|x); their difference is the implicit reward
    (`CompletionScores.implicit_reward`, `.implicit_reward_mean`)."""
    encoded = [encode_completion(tokenizer, p, c) for p, c in zip(prompts, completions)]
    prompt_ids = [e[0] for e in encoded]
    completion_ids = [e[1] for e in encoded]
    return completion_scores_from_ids(
        model,
        prompt_ids,
        completion_ids,
        pad_token_id=_pad_id(tokenizer),
        ref_model=ref_model,
        with_reference=with_reference,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
    )


def completion_scores_from_ids(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int = 0,
    ref_model: torch.nn.Module | None = None,
    with_reference: bool = True,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
) -> CompletionScores:
    """`completion_scores` on token ids (e.g. a model's own generations, which need no re-tokenization)."""
    kwargs = dict(pad_token_id=pad_token_id, batch_size=batch_size, max_length=max_length, progress=progress)
    values, mask = _pad_stack(
        sequence_token_logps(model, prompt_ids, completion_ids, desc="policy log-probs", **kwargs)
    )
    policy = sequence_logps(values, mask)
    reference = None
    if with_reference and has_reference(model, ref_model):
        with reference_model(model, ref_model) as ref:
            ref_rows = sequence_token_logps(ref, prompt_ids, completion_ids, desc="reference log-probs", **kwargs)
        reference = sequence_logps(_pad_stack(ref_rows)[0], mask)
    return CompletionScores(policy=policy, reference=reference)


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad if pad is not None else 0)


@dataclass
class PairEvaluation:
    """A model's scores of held-out (prompt, chosen, rejected) pairs, and the accuracies they give."""

    chosen: CompletionScores
    rejected: CompletionScores

    def metrics(self) -> dict[str, float]:
        """- `preference_accuracy`: implicit reward (summed log-ratio) of chosen > rejected (needs a reference);
        - `preference_accuracy_mean`: the same with the per-token mean log-ratio;
        - `likelihood_accuracy`: the policy alone, per-token mean log-probability of chosen > rejected (no reference;
          ORPO's notion of reward; also meaningful before training);
        - `reference_likelihood_accuracy`: the same for the reference (the starting point);
        - `reward_margin`: mean implicit-reward margin (nats); `chosen_reward` / `rejected_reward`: their means."""
        c, r = self.chosen, self.rejected
        out = {
            "n_pairs": float(c.policy.sum.numel()),
            "likelihood_accuracy": preference_accuracy(c.policy.mean, r.policy.mean),
        }
        if c.reference is not None and r.reference is not None:
            margins = reward_margins(c.implicit_reward, r.implicit_reward)
            out.update(
                preference_accuracy=preference_accuracy(c.implicit_reward, r.implicit_reward),
                preference_accuracy_mean=preference_accuracy(c.implicit_reward_mean, r.implicit_reward_mean),
                reference_likelihood_accuracy=preference_accuracy(c.reference.mean, r.reference.mean),
                reward_margin=margins.mean().item(),
                chosen_reward=c.implicit_reward.mean().item(),
                rejected_reward=r.implicit_reward.mean().item(),
            )
        return out

    def margins(self) -> dict[str, list[float]]:
        """Per pair: the policy's and the reference's log-likelihood margin (sum over tokens), for histograms.

        ``after - before`` is the implicit-reward margin."""
        out = {"after": reward_margins(self.chosen.policy.sum, self.rejected.policy.sum).tolist()}
        if self.chosen.reference is not None and self.rejected.reference is not None:
            out["before"] = reward_margins(self.chosen.reference.sum, self.rejected.reference.sum).tolist()
        return out


def evaluate_pairs(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[dict[str, Any]],
    *,
    ref_model: torch.nn.Module | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
) -> PairEvaluation:
    """Score the chosen and rejected completion of each `{"prompt", "chosen", "rejected"}` row (policy and reference)."""
    prompts = [p["prompt"] for p in pairs]
    kwargs = dict(ref_model=ref_model, batch_size=batch_size, max_length=max_length, progress=progress)
    return PairEvaluation(
        chosen=completion_scores(model, tokenizer, prompts, [p["chosen"] for p in pairs], **kwargs),
        rejected=completion_scores(model, tokenizer, prompts, [p["rejected"] for p in pairs], **kwargs),
    )


def preference_accuracy_of_model(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[dict[str, Any]],
    *,
    ref_model: torch.nn.Module | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> float:
    """Held-out preference accuracy of the implicit reward log pi/pi_ref (summed over completion tokens)."""
    pe = evaluate_pairs(model, tokenizer, pairs, ref_model=ref_model, batch_size=batch_size, progress=progress)
    return pe.metrics()["preference_accuracy"]


# ----------------------------------------------------------------------------------------------- reward models
@torch.no_grad()
def reward_scores(
    reward_model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Text],
    completions: Sequence[Text],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
) -> Tensor:
    """Scalar score of each (prompt, completion) by a sequence-classification reward model, formatted as TRL 1.16's
    `RewardTrainer` trains it (prompt + completion + EOS for plain text; the chat template for messages). (N,)."""
    device = _device(reward_model)
    seqs = []
    for p, c in zip(prompts, completions):
        prompt_ids, completion_ids = encode_completion(tokenizer, p, c)
        ids = prompt_ids + completion_ids
        seqs.append(ids[-max_length:] if max_length else ids)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.zeros(len(seqs))
    pad = _pad_id(tokenizer)
    was_training = reward_model.training
    reward_model.eval()
    try:
        n_batches = math.ceil(len(order) / batch_size)
        for idx in _progress(_batches(order, batch_size), "reward scores", total=n_batches, enabled=progress):
            width = max(len(seqs[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            attn = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
                attn[row, : len(seqs[i])] = 1
            logits = reward_model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits  # (b, 1)
            out[idx] = logits[:, 0].float().cpu()
    finally:
        reward_model.train(was_training)
    return out


def reward_model_scorer(
    reward_model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, *, batch_size: int = 16, progress: bool = True
) -> ScoreFn:
    """A `ScoreFn` that scores (prompts, completions) with `reward_model`."""

    def score(prompts: Sequence[Text], completions: Sequence[str]) -> list[float]:
        return reward_scores(
            reward_model, tokenizer, prompts, completions, batch_size=batch_size, progress=progress
        ).tolist()

    return score


def reward_model_accuracy(
    reward_model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[dict[str, Any]],
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, float]:
    """A reward model's pairwise accuracy on held-out pairs (ties one half) and its mean margin."""
    prompts = [p["prompt"] for p in pairs]
    kwargs = dict(batch_size=batch_size, progress=progress)
    chosen = reward_scores(reward_model, tokenizer, prompts, [p["chosen"] for p in pairs], **kwargs)
    rejected = reward_scores(reward_model, tokenizer, prompts, [p["rejected"] for p in pairs], **kwargs)
    return {
        "reward_model_accuracy": preference_accuracy(chosen, rejected),
        "reward_model_margin": reward_margins(chosen, rejected).mean().item() if len(pairs) else float("nan"),
    }


# ------------------------------------------------------------------------------------------------- generation
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
    top_p: float = 1.0,
    top_k: int = 0,
    num_return_sequences: int = 1,
    seed: int | None = 0,
    progress: bool = True,
) -> Generations:
    """Batched generation (left padding) of completions for `prompts`.

    Defaults sample from the model's full distribution (temperature 1, no top-k/top-p), which is what a KL estimate on
    the policy's own samples needs. `seed` makes sampling reproducible (torch's RNG is forked, not disturbed).
    """
    device = _device(model)
    eos = tokenizer.eos_token_id
    pad = _pad_id(tokenizer)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    expanded = [(i, ids) for i, ids in enumerate(encoded) for _ in range(num_return_sequences)]
    completions: list[list[int]] = [[] for _ in expanded]
    finished = [False] * len(expanded)
    order = sorted(range(len(expanded)), key=lambda k: len(expanded[k][1]))
    gen_kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos)
    if do_sample:
        gen_kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k)
    else:
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    was_training = model.training
    model.eval()
    rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else []) if seed is not None else None
    try:
        with rng if rng is not None else contextlib.nullcontext():
            if seed is not None:
                torch.manual_seed(seed)
            n_batches = math.ceil(len(order) / batch_size)
            for idx in _progress(_batches(order, batch_size), "generating", total=n_batches, enabled=progress):
                width = max(len(expanded[k][1]) for k in idx)
                ids = torch.full((len(idx), width), pad, dtype=torch.long)
                attn = torch.zeros((len(idx), width), dtype=torch.long)
                for row, k in enumerate(idx):
                    p = expanded[k][1]
                    ids[row, width - len(p) :] = torch.tensor(p)
                    attn[row, width - len(p) :] = 1
                output = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), **gen_kwargs)
                new = output[:, width:].cpu()
                for row, k in enumerate(idx):
                    tokens = new[row].tolist()
                    if eos is not None and eos in tokens:
                        tokens = tokens[: tokens.index(eos) + 1]
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
    return kl_estimate(pol, _pad_stack(rows)[0], mask, estimator=estimator)


def completion_lengths(generations: Generations, unit: Literal["tokens", "words", "chars"] = "tokens") -> list[int]:
    """Length of each generated completion: tokens (EOS excluded), whitespace words, or characters."""
    if unit == "tokens":
        return [len(ids) - (1 if done else 0) for ids, done in zip(generations.completion_ids, generations.finished)]
    if unit == "words":
        return [len(text.split()) for text in generations.completions]
    if unit == "chars":
        return [len(text) for text in generations.completions]
    raise ValueError(f"unit must be tokens, words or chars, got {unit!r}")


# ============================================================================================== one-call report
@torch.no_grad()
def evaluate_policy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    *,
    ref_model: torch.nn.Module | None = None,
    pairs: Sequence[dict[str, Any]] | None = None,
    labelled: Sequence[dict[str, Any]] | None = None,
    prompts: Sequence[Text] | None = None,
    score_fn: ScoreFn | None = None,
    reward_model: torch.nn.Module | None = None,
    reward_tokenizer: PreTrainedTokenizerBase | None = None,
    max_new_tokens: int = 64,
    num_samples: int = 1,
    batch_size: int = 16,
    max_length: int | None = None,
    length_unit: Literal["tokens", "words", "chars"] = "tokens",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Everything `recipes/evaluate.py` reports, for a policy and its reference.

    - `pairs` (prompt/chosen/rejected): implicit-reward preference accuracy (sum and per-token mean), likelihood
      accuracy of the policy and of the reference, mean margin; with a reward model also its pairwise accuracy.
    - `labelled` (prompt/completion/label, KTO's columns): `label_auc`, the probability that a good completion gets a
      higher implicit reward than a bad one (preference accuracy over all good x bad pairs), and the mean reward of each.
    - `prompts`: `num_samples` generations per prompt from the policy and from the reference (temperature 1);
      length mean/distribution for both; KL(pi || pi_ref) on the policy's samples; with a `score_fn` (or a
      `reward_model`, which makes one) the mean score of both and the policy's win rate over the reference.

    Returns ``{"metrics": {flat name -> number}, "distributions": {name -> list}, "samples": [...]}``; the
    distributions feed the before/after histograms of `trl_ext.eval_report`.
    """
    metrics: dict[str, float] = {}
    dists: dict[str, list[float]] = {}
    samples: list[dict[str, Any]] = []
    if reward_model is not None and score_fn is None:
        score_fn = reward_model_scorer(reward_model, reward_tokenizer or tokenizer, batch_size=batch_size, progress=progress)  # fmt: skip
    ref_available = has_reference(model, ref_model)

    if pairs:
        pe = evaluate_pairs(
            model,
            tokenizer,
            pairs,
            ref_model=ref_model,
            batch_size=batch_size,
            max_length=max_length,
            progress=progress,
        )
        metrics.update(pe.metrics())
        margins = pe.margins()
        dists["margin_after"] = margins["after"]
        if "before" in margins:
            dists["margin_before"] = margins["before"]
            dists["implicit_reward_margin"] = [a - b for a, b in zip(margins["after"], margins["before"])]
        if reward_model is not None:
            metrics.update(
                reward_model_accuracy(
                    reward_model, reward_tokenizer or tokenizer, pairs, batch_size=batch_size, progress=progress
                )
            )

    if labelled:
        scores = completion_scores(
            model,
            tokenizer,
            [r["prompt"] for r in labelled],
            [r["completion"] for r in labelled],
            ref_model=ref_model,
            batch_size=batch_size,
            max_length=max_length,
            progress=progress,
        )
        good = torch.tensor([bool(r["label"]) for r in labelled])
        rewards = scores.implicit_reward if scores.reference is not None else scores.policy.mean
        metrics["n_labelled"] = float(len(labelled))
        metrics["label_auc"] = pairwise_auc(rewards[good], rewards[~good])
        metrics["good_reward"] = rewards[good].mean().item() if good.any() else float("nan")
        metrics["bad_reward"] = rewards[~good].mean().item() if (~good).any() else float("nan")

    if prompts:
        gen_kwargs = dict(
            max_new_tokens=max_new_tokens, batch_size=batch_size, num_return_sequences=num_samples, progress=progress
        )
        policy_gen = generate(model, tokenizer, prompts, seed=seed, **gen_kwargs)
        lengths = completion_lengths(policy_gen, length_unit)
        dists["length_after"] = [float(x) for x in lengths]
        metrics.update({f"length_{k}": v for k, v in summarize(lengths).items()})
        metrics["finished_fraction"] = sum(policy_gen.finished) / max(len(policy_gen.finished), 1)
        ref_gen = None
        if ref_available:
            kl = kl_to_reference(
                model, policy_gen, ref_model=ref_model, pad_token_id=_pad_id(tokenizer), batch_size=batch_size, progress=progress
            )  # fmt: skip
            metrics["kl_per_token"] = kl.per_token
            metrics["kl_per_sequence"] = kl.per_sequence
            with reference_model(model, ref_model) as ref:
                ref_gen = generate(ref, tokenizer, prompts, seed=seed + 1, **gen_kwargs)
            ref_lengths = completion_lengths(ref_gen, length_unit)
            dists["length_before"] = [float(x) for x in ref_lengths]
            metrics.update({f"reference_length_{k}": v for k, v in summarize(ref_lengths).items()})
        if score_fn is not None:
            policy_scores = torch.tensor(list(score_fn(policy_gen.prompts, policy_gen.completions)), dtype=torch.float)
            metrics["score_mean"] = policy_scores.mean().item()
            dists["score_after"] = policy_scores.tolist()
            if ref_gen is not None:
                ref_scores = torch.tensor(list(score_fn(ref_gen.prompts, ref_gen.completions)), dtype=torch.float)
                metrics["reference_score_mean"] = ref_scores.mean().item()
                metrics["win_rate"] = win_rate(policy_scores, ref_scores)
                dists["score_before"] = ref_scores.tolist()
        for i in range(min(8, len(policy_gen.completions))):
            row = {"prompt": policy_gen.prompts[i], "policy": policy_gen.completions[i]}
            if ref_gen is not None:
                row["reference"] = ref_gen.completions[i]
            samples.append(row)
    return {"metrics": metrics, "distributions": dists, "samples": samples}


# ================================================================================================ loading
def load_policy(
    model_name_or_path: str,
    base_model_name_or_path: str | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    load_in_4bit: bool = False,
    device: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedModel | None, PreTrainedTokenizerBase]:
    """Load a policy for evaluation: ``(model, ref_model, tokenizer)``.

    - A LoRA adapter folder (`adapter_config.json`): the base (`base_model_name_or_path`, else the adapter's own
      `base_model_name_or_path`) with the adapter on top; the reference is that base with the adapter disabled, so
      `ref_model` is None (no second copy).
    - A full model: loaded as is; the reference is `base_model_name_or_path` loaded separately (None if not given: the
      metrics that need a reference are then left out).

    `trl-ext/tiny-llama` resolves to the locally built tiny model. `load_in_4bit` quantizes the base(s) to NF4 (GPU).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ext.tiny import resolve_model_name

    def torch_dtype(value):
        if value in (None, "auto") or isinstance(value, torch.dtype):
            return value
        return getattr(torch, value)

    kwargs: dict[str, Any] = dict(dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code)
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        compute = torch_dtype(dtype) if dtype not in (None, "auto") else torch.bfloat16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True,
        )
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": 0}
    path = resolve_model_name(model_name_or_path)
    is_adapter = os.path.isfile(os.path.join(path, "adapter_config.json"))
    ref_model = None
    if is_adapter:
        from peft import PeftConfig, PeftModel

        base_name = base_model_name_or_path or PeftConfig.from_pretrained(path).base_model_name_or_path
        if not base_name:
            raise ValueError(f"{path}: adapter without a base model; pass base_model_name_or_path")
        base = AutoModelForCausalLM.from_pretrained(resolve_model_name(base_name), **kwargs)
        model = PeftModel.from_pretrained(base, path)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if base_model_name_or_path:
            ref_model = AutoModelForCausalLM.from_pretrained(resolve_model_name(base_model_name_or_path), **kwargs)
    tok_path = (
        path
        if os.path.isfile(os.path.join(path, "tokenizer_config.json"))
        else resolve_model_name(base_model_name_or_path or path)
    )
    tokenizer = AutoTokenizer.from_pretrained(tok_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device is not None and not load_in_4bit:
        model.to(device)
        if ref_model is not None:
            ref_model.to(device)
    model.eval()
    if ref_model is not None:
        ref_model.eval()
    return model, ref_model, tokenizer


def load_reward_model(
    model_name_or_path: str,
    base_model_name_or_path: str | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A sequence-classification reward model (one score): a full model, or a SEQ_CLS LoRA adapter on its base."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trl_ext.tiny import resolve_model_name

    kwargs: dict[str, Any] = dict(
        num_labels=1, trust_remote_code=trust_remote_code, dtype=getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    )  # fmt: skip
    path = resolve_model_name(model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if os.path.isfile(os.path.join(path, "adapter_config.json")):
        from peft import PeftConfig, PeftModel

        base_name = base_model_name_or_path or PeftConfig.from_pretrained(path).base_model_name_or_path
        base = AutoModelForSequenceClassification.from_pretrained(resolve_model_name(base_name), **kwargs)
        base.config.pad_token_id = tokenizer.pad_token_id
        model = PeftModel.from_pretrained(base, path)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    model.config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer
