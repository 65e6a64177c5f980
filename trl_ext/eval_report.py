"""Reports of an evaluation: metrics.json, metrics.md (a Markdown table), PNG histograms, and the model-card section.

Plots use matplotlib's Agg backend (no display needed; `pip install trl-ext[plots]`). Each histogram overlays
*before* (the reference: the base model, adapters off) and *after* (the trained policy):

- ``reward_margin.png``: per evaluation pair, the implicit-reward margin (the policy's log-likelihood margin minus the
  reference's), the distribution whose mean is the metric ``reward_margin``;
- ``likelihood_margin.png``: per pair, the log-likelihood margin ``log pi(chosen) - log pi(rejected)`` of the reference
  and of the policy, drawn as outlines so that neither hides the other;
- ``length.png``: the length of generations of the reference and of the policy on the evaluation prompts;
- ``score.png``: reward-model (or scoring-function) scores of those generations, when there is a scorer.

Example:
    >>> from trl_ext import evaluation, eval_report
    >>> report = evaluation.evaluate_policy(model, tokenizer, pairs=pairs, prompts=prompts)
    >>> files = eval_report.write_report(report, "eval-out")
    >>> eval_report.update_model_card("my-adapter/README.md", report["metrics"], files["figures"])
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# metric name -> what it means (rows of the Markdown table, in this order; unknown metrics follow, sorted)
DESCRIPTIONS: dict[str, str] = {
    "preference_accuracy": "held-out pairs: implicit reward log pi/pi_ref (sum) ranks chosen above rejected",
    "preference_accuracy_mean": "the same with the per-token mean log-ratio",
    "likelihood_accuracy": "policy alone: mean token log-prob of chosen > rejected",
    "reference_likelihood_accuracy": "reference alone (before training): mean token log-prob of chosen > rejected",
    "reward_margin": "mean implicit-reward margin, chosen - rejected (nats)",
    "chosen_reward": "mean implicit reward of chosen completions (nats)",
    "rejected_reward": "mean implicit reward of rejected completions (nats)",
    "label_auc": "labelled data: P(implicit reward of a good completion > a bad one)",
    "good_reward": "mean implicit reward of good completions (nats)",
    "bad_reward": "mean implicit reward of bad completions (nats)",
    "reward_model_accuracy": "reward model: pairwise accuracy on the held-out pairs",
    "reward_model_margin": "reward model: mean score margin, chosen - rejected",
    "win_rate": "policy generation scores above the reference generation (ties 1/2)",
    "score_mean": "mean score of policy generations",
    "reference_score_mean": "mean score of reference generations",
    "kl_per_token": "KL(pi || pi_ref) per generated token, on the policy's samples (nats)",
    "kl_per_sequence": "KL(pi || pi_ref) per generation (nats)",
    "length_mean": "mean length of policy generations",
    "reference_length_mean": "mean length of reference generations",
    "length_median": "median length of policy generations",
    "reference_length_median": "median length of reference generations",
    "finished_fraction": "policy generations that ended with EOS",
    "n_pairs": "held-out pairs evaluated",
    "if_prompt_strict": "constraint prompts: answers (greedy) following every constraint (IFEval prompt-level strict)",
    "reference_if_prompt_strict": "the same for the reference (before training)",
    "if_gain": "prompt-level strict pass rate, trained - reference, over the same prompts",
    "if_paired_se": "standard error of that paired gain",
    "if_instruction_strict": "constraint prompts: constraints followed, of all (IFEval instruction-level strict)",
    "reference_if_instruction_strict": "the same for the reference",
    "if_mean_length_tokens": "mean length of the greedy answers (tokens)",
    "reference_if_mean_length_tokens": "the same for the reference",
    "if_cut_at_max_new_tokens": "greedy answers cut at the token limit (each counts as following nothing)",
    "reference_if_cut_at_max_new_tokens": "the same for the reference",
    "if_prompts": "constraint prompts evaluated",
}


def format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.0f}" if value.is_integer() and abs(value) < 1e6 else f"{value:.4g}"
    return str(value)


HELD_OUT = "held-out pairs"


def markdown_table(
    metrics: Mapping[str, Any], descriptions: Mapping[str, str] = DESCRIPTIONS, pairs_label: str = HELD_OUT
) -> str:
    """A `| metric | value | meaning |` table: the described metrics first (in `DESCRIPTIONS` order), then the rest.
    `pairs_label` says what the evaluation pairs are ("held-out pairs" only when the run did not train on them)."""
    descriptions = {k: v.replace(HELD_OUT, pairs_label) for k, v in descriptions.items()}
    known = [k for k in descriptions if k in metrics]
    rest = sorted(k for k in metrics if k not in descriptions)
    lines = ["| metric | value | meaning |", "|---|---|---|"]
    cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731 - a pipe would end the table cell
    lines += [
        f"| {cell(k)} | {cell(format_value(metrics[k]))} | {cell(descriptions.get(k, ''))} |" for k in known + rest
    ]
    return "\n".join(lines)


def _histogram(path: Path, series: Mapping[str, Sequence[float]], title: str, xlabel: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [v for xs in series.values() for v in xs if math.isfinite(v)]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if values:
        lo, hi = min(values), max(values)
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        bins = [lo + (hi - lo) * i / 30 for i in range(31)]
        for k, ((label, xs), color) in enumerate(zip(series.items(), ("#9e9e9e", "#1f77b4", "#d62728"))):
            xs = [x for x in xs if math.isfinite(x)]
            mean = sum(xs) / len(xs) if xs else float("nan")
            # the first filled, the others as outlines on top: two close distributions stay both visible
            style = {"alpha": 0.45} if k == 0 else {"histtype": "step", "linewidth": 1.8}
            ax.hist(xs, bins=bins, label=f"{label} (mean {mean:.3g})", color=color, **style)
            ax.axvline(mean, color=color, linestyle="--", linewidth=1)
        ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_distributions(
    distributions: Mapping[str, Sequence[float]], out_dir: str | Path, pairs_label: str = HELD_OUT
) -> dict[str, Path]:
    """Before/after histograms for the distributions `evaluation.evaluate_policy` returns. Returns name -> PNG path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    d = distributions
    figures: dict[str, Path] = {}
    pairs = pairs_label[0].upper() + pairs_label[1:]
    if "implicit_reward_margin" in d:  # the metric reward_margin is its mean
        figures["reward_margin"] = _histogram(
            out_dir / "reward_margin.png",
            {"policy vs reference": d["implicit_reward_margin"]},
            f"{pairs}: implicit-reward margin, chosen - rejected",
            "log pi/pi_ref(chosen) - log pi/pi_ref(rejected)  (nats)",
        )
    if "margin_after" in d:
        series = {"before (reference)": d["margin_before"]} if "margin_before" in d else {}
        series["after (policy)"] = d["margin_after"]
        figures["likelihood_margin"] = _histogram(
            out_dir / "likelihood_margin.png",
            series,
            f"{pairs}: log-likelihood margin, chosen - rejected",
            "log pi(chosen) - log pi(rejected)  (nats)",
        )
    if "length_after" in d:
        series = {"before (reference)": d["length_before"]} if "length_before" in d else {}
        series["after (policy)"] = d["length_after"]
        figures["length"] = _histogram(out_dir / "length.png", series, "Length of generations", "length")
    if "score_after" in d:
        series = {"before (reference)": d["score_before"]} if "score_before" in d else {}
        series["after (policy)"] = d["score_after"]
        figures["score"] = _histogram(out_dir / "score.png", series, "Score of generations", "score")
    return figures


def write_report(
    report: Mapping[str, Any],
    out_dir: str | Path,
    *,
    plots: bool = True,
    extra: Mapping[str, Any] | None = None,
    pairs_label: str = HELD_OUT,
) -> dict[str, Any]:
    """Write ``metrics.json`` (metrics, distributions, samples and `extra`), ``metrics.md`` and the PNG histograms.

    Returns ``{"json": path, "markdown": path, "figures": {name: path}}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = dict(report.get("metrics", {}))
    figures = plot_distributions(report.get("distributions", {}), out_dir, pairs_label) if plots else {}
    payload = {**(extra or {}), **{k: v for k, v in report.items()}}
    json_path = out_dir / "metrics.json"
    json_path.write_text(json.dumps(payload, indent=2, default=str, allow_nan=True) + "\n")
    md = ["# Evaluation", ""]
    for key, value in (extra or {}).items():
        if isinstance(value, (str, int, float)):
            md.append(f"- {key}: `{value}`")
    md += ["", markdown_table(metrics, pairs_label=pairs_label), ""]
    for name, path in figures.items():
        md += [f"![{name}]({path.name})", ""]
    samples = report.get("samples") or []
    if samples:
        md += ["## Samples", "", "| prompt | reference | policy |", "|---|---|---|"]
        for s in samples:
            md.append(f"| {_cell(s.get('prompt'))} | {_cell(s.get('reference', ''))} | {_cell(s.get('policy', ''))} |")
        md.append("")
    examples = report.get("instruction_following_examples") or []
    if examples:
        md += ["## Greedy answers to constraint prompts", "", "| prompt | reference | trained |", "|---|---|---|"]
        mark = lambda ok: "" if ok is None else ("(follows) " if ok else "(fails) ")  # noqa: E731
        for e in examples:
            before = mark(e.get("base_followed")) + str(e.get("base", ""))
            after = mark(e.get("trained_followed")) + e["trained"]
            md.append(f"| {_cell(e['prompt'])} | {_cell(before, 300)} | {_cell(after, 300)} |")
        md.append("")
    md_path = out_dir / "metrics.md"
    md_path.write_text("\n".join(md))
    return {"json": json_path, "markdown": md_path, "figures": figures}


def _cell(value: Any, limit: int = 120) -> str:
    if isinstance(value, list):  # chat messages
        value = " / ".join(str(m.get("content", "")) for m in value if isinstance(m, dict))
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def update_model_card(
    card_path: str | Path,
    metrics: Mapping[str, Any],
    figures: Mapping[str, str | Path],
    *,
    copy_figures: bool = True,
    title: str = "Evaluation",
    pairs_label: str = HELD_OUT,
) -> Path:
    """Put the metrics table and figures into the model card at `card_path` (`trl_ext.model_card.add_evaluation`:
    appended once, replaced on later runs; figures copied next to the card)."""
    from trl_ext.model_card import add_evaluation

    table = markdown_table(metrics, pairs_label=pairs_label)
    return add_evaluation(card_path, table, figures, copy_figures=copy_figures, title=title)


def pairs_label(eval_source: str, card_text: str | None) -> str:
    """What to call the evaluation pairs: "held-out pairs" only when the model's card names another training
    source; pairs from the file the run trained on may include rows it trained on, and an unknown source says so."""
    import re

    trained = re.search(r"^- Data: `([^`]+)`", card_text or "", re.MULTILINE)
    if trained is None:
        return "evaluation pairs (whether the run trained on them is not recorded)"
    if _same_source(trained.group(1), eval_source):
        return "pairs from the training file (may include rows trained on)"
    return HELD_OUT


def _same_source(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b or pa.name == pb.name
