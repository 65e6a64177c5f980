"""The example files in recipes/data load as their shape and convert for the methods the recipes use."""

from __future__ import annotations

import pytest
from conftest import REPO_ROOT

from dataset_builders import DataError, detect, load

DATA = REPO_ROOT / "recipes" / "data"
EXAMPLES = {
    "pairwise_ab.jsonl": ("pairwise_ab", 256, "reward"),
    "pairs.jsonl": ("pairs", 256, "dpo"),
    "pairs_with_lengths.jsonl": ("pairs_with_lengths", 256, "ipo"),
    "binary.jsonl": ("binary", 256, "kto"),
    "pairs_sft_target.jsonl": ("pairs_sft_target", 256, "orpo"),
    "ranked.jsonl": ("ranked", 256, "grpo"),
    "sft.jsonl": ("prompt_completion", 256, "sft"),
    "prompts.jsonl": ("prompts", 256, "ppo"),
    "pairs_conversational.jsonl": ("pairs", 256, "dpo"),
    "examples_pasted.jsonc": ("pairs_sft_target", 3, "sft"),
    "pairwise_ab_handwritten.csv": ("pairwise_ab", 4, "reward"),
    "ranked_handwritten.json": ("ranked", 3, "dpo"),
    "prompts_with_constraints.jsonl": ("prompts", 48, "ppo"),
    "hh-rlhf-ifeval-prompts.jsonl": ("prompts", 256, "ppo"),
    "ifeval-train-prompts.jsonl": ("prompts", 1800, "ppo"),
    "ifeval-heldout-prompts.jsonl": ("prompts", 378, "ppo"),
    "smollm2-ifeval-pairs.jsonl": ("pairs", 300, "dpo"),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_file(name):
    shape, rows, method = EXAMPLES[name]
    path = DATA / name
    assert detect(path) == shape
    assert len(load(path)) == rows
    assert len(load(path, method=method)) > 0


def test_every_example_file_is_listed():
    data = {p.name for p in DATA.iterdir() if p.suffix in (".jsonl", ".jsonc", ".json", ".csv")}
    sidecars = {name for name in data if name.endswith(".meta.json")}  # the generator's record of how a file was made
    assert data - sidecars == set(EXAMPLES)
    assert all(name.removesuffix(".meta.json") in EXAMPLES for name in sidecars)


def test_hand_written_examples_say_what_they_mean():
    haiku = "Grey waves fold on sand / gulls argue with the cold wind / the tide keeps its time"
    assert load(DATA / "examples_pasted.jsonc", method="sft")["completion"] == [
        "Paris.",
        haiku,
        "A spider has eight legs.",
    ]
    with pytest.raises(DataError, match=r"examples_pasted.jsonc: row 2, field 'sft_target'"):
        load(DATA / "examples_pasted.jsonc", method="orpo")
    swapped = load(DATA / "examples_pasted.jsonc", method="orpo", sft_target_rejected="swap")
    assert swapped["chosen"] == ["Paris.", haiku, "A spider has eight legs."] and swapped["rejected"][1] == "Waves."
    assert load(DATA / "pairwise_ab_handwritten.csv", method="reward")["chosen"] == [
        "Joyful.",
        "42",
        "Thank you.",
        "13",
    ]
    conversational = load(DATA / "pairs_conversational.jsonl", method="dpo")[0]
    assert conversational["prompt"][0]["role"] == "user" and conversational["chosen"][0]["role"] == "assistant"
