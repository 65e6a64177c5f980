"""Evaluation of an aligned policy, in layers:

- `metrics` (pure, typed, no model): per-token log-probabilities from logits, sequence sums and means, the
  implicit reward ``log pi(y|x) - log pi_ref(y|x)``, preference accuracy, win rate, a KL summary, length
  statistics. Each is a few lines of tensor arithmetic, tested against hand-computed numbers.
- `scoring`: log-probabilities of completions under a model and its reference, reward-model scores (one padded-batch
  runner, TRL's tokenization from `trl_ext.tokenization`).
- `generation`: completions sampled from exactly the model's distribution, their lengths, KL on them.
- `instruction_following`: greedy answers to IFEval-style prompts checked by IFEval's checkers, pass rates and the
  paired gain over the base.
- `evaluate_policy` (here) runs them all and returns one flat dict of metrics (what `recipes/evaluate.py` and
  `benchmarks/alignment.py` report); `trl_ext.eval_report` writes it out.

The reference model: for a PEFT model it is the base with the adapters disabled (``model.disable_adapter()``; no
second copy in memory). For a full model pass the base explicitly (`ref_model`).

The metrics' definitions (implicit reward, preference accuracy, win rate, KL) are in `metrics`.

Example:
    >>> from trl_ext import evaluation as ev
    >>> report = ev.evaluate_policy(model, tokenizer, pairs=test_pairs, prompts=test_prompts,
    ...                             score_fn=ev.reward_model_scorer(rm, rm_tokenizer))
    >>> report["metrics"]["preference_accuracy"], report["metrics"]["win_rate"], report["metrics"]["kl_per_token"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch

from trl_ext.rewards.checkers import text_of
from trl_ext.tokenization import Text, pad_token_id

from .generation import Generations, completion_lengths, generate, kl_to_reference
from .instruction_following import answer_constraint_prompts, paired_gain
from .metrics import (
    KLEstimate,
    SequenceLogps,
    describe,
    implicit_reward,
    kl_summary,
    mean_and_spread,
    pairwise_auc,
    preference_accuracy,
    reward_margins,
    sequence_logps,
    token_logps,
    win_rate,
)
from .scoring import (
    CompletionScores,
    PairEvaluation,
    ScoreFn,
    completion_scores,
    completion_scores_from_ids,
    evaluate_pairs,
    has_reference,
    padded_forward,
    reference_model,
    reward_model_accuracy,
    reward_model_scorer,
    reward_scores,
    sequence_token_logps,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

EXAMPLES = 4  # greedy answers shown side by side (base vs trained) in the report

__all__ = [
    "CompletionScores",
    "Generations",
    "KLEstimate",
    "PairEvaluation",
    "answer_constraint_prompts",
    "paired_gain",
    "ScoreFn",
    "SequenceLogps",
    "completion_lengths",
    "completion_scores",
    "completion_scores_from_ids",
    "describe",
    "evaluate_pairs",
    "evaluate_policy",
    "generate",
    "has_reference",
    "implicit_reward",
    "kl_summary",
    "kl_to_reference",
    "mean_and_spread",
    "padded_forward",
    "pairwise_auc",
    "preference_accuracy",
    "reference_model",
    "reward_margins",
    "reward_model_accuracy",
    "reward_model_scorer",
    "reward_scores",
    "sequence_logps",
    "sequence_token_logps",
    "token_logps",
    "win_rate",
]


@torch.no_grad()
def evaluate_policy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    *,
    ref_model: torch.nn.Module | None = None,
    pairs: Sequence[dict[str, Any]] | None = None,
    labelled: Sequence[dict[str, Any]] | None = None,
    prompts: Sequence[Text] | None = None,
    constraint_rows: Sequence[dict[str, Any]] | None = None,
    constraint_max_new_tokens: int = 128,
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
    - `constraint_rows` (prompt, instruction_id_list, kwargs: IFEval-style prompts): greedy answers of the policy and
      of the reference checked by IFEval's checkers (`instruction_following`): prompt-level and instruction-level
      strict pass rates of both, the paired gain and its standard error, answer lengths; a few answers side by side
      in ``report["instruction_following_examples"]``.

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
        metrics.update({f"length_{k}": v for k, v in describe(lengths).items()})
        metrics["finished_fraction"] = sum(policy_gen.finished) / max(len(policy_gen.finished), 1)
        ref_gen = None
        if ref_available:
            kl = kl_to_reference(
                model, policy_gen, ref_model=ref_model, pad_token_id=pad_token_id(tokenizer), batch_size=batch_size, progress=progress
            )  # fmt: skip
            metrics["kl_per_token"] = kl.per_token
            metrics["kl_per_sequence"] = kl.per_sequence
            with reference_model(model, ref_model) as ref:
                ref_gen = generate(ref, tokenizer, prompts, seed=seed + 1, **gen_kwargs)
            ref_lengths = completion_lengths(ref_gen, length_unit)
            dists["length_before"] = [float(x) for x in ref_lengths]
            metrics.update({f"reference_length_{k}": v for k, v in describe(ref_lengths).items()})
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
    report = {"metrics": metrics, "distributions": dists, "samples": samples}
    if constraint_rows:
        report["instruction_following_examples"] = _instruction_following(
            model, tokenizer, ref_model, list(constraint_rows), metrics,
            max_new_tokens=constraint_max_new_tokens, batch_size=batch_size, progress=progress,
        )  # fmt: skip
    return report


def _instruction_following(model, tokenizer, ref_model, rows, metrics, **kwargs) -> list[dict[str, Any]]:
    """Greedy pass rates of the policy (and the reference), written into `metrics`; a few answers side by side."""
    trained = answer_constraint_prompts(model, tokenizer, rows, desc="greedy answers (trained)", **kwargs)
    metrics.update({f"if_{k}": float(v) for k, v in trained.summary().items()})
    base = None
    if has_reference(model, ref_model):
        with reference_model(model, ref_model) as ref:
            base = answer_constraint_prompts(ref, tokenizer, rows, desc="greedy answers (base)", **kwargs)
        metrics.update({f"reference_if_{k}": float(v) for k, v in base.summary().items() if k != "prompts"})
        gain = paired_gain(base.prompt_strict, trained.prompt_strict)
        metrics["if_gain"], metrics["if_paired_se"] = gain["gain"], gain["paired_se"]
    examples = []
    for i, row in enumerate(rows[:EXAMPLES]):
        example = {"prompt": text_of(row["prompt"]), "trained": trained.completions[i], "trained_followed": all(trained.followed[i])}  # fmt: skip
        if base is not None:
            example.update(base=base.completions[i], base_followed=all(base.followed[i]))
        examples.append(example)
    return examples
