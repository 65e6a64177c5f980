"""Regenerate the example files in this folder from the known-truth toy task (`trl_ext.toy.synthetic.ToyTask`).

    python recipes/data/generate.py

The hand-written examples (`examples_pasted.jsonc`, `pairwise_ab_handwritten.csv`) are not generated.
"""

from pathlib import Path

from trl_ext.toy.synthetic import ToyTask

HERE = Path(__file__).resolve().parent
ROWS = 256

if __name__ == "__main__":
    task = ToyTask(gamma=0.0, seed=0)
    for kind in (
        "pairwise_ab",
        "pairs",
        "pairs_with_lengths",
        "binary",
        "pairs_sft_target",
        "ranked",
        "sft",
        "prompts",
    ):
        task.write_jsonl(kind, ROWS, HERE / f"{kind}.jsonl")
    ToyTask(gamma=0.0, seed=0, conversational=True).write_jsonl("pairs", ROWS, HERE / "pairs_conversational.jsonl")
