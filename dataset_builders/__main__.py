"""Command line: ``python -m dataset_builders inspect|convert`` (installed as ``trl-ext-data``).

    python -m dataset_builders inspect my_pairs.jsonl [--json]
    python -m dataset_builders convert my_ranked.jsonl --method dpo --output dpo.jsonl --pair-strategy best_vs_rest
    python -m dataset_builders convert my_ab.csv --method reward --output reward_data/   # a save_to_disk folder

Bad data ends the command with one line on stderr naming the file, the row (line for JSONL) and the field, and
exit status 1; no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from .api import inspect, load_with_report
from .convert import METHODS, PAIR_STRATEGIES
from .errors import DataError
from .formats import BY_NAME, parse_column_map
from .shapes import ALL_SHAPES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dataset_builders",
        description="Check preference data and convert it to the columns a TRL trainer takes.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "source", help="file (.json .jsonl .jsonc .csv .parquet, or .gz of these), save_to_disk folder or Hub id"
        )
        sub.add_argument("--shape", choices=ALL_SHAPES, help="read the data as this shape instead of detecting it")
        sub.add_argument("--split", help="split of a Hub id or DatasetDict folder (default: train)")
        sub.add_argument(
            "--ranking-format",
            choices=("ranks", "order"),
            help="ranks (default): ranking[i] is the rank of responses[i]; order: response numbers best to worst",
        )
        sub.add_argument(
            "--allow-ties",
            action="store_true",
            default=None,
            help="accept preference 'tie' in pairwise_ab data (ties make no pair)",
        )
        sub.add_argument(
            "--conversational",
            action="store_true",
            default=None,
            help="chat message lists instead of plain strings (HH-RLHF: parse the turns)",
        )
        sub.add_argument("--score-key", help="UltraFeedback-style import: the score field of each completion")
        sub.add_argument(
            "--format",
            choices=list(BY_NAME),
            help="another project's layout (detected when its fields are unambiguous; docs/data.md lists them)",
        )
        sub.add_argument("--prefer", choices=("better", "safer"), help="PKU-SafeRLHF: which preference to train on")
        sub.add_argument(
            "--min-score-ratio",
            type=float,
            help="Stanford SHP: keep pairs whose score_ratio is at least this (its authors trained on 2)",
        )
        sub.add_argument("--dataset-name", help="SOURCE is a LLaMA-Factory dataset_info.json: the entry to read")
        sub.add_argument(
            "--columns",
            type=_column_map,
            metavar="OURS=YOURS,...",
            help="use your fields as ours, e.g. prompt=Question,chosen=Good,rejected=Bad",
        )

    inspect_cmd = commands.add_parser("inspect", help="shape, rows, length statistics and problems found")
    common(inspect_cmd)
    inspect_cmd.add_argument("--json", action="store_true", help="print a JSON object")

    convert_cmd = commands.add_parser("convert", help="write the columns a method's trainer takes")
    common(convert_cmd)
    convert_cmd.add_argument("--method", required=True, choices=METHODS)
    convert_cmd.add_argument("--output", required=True, help="a .jsonl or .parquet file, or a folder (save_to_disk)")
    convert_cmd.add_argument("--push-to-hub", metavar="REPO", help="also push the dataset to this Hub repo")
    convert_cmd.add_argument(
        "--on-error", choices=("raise", "drop"), help="drop: skip bad rows (counted and reported)"
    )
    convert_cmd.add_argument(
        "--pair-strategy", choices=PAIR_STRATEGIES, help="ranked -> pairs (default all_pairs; kto: best_vs_worst)"
    )
    convert_cmd.add_argument(
        "--grpo-mode", choices=("offline", "online"), help="offline: prompt/responses/ranking; online: prompt only"
    )
    convert_cmd.add_argument(
        "--count-lengths", choices=("chars", "tokens"), help="ipo without declared lengths: count characters or tokens"
    )
    convert_cmd.add_argument("--tokenizer", help="tokenizer name or path for --count-lengths tokens")
    convert_cmd.add_argument(
        "--sft-target-rejected",
        choices=("refuse", "swap"),
        help='orpo: rows with sft_target "rejected" are refused (default) or trained as the swapped pair',
    )
    return parser


def _column_map(text: str) -> dict[str, str]:
    try:
        return parse_column_map(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


_OPTION_FLAGS = (
    "dataset_name",
    "format",
    "prefer",
    "min_score_ratio",
    "columns",
    "split",
    "ranking_format",
    "allow_ties",
    "conversational",
    "score_key",
    "on_error",
    "pair_strategy",
    "grpo_mode",
    "count_lengths",
    "tokenizer",
    "sft_target_rejected",
)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key) for key in _OPTION_FLAGS if getattr(args, key, None) is not None}


def _print_inspect(info: dict[str, Any]) -> None:
    print(f"source:   {info['source']}")
    print(f"shape:    {info['shape']}" + (f" (imported as {info['imported_as']})" if "imported_as" in info else ""))
    if "format" in info:
        print(f"format:   {info['format']}")
    print(f"rows:     {info['rows']} ({info['valid_rows']} valid)")
    if info.get("unused_fields"):
        print(f"unused:   {', '.join(info['unused_fields'])} (not in the training data)")
    for reason, count in info.get("left_out", {}).items():
        print(f"left out: {count} {reason}")
    for note in info.get("notes", []):
        print(f"note:     {note}")
    print(f"columns:  {', '.join(info['columns'])}")
    if "conversational" in info:
        print(f"form:     {'conversational (message lists)' if info['conversational'] else 'standard (strings)'}")
    for name, stats in info.get("lengths", {}).items():
        if stats:
            print(f"  {name:<28} min {stats['min']:g}  mean {stats['mean']:g}  max {stats['max']:g}")
    if info.get("constraints"):
        constraints = info["constraints"]
        per = constraints["per_prompt"]
        print(
            f"constraints: instruction_id_list + kwargs on {constraints['rows_with_constraints']} row(s), "
            f"{per.get('min', 0):g}-{per.get('max', 0):g} per prompt (mean {per.get('mean', 0):g}); "
            "kept for ppo and online grpo (reward functions read them)"
        )
        for instruction_id, count in constraints["instructions"].items():
            print(f"  {count:>7}  {instruction_id}")
    if info.get("methods"):
        print("methods:")
        for method, verdict in info["methods"].items():
            print(f"  {method:<7} {verdict}")
    for warning in info.get("warnings", []):
        print(f"warning:  {warning}")
    print(f"problems: {info['problem_count']}")
    for field, count in info.get("problems_by_field", {}).items():
        print(f"  {count:>7}  {field}")
    for problem in info["problems"]:
        print(f"  {problem}")


def _write(dataset: Any, output: Path) -> None:
    suffix = output.suffix.lower()
    output.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".jsonl":
        dataset.to_json(str(output), lines=True, force_ascii=False)
    elif suffix == ".parquet":
        dataset.to_parquet(str(output))
    elif suffix:
        raise DataError(
            str(output), "unknown output type; write a .jsonl or .parquet file, or give a folder (save_to_disk)"
        )
    else:
        dataset.save_to_disk(str(output))


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok; 1 bad data or problems found by inspect; 2 usage)."""
    args = _parser().parse_args(argv)
    import datasets

    datasets.disable_progress_bars()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("dataset_builders").setLevel(logging.INFO)
    try:
        if args.command == "inspect":
            info = inspect(args.source, shape=args.shape, **_options(args))
            if args.json:
                print(json.dumps(info, indent=2, ensure_ascii=False))
            else:
                _print_inspect(info)
            return 1 if info["problem_count"] else 0

        dataset, report = load_with_report(args.source, method=args.method, shape=args.shape, **_options(args))
        output = Path(args.output)
        _write(dataset, output)
        summary = f"wrote {dataset.num_rows} rows ({', '.join(dataset.column_names)}) to {output}"
        print(summary + (f"; dropped {report.dropped} bad row(s)" if report.dropped else ""))
        for reason, count in report.skipped.items():
            print(f"  left out by the mapping: {count} ({reason})")
        if report.kto:
            print(f"  kto: {json.dumps(report.kto)}")
        if args.push_to_hub:
            try:
                dataset.push_to_hub(args.push_to_hub)
            except Exception as e:  # network, authentication, offline mode
                first_line = (str(e).strip().splitlines() or [""])[0]
                raise DataError(
                    args.push_to_hub, f"push to the Hub failed ({type(e).__name__}: {first_line})"
                ) from None
            print(f"pushed to https://huggingface.co/datasets/{args.push_to_hub}")
        return 0
    except (DataError, OSError) as e:  # bad data, an unreadable path or tokenizer: one line, no traceback
        print((str(e).strip().splitlines() or [type(e).__name__])[0], file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
