"""dataset_builders: every shape -> method mapping, with hand-written rows and hand-written expectations."""

from __future__ import annotations

import pytest

import dataset_builders
from dataset_builders import METHODS, SHAPES, DataError, kto_class_weights, load, load_with_report
from trl_ext.toy.synthetic import ToyTask

COLUMNS = {
    "reward": ["prompt", "chosen", "rejected"],
    "dpo": ["prompt", "chosen", "rejected"],
    "orpo": ["prompt", "chosen", "rejected"],
    "ipo": ["prompt", "chosen", "rejected", "chosen_length", "rejected_length"],
    "kto": ["prompt", "completion", "label"],
    "grpo": ["prompt", "responses", "ranking"],
    "ppo": ["prompt"],
    "sft": ["prompt", "completion"],
}
PAIR_METHODS = ("reward", "dpo", "orpo", "ipo")
REFUSED = {("binary", m) for m in ("reward", "dpo", "orpo", "ipo", "grpo")}


@pytest.mark.parametrize("conversational", [False, True])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_to_every_method(shape, method, conversational):
    rows = ToyTask(seed=5, conversational=conversational).rows(shape, 8)
    if (shape, method) in REFUSED:
        with pytest.raises(DataError, match=f"cannot build {method} data from the binary shape"):
            load(rows, method=method)
        return
    dataset = load(rows, method=method, count_lengths="chars")
    assert dataset.column_names == COLUMNS[method]
    assert len(dataset) > 0
    if conversational:
        assert all(
            isinstance(dataset[0][c], list) for c in ("prompt", "chosen", "completion") if c in dataset.column_names
        )


# --- pairwise_ab ------------------------------------------------------------------------------------------------

AB = [
    {"prompt": "Sky?", "response_a": "Blue.", "response_b": "Green.", "preference": "A"},
    {"prompt": "Sea?", "response_a": "Dry.", "response_b": "Wet.", "preference": "b"},
    {"prompt": "Sun?", "response_a": "Hot.", "response_b": "Warm.", "preference": "Tie"},
]


@pytest.mark.parametrize("method", ["reward", "dpo", "orpo"])
def test_pairwise_ab_to_pairs(method):
    dataset, report = load_with_report(AB, method=method, allow_ties=True)
    assert dataset.to_list() == [
        {"prompt": "Sky?", "chosen": "Blue.", "rejected": "Green."},
        {"prompt": "Sea?", "chosen": "Wet.", "rejected": "Dry."},
    ]
    assert report.skipped == {"tie (no pair)": 1}


def test_pairwise_ab_tie_needs_opt_in():
    with pytest.raises(DataError, match=r"<list>: row 3, field 'preference': 'Tie' is a tie; pass allow_ties=True"):
        load(AB, method="dpo")


def test_pairwise_ab_to_grpo_kto_sft_ppo():
    assert load(AB, method="grpo", allow_ties=True).to_list() == [
        {"prompt": "Sky?", "responses": ["Blue.", "Green."], "ranking": [1, 2]},
        {"prompt": "Sea?", "responses": ["Dry.", "Wet."], "ranking": [2, 1]},
        {"prompt": "Sun?", "responses": ["Hot.", "Warm."], "ranking": [1, 1]},
    ]
    kto = load(AB[:2], method="kto")
    assert sorted(map(tuple, (r.values() for r in kto))) == sorted(
        [("Sky?", "Blue.", True), ("Sky?", "Green.", False), ("Sea?", "Wet.", True), ("Sea?", "Dry.", False)]
    )
    assert load(AB[:2], method="sft").to_list() == [
        {"prompt": "Sky?", "completion": "Blue."},
        {"prompt": "Sea?", "completion": "Wet."},
    ]
    assert load(AB, method="ppo", allow_ties=True)["prompt"] == ["Sky?", "Sea?", "Sun?"]


# --- ranked -----------------------------------------------------------------------------------------------------

# ranking[i] is the rank of responses[i]: r1 best, r0 and r2 tied second, r3 worst
RANKED = [{"prompt": "P", "responses": ["r0", "r1", "r2", "r3"], "ranking": [2, 1, 2, 4]}]
PAIRS_BY_STRATEGY = {
    "all_pairs": {("r1", "r0"), ("r1", "r2"), ("r1", "r3"), ("r0", "r3"), ("r2", "r3")},
    "adjacent": {("r1", "r0"), ("r1", "r2"), ("r0", "r3"), ("r2", "r3")},
    "best_vs_rest": {("r1", "r0"), ("r1", "r2"), ("r1", "r3")},
    "best_vs_worst": {("r1", "r3")},
}


@pytest.mark.parametrize("strategy", dataset_builders.PAIR_STRATEGIES)
def test_ranked_to_pairs_strategies(strategy):
    dataset = load(RANKED, method="dpo", pair_strategy=strategy)
    pairs = [(row["chosen"], row["rejected"]) for row in dataset]
    assert len(pairs) == len(set(pairs))
    assert set(pairs) == PAIRS_BY_STRATEGY[strategy]
    assert set(dataset["prompt"]) == {"P"}


def test_ranked_default_is_all_pairs_and_ties_make_no_pair():
    rows = RANKED + [{"prompt": "Q", "responses": ["x", "y", "z"], "ranking": [1, 1, 1]}]
    dataset, report = load_with_report(rows, method="reward")
    assert {(r["chosen"], r["rejected"]) for r in dataset} == PAIRS_BY_STRATEGY["all_pairs"]
    assert report.skipped == {"all responses tied (no pair)": 1}


def test_ranked_pairs_keep_file_order_with_mixed_group_sizes():
    rows = [
        {"prompt": "A", "responses": ["a1", "a2", "a3"], "ranking": [3, 1, 2]},
        {"prompt": "B", "responses": ["b1", "b2"], "ranking": [2, 1]},
        {"prompt": "C", "responses": ["c1", "c2", "c3"], "ranking": [1, 2, 3]},
    ]
    dataset = load(rows, method="dpo", pair_strategy="best_vs_worst")
    assert dataset.to_list() == [
        {"prompt": "A", "chosen": "a2", "rejected": "a1"},
        {"prompt": "B", "chosen": "b2", "rejected": "b1"},
        {"prompt": "C", "chosen": "c1", "rejected": "c3"},
    ]


def test_ranking_format_order_is_the_inverse_permutation():
    # docs/data.md: read as an order (best to worst), [1, 4, 2, 3] means ranks [1, 3, 4, 2]
    rows = [{"prompt": "P", "responses": ["r1", "r2", "r3", "r4"], "ranking": [1, 4, 2, 3]}]
    assert load(rows)["ranking"] == [[1, 4, 2, 3]]  # the default reading: ranks, never guessed
    assert load(rows, ranking_format="order")["ranking"] == [[1, 3, 4, 2]]
    assert load(rows, method="sft", ranking_format="order")["completion"] == ["r1"]
    best_worst = load(rows, method="dpo", pair_strategy="best_vs_worst", ranking_format="order")
    assert best_worst.to_list() == [{"prompt": "P", "chosen": "r1", "rejected": "r3"}]


def test_ranked_to_grpo_sft_kto():
    assert load(RANKED, method="grpo").to_list() == RANKED
    assert load(RANKED, method="grpo", grpo_mode="online").to_list() == [{"prompt": "P"}]
    assert load(RANKED, method="sft").to_list() == [{"prompt": "P", "completion": "r1"}]
    kto, report = load_with_report(RANKED, method="kto")  # best_vs_worst: each response one label
    assert sorted(kto["completion"]) == ["r1", "r3"] and sorted(kto["label"]) == [False, True]
    assert report.kto == {
        "n_desirable": 1,
        "n_undesirable": 1,
        "desirable_weight": 1.0,
        "undesirable_weight": 1.0,
        "ratio": 1.0,
    }
    with pytest.raises(DataError, match="labelled both desirable and undesirable"):
        load(RANKED, method="kto", pair_strategy="all_pairs")


# --- pairs family -----------------------------------------------------------------------------------------------

PAIRS = [{"prompt": "Sky?", "chosen": "Blue.", "rejected": "Green."}]


def test_pairs_to_kto_uses_trl_unpair():
    from datasets import Dataset
    from trl.data_utils import unpair_preference_dataset

    rows = ToyTask(seed=6).rows("pairs", 10)
    assert load(rows, method="kto").to_list() == unpair_preference_dataset(Dataset.from_list(rows)).to_list()


def test_pairs_to_grpo_is_a_group_of_two():
    assert load(PAIRS, method="grpo").to_list() == [
        {"prompt": "Sky?", "responses": ["Blue.", "Green."], "ranking": [1, 2]}
    ]


def test_sft_target_for_orpo_and_sft():
    rows = [
        {"prompt": "a", "chosen": "C", "rejected": "R", "sft_target": "chosen"},
        {"prompt": "b", "chosen": "C", "rejected": "R", "sft_target": "rejected"},
        {"prompt": "c", "chosen": "C", "rejected": "R", "sft_target": "A better answer."},
    ]
    # ORPO would prefer the rejected answer of row 2 against its label: refused, naming the row, unless asked for
    with pytest.raises(DataError, match=r"row 2, field 'sft_target': sft_target \"rejected\" for orpo"):
        load(rows, method="orpo")
    assert load(rows, method="orpo", sft_target_rejected="swap").to_list() == [
        {"prompt": "a", "chosen": "C", "rejected": "R"},
        {"prompt": "b", "chosen": "R", "rejected": "C"},
        {"prompt": "c", "chosen": "A better answer.", "rejected": "R"},
    ]
    kept = [rows[0], rows[2]]  # literal and "chosen" targets keep the row's preference: accepted as they are
    assert load(kept, method="orpo")["chosen"] == ["C", "A better answer."]
    assert load(rows, method="sft")["completion"] == ["C", "R", "A better answer."]
    assert load(rows, method="dpo")["chosen"] == ["C", "C", "C"]  # sft_target only concerns ORPO's SFT term


def test_sft_target_literal_in_conversational_data_becomes_a_message():
    rows = [
        {
            "prompt": [{"role": "user", "content": "q"}],
            "chosen": [{"role": "assistant", "content": "C"}],
            "rejected": [{"role": "assistant", "content": "R"}],
            "sft_target": "Better.",
        }
    ]
    assert load(rows, method="orpo")[0]["chosen"] == [{"role": "assistant", "content": "Better."}]


def test_sft_target_as_messages_makes_the_pair_conversational():
    rows = [
        {"prompt": "q", "chosen": "C", "rejected": "R", "sft_target": [{"role": "assistant", "content": "Better."}]}
    ]
    assert load(rows, method="orpo").to_list() == [
        {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "Better."}],
         "rejected": [{"role": "assistant", "content": "R"}]}
    ]  # fmt: skip


def test_ipo_lengths():
    with pytest.raises(DataError, match="ipo needs chosen_length and rejected_length.*count_lengths='chars'"):
        load(PAIRS, method="ipo")
    chars = load(PAIRS, method="ipo", count_lengths="chars")[0]
    assert (chars["chosen_length"], chars["rejected_length"]) == (5, 6)
    with pytest.raises(DataError, match="count_lengths='tokens' needs tokenizer="):
        load(PAIRS, method="ipo", count_lengths="tokens")

    class WordTokenizer:  # any callable tokenizer with input_ids, as transformers' tokenizers are
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [text.split() for text in texts]}

    rows = [{"prompt": "p", "chosen": "one two three", "rejected": "four"}]
    tokens = load(rows, method="ipo", count_lengths="tokens", tokenizer=WordTokenizer())[0]
    assert (tokens["chosen_length"], tokens["rejected_length"]) == (3, 1)
    conversational = [{"prompt": [{"role": "user", "content": "p"}], "chosen": [{"role": "assistant", "content": "abc"}],
                       "rejected": [{"role": "assistant", "content": "de"}]}]  # fmt: skip
    row = load(conversational, method="ipo", count_lengths="chars")[0]
    assert (row["chosen_length"], row["rejected_length"]) == (3, 2)


def test_ipo_tokens_with_the_tiny_tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    row = load(PAIRS, method="ipo", count_lengths="tokens", tokenizer=str(tiny_model_path))[0]
    assert row["chosen_length"] == len(tokenizer("Blue.", add_special_tokens=False)["input_ids"])


# --- binary -----------------------------------------------------------------------------------------------------

BINARY = [
    {"prompt": "a", "response": "good one", "label": "good"},
    {"prompt": "b", "response": "bad one", "label": "bad"},
    {"prompt": "c", "response": "fine", "label": "thumbs_up"},
]


def test_binary_to_kto_sft_ppo():
    dataset, report = load_with_report(BINARY, method="kto")
    assert dataset.to_list() == [
        {"prompt": "a", "completion": "good one", "label": True},
        {"prompt": "b", "completion": "bad one", "label": False},
        {"prompt": "c", "completion": "fine", "label": True},
    ]
    assert report.kto["n_desirable"] == 2 and report.kto["n_undesirable"] == 1
    sft, report = load_with_report(BINARY, method="sft")
    assert sft.to_list() == [{"prompt": "a", "completion": "good one"}, {"prompt": "c", "completion": "fine"}]
    assert report.skipped == {"label bad (sft keeps the good rows)": 1}
    assert load(BINARY, method="ppo")["prompt"] == ["a", "b", "c"]


def test_refusals_say_why():
    with pytest.raises(
        DataError, match="<list>: cannot build dpo data from the binary shape: binary rows rate one response"
    ):
        load(BINARY, method="dpo")
    prompts = [{"prompt": "p"}]
    with pytest.raises(DataError, match="grpo_mode='online'"):
        load(prompts, method="grpo")
    assert load(prompts, method="grpo", grpo_mode="online").to_list() == prompts
    with pytest.raises(DataError, match="cannot build sft data from the prompts shape"):
        load(prompts, method="sft")


# --- standard / conversational ---------------------------------------------------------------------------------


def test_mixed_forms_are_made_conversational():
    rows = [{"prompt": [{"role": "user", "content": "q"}], "chosen": "yes", "rejected": "no"}]
    assert load(rows, method="dpo").to_list() == [
        {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "yes"}],
         "rejected": [{"role": "assistant", "content": "no"}]}
    ]  # fmt: skip


def test_conversational_option_wraps_standard_data():
    grpo = load(RANKED, method="grpo", conversational=True)[0]
    assert grpo["prompt"] == [{"role": "user", "content": "P"}]
    assert grpo["responses"][1] == [{"role": "assistant", "content": "r1"}]


def test_implicit_prompt_is_extracted_with_trl():
    rows = [{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
             "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}]  # fmt: skip
    assert load(rows, method="dpo").to_list() == [
        {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
         "rejected": [{"role": "assistant", "content": "b"}]}
    ]  # fmt: skip
    # plain strings with no prompt and no HH-RLHF markers: the prompt cannot be told apart, so it is missing
    with pytest.raises(DataError, match=r"<list>: row 1, field 'prompt': missing"):
        load([{"chosen": "a", "rejected": "b"}], method="dpo")


# --- KTO class weights ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n_good,n_bad,weights",
    [(10, 10, (1.0, 1.0)), (13, 10, (1.0, 1.0)), (10, 30, (3.0, 1.0)), (30, 10, (1.0, 2.25)), (1, 3, (3.0, 1.0))],
)
def test_kto_class_weights(n_good, n_bad, weights):
    from datasets import Dataset

    report = kto_class_weights(Dataset.from_dict({"label": [True] * n_good + [False] * n_bad}))
    assert (report["n_desirable"], report["n_undesirable"]) == (n_good, n_bad)
    assert (report["desirable_weight"], report["undesirable_weight"]) == weights
    ratio = weights[0] * n_good / (weights[1] * n_bad)
    assert 1 <= ratio <= 4 / 3 and report["ratio"] == pytest.approx(ratio)


def test_kto_class_weights_follow_a_split_view():
    from datasets import Dataset

    dataset = Dataset.from_dict({"label": [True] * 10 + [False] * 30})
    assert kto_class_weights(dataset.select(range(12)))["n_undesirable"] == 2
