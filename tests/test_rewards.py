"""Verifiable rewards (`trl_ext.rewards`): IFEval's checkers through if-verifiable, the fraction and strict rewards,
the prompts-with-constraints builder, and the data path that carries the constraints."""

import json

import pytest

import dataset_builders
from trl_ext import rewards
from trl_ext.rewards import checkers, constraints
from trl_ext.rewards.checkers import (
    NEEDS_NLTK_DATA,
    ConstraintError,
    ifeval_instructions,
    unsupported_reason,
    verify,
)

# instruction id -> (arguments, an answer that follows it, an answer that does not), written by hand
IFEVAL_CASES = {
    "change_case:capital_word_frequency": (
        {"capital_frequency": 2, "capital_relation": "at least"},
        "THIS answer HAS capitals.",
        "this answer has none.",
    ),
    "change_case:english_capital": (
        {},
        "THE WEATHER IS SUNNY TODAY AND THE CHILDREN ARE PLAYING IN THE PARK.",
        "The weather is sunny today and the children are playing in the park.",
    ),
    "change_case:english_lowercase": (
        {},
        "the weather is sunny today and the children are playing in the park.",
        "The weather is sunny today and the children are playing in the park.",
    ),
    "combination:repeat_prompt": (
        {"prompt_to_repeat": "Tell me a joke."},
        "Tell me a joke. Why did the chicken cross the road? To get to the other side.",
        "Why did the chicken cross the road? To get to the other side.",
    ),
    "combination:two_responses": ({}, "A cat.\n******\nA dog.", "A cat and a dog."),
    "detectable_content:number_placeholders": (
        {"num_placeholders": 2},
        "Send it to [name] at [address].",
        "Send it to [name].",
    ),
    "detectable_content:postscript": ({"postscript_marker": "P.S."}, "See you.\nP.S. Bring cake.", "See you."),
    "detectable_format:constrained_response": ({}, "My answer is yes.", "Sure, why not."),
    "detectable_format:json_format": ({}, '{"answer": 42}', "The answer is 42."),
    "detectable_format:multiple_sections": (
        {"section_spliter": "SECTION", "num_sections": 2},
        "SECTION 1\nFirst part.\nSECTION 2\nSecond part.",
        "SECTION 1\nOnly one part.",
    ),
    "detectable_format:number_bullet_lists": ({"num_bullets": 2}, "* milk\n* eggs", "* milk\n* eggs\n* bread"),
    "detectable_format:number_highlighted_sections": (
        {"num_highlights": 2},
        "Buy *milk* and *eggs*.",
        "Buy *milk* and eggs.",
    ),
    "detectable_format:title": ({}, "<<Shopping list>>\nMilk and eggs.", "Shopping list: milk and eggs."),
    "keywords:existence": ({"keywords": ["apple", "pear"]}, "An apple and a pear.", "An apple and a plum."),
    "keywords:forbidden_words": ({"forbidden_words": ["terrible"]}, "It was fine.", "It was terrible."),
    "keywords:frequency": (
        {"keyword": "cat", "frequency": 2, "relation": "at least"},
        "The cat saw another cat.",
        "The cat slept.",
    ),
    "keywords:letter_frequency": (
        {"letter": "z", "let_frequency": 3, "let_relation": "at least"},
        "The jazz band played with zeal.",
        "The band played well.",
    ),
    "language:response_language": (
        {"language": "fr"},
        "Bonjour, je suis très content de vous voir aujourd'hui dans ce beau jardin.",
        "Hello, I am very happy to see you today in this beautiful garden.",
    ),
    "length_constraints:nth_paragraph_first_word": (
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
        "First we plan.\n\nThen we build.",
        "First we plan.\n\nNext we build.",
    ),
    "length_constraints:number_paragraphs": ({"num_paragraphs": 2}, "One idea.\n***\nAnother idea.", "One idea."),
    "length_constraints:number_sentences": (
        {"num_sentences": 2, "relation": "less than"},
        "Just one sentence here.",
        "One. Two. Three.",
    ),
    "length_constraints:number_words": (
        {"num_words": 5, "relation": "less than"},
        "Only three words",
        "These are far more than five words here",
    ),
    "punctuation:no_comma": ({}, "No commas in this answer.", "Yes, a comma."),
    "startend:end_checker": (
        {"end_phrase": "Any other questions?"},
        "That is all. Any other questions?",
        "Any other questions? That is all.",
    ),
    "startend:quotation": ({}, '"A quoted answer."', "An answer without quotes."),
}
SUPPORTED = [i for i in ifeval_instructions() if unsupported_reason(i) is None]


def test_the_cases_cover_every_ifeval_instruction():
    assert set(IFEVAL_CASES) == set(ifeval_instructions())
    assert len(ifeval_instructions()) == 25


def test_offline_every_ifeval_type_but_the_nltk_ones_is_supported():
    for instruction_id in ifeval_instructions():
        if instruction_id in NEEDS_NLTK_DATA:
            reason = unsupported_reason(instruction_id)
            assert reason is None or "NLTK data" in reason  # None only where that data is installed
        else:
            assert unsupported_reason(instruction_id) is None, instruction_id


@pytest.mark.parametrize("instruction_id", SUPPORTED)
def test_every_supported_ifeval_type_scores_true_and_false(instruction_id):
    arguments, follows, breaks = IFEVAL_CASES[instruction_id]
    assert verify(follows, [instruction_id], [arguments]).strict == (True,)
    assert verify(breaks, [instruction_id], [arguments]).strict == (False,)


def test_fraction_and_strict_rewards_on_a_two_constraint_prompt():
    ids = [["punctuation:no_comma", "keywords:existence"]] * 3
    kwargs = [[{}, {"keywords": ["apple"]}]] * 3
    answers = ["An apple a day.", "Yes, an apple.", "Yes, a pear."]  # both, one, none
    prompts = ["Write about fruit."] * 3
    assert rewards.instruction_following(prompts, answers, ids, kwargs) == [1.0, 0.5, 0.0]
    assert rewards.instruction_following_strict(prompts, answers, ids, kwargs) == [1.0, 0.0, 0.0]


def test_an_empty_answer_follows_nothing():
    # no_comma and forbidden_words hold vacuously for "", yet an empty answer follows nothing
    ids, kwargs = [["punctuation:no_comma", "keywords:forbidden_words"]], [[{}, {"forbidden_words": ["x"]}]]
    for empty in ("", "   \n"):
        assert rewards.instruction_following(["p"], [empty], ids, kwargs) == [0.0]


def test_conversational_completions_and_arrow_shaped_kwargs():
    # TRL passes a conversational completion as a message list; Arrow gives each argument object every key of the
    # column's struct, None where unused; some files hold kwargs as a JSON string
    prompt = [{"role": "user", "content": "Say hi."}]
    completion = [{"role": "assistant", "content": "hi there"}]
    ids = ["change_case:english_lowercase", "keywords:existence"]
    arrow = [{"keywords": None, "num_words": None}, {"keywords": ["hi"], "num_words": None}]
    assert rewards.instruction_following([prompt], [completion], [ids], [arrow]) == [1.0]
    as_json = json.dumps([{}, {"keywords": ["bye"]}])
    assert rewards.instruction_following([prompt], [completion], [ids], [as_json]) == [0.5]


def test_unknown_or_missing_constraints_are_one_clear_error():
    with pytest.raises(ConstraintError, match="'keywords:nonsense': not an IFEval or IFBench instruction id"):
        rewards.instruction_following(["p"], ["a"], [["keywords:nonsense"]], [[{}]])
    with pytest.raises(ConstraintError, match="needs prompts with constraints"):
        rewards.instruction_following(["p"], ["a"])
    with pytest.raises(ConstraintError, match="one object per instruction"):
        rewards.instruction_following(["p"], ["a"], [["punctuation:no_comma"]], [[{}, {}]])


def test_ifbench_checkers_come_from_the_same_library():
    assert len(checkers.ifbench_instructions()) == 58
    assert not set(checkers.ifbench_instructions()) & set(ifeval_instructions())
    # IFBench's count:conjunctions: "Use at least {small_n} different coordinating conjunctions in the response."
    assert verify("I came and saw, but left, or so.", ["count:conjunctions"], [{"small_n": 3}]).strict == (True,)
    assert verify("I came and saw.", ["count:conjunctions"], [{"small_n": 3}]).strict == (False,)


def test_named_rewards_resolve_and_unknown_names_fail_in_one_line():
    assert rewards.resolve_reward_functions(["instruction_following", ""]) == [rewards.instruction_following]
    assert rewards.resolve_reward_functions(None) == []
    with pytest.raises(ValueError, match="not a known name"):
        rewards.resolve_reward_functions(["instruction_folowing"])
    with pytest.raises(ValueError, match="cannot import"):
        rewards.resolve_reward_functions(["trl_ext.nowhere.reward"])
    assert rewards.reward_weights(None, 2) == [1.0, 1.0]
    with pytest.raises(ValueError, match="2 reward"):
        rewards.reward_weights([1.0], 2)


def test_check_reward_columns_names_the_row():
    data = dataset_builders.load(
        [
            {"prompt": "a", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
            {"prompt": "b", "instruction_id_list": ["punctuation:nope"], "kwargs": [{}]},
        ],
        method="ppo",
    )
    with pytest.raises(ConstraintError, match=r"my.jsonl, row 2: instruction 'punctuation:nope'"):
        rewards.check_reward_columns([rewards.instruction_following], data, "my.jsonl")
    plain = dataset_builders.load([{"prompt": "a"}], method="ppo")
    with pytest.raises(ConstraintError, match="trl-ext constraints"):
        rewards.check_reward_columns([rewards.instruction_following], plain, "plain.jsonl")
    rewards.check_reward_columns([lambda prompts, completions, **kw: [0.0]], plain)  # other rewards need nothing


# --- the builder --------------------------------------------------------------------------------------------------
REQUESTS = [f"Tell me about topic number {i}." for i in range(40)]


def test_builder_is_seeded_and_draws_no_conflicting_pair():
    rows = constraints.attach_constraints(REQUESTS, seed=3, constraints_per_prompt="1-3")
    assert rows == constraints.attach_constraints(REQUESTS, seed=3, constraints_per_prompt="1-3")
    assert rows != constraints.attach_constraints(REQUESTS, seed=4, constraints_per_prompt="1-3")
    assert rows[:10] == constraints.attach_constraints(REQUESTS[:10], seed=3)  # a row depends on its own seed only
    table = constraints.conflicts()
    for row in rows:
        ids = row["instruction_id_list"]
        assert 1 <= len(ids) <= 3 and len(row["kwargs"]) == len(ids)
        for a in ids:
            assert not any(b in table[a] for b in ids if b != a), ids
        assert all(unsupported_reason(i) is None for i in ids)
    assert {n for row in rows for n in [len(row["instruction_id_list"])]} == {1, 2, 3}


def test_builder_prompt_states_exactly_the_checked_arguments():
    """The description rebuilt from the stored arguments is the text in the prompt: the reward checks what was asked."""
    from trl_ext.rewards.checkers import registry

    rows = constraints.attach_constraints(REQUESTS, seed=0, constraints_per_prompt="2")
    for request, row in zip(REQUESTS, rows):
        text = row["prompt"][0]["content"]
        assert text.startswith(request + "\n\n")
        for instruction_id, arguments in zip(row["instruction_id_list"], row["kwargs"]):
            checker = registry()[instruction_id](instruction_id)
            assert checker.build_description(**arguments) in text
            if instruction_id == "combination:repeat_prompt":
                assert arguments == {"prompt_to_repeat": request}
            if instruction_id == "length_constraints:nth_paragraph_first_word":
                assert arguments["nth_paragraph"] <= arguments["num_paragraphs"]


def test_builder_refuses_unsupported_instructions_and_bad_counts():
    with pytest.raises(ConstraintError, match="not an IFEval or IFBench"):
        constraints.attach_constraints(REQUESTS[:1], instructions=["nope:nope"])
    with pytest.raises(ValueError, match="N or N-M"):
        constraints.attach_constraints(REQUESTS[:1], constraints_per_prompt="many")
    with pytest.raises(ValueError, match="1 <= N <= M"):
        constraints.parse_count("3-1")


def test_builder_command_on_hh_rlhf_and_the_loaders_keep_the_constraints(tmp_path, capsys):
    from conftest import TEST_DATA

    out = tmp_path / "prompts.jsonl"
    assert constraints.main([str(TEST_DATA / "hh-rlhf-harmless-test.jsonl.gz"), "--output", str(out),
                             "--max_requests", "20", "--constraints_per_prompt", "1"]) == 0  # fmt: skip
    assert "20 prompts with 20 constraints" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["prompt"][0]["content"].startswith("what are some pranks with a pen i can do?\n\n")  # 1st turn
    for method, options in ((None, {}), ("ppo", {}), ("grpo", {"grpo_mode": "online"})):
        data, report = dataset_builders.load_with_report(out, method=method, **options)
        assert data.column_names == ["prompt", "instruction_id_list", "kwargs"], method
        assert report.unused_fields == []
        assert data[0]["instruction_id_list"] == rows[0]["instruction_id_list"]
    info = dataset_builders.inspect(out)
    assert info["shape"] == "prompts" and info["constraints"]["rows_with_constraints"] == 20
    assert sum(info["constraints"]["instructions"].values()) == 20


def test_methods_that_train_on_fixed_answers_report_the_constraints_as_unused():
    row = {"prompt": "p", "chosen": "a", "rejected": "b", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}  # fmt: skip
    data, report = dataset_builders.load_with_report([row], method="dpo")
    assert data.column_names == ["prompt", "chosen", "rejected"]
    assert report.unused_fields == ["instruction_id_list", "kwargs"]  # reported, not silently dropped
    grouped, report = dataset_builders.load_with_report([row], method="grpo")
    assert grouped.column_names == ["prompt", "responses", "ranking"]


def test_malformed_constraint_fields_are_one_line_naming_the_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"prompt": "a", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}) + "\n"
        + json.dumps({"prompt": "b", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}, {}]}) + "\n"
    )  # fmt: skip
    with pytest.raises(dataset_builders.DataError, match=r"bad.jsonl.*line 2.*kwargs.*one per instruction id"):
        dataset_builders.load(path, method="ppo")


# --- the named reward in the recipes ------------------------------------------------------------------------------
CONSTRAINT_PROMPTS = "recipes/data/prompts_with_constraints.jsonl"


@pytest.fixture
def tiny_reward_model(tmp_path, tiny_model_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    return str(tmp_path / "rm")


def _history(monkeypatch):
    """Capture the trainer's log history (the recipes save no trainer state with save_strategy no)."""
    from trl_ext import recipe

    seen = {}
    train = recipe.train

    def spy(trainer):
        metrics = train(trainer)
        seen["logs"] = {k: v for entry in trainer.state.log_history for k, v in entry.items()}
        seen["names"] = getattr(trainer, "reward_func_names", None) or [
            getattr(f, "__name__", type(f).__name__) for f in trainer.reward_funcs
        ]
        return metrics

    monkeypatch.setattr(recipe, "train", spy)
    return seen


@pytest.mark.parametrize("with_reward_model", [False, True], ids=["function", "reward_model+function"])
def test_ppo_recipe_trains_with_the_named_reward(tmp_path, monkeypatch, tiny_reward_model, with_reward_model):
    from _recipe_utils import REPO_ROOT, load_recipe

    monkeypatch.chdir(REPO_ROOT)
    seen = _history(monkeypatch)
    flags = ["--config", "recipes/configs/ppo/tiny-cpu.yaml", "--dataset_path", CONSTRAINT_PROMPTS,
             "--output_dir", str(tmp_path / "ppo"), "--max_steps", "4", "--logging_steps", "1",
             "--reward_functions", "instruction_following"]  # fmt: skip
    if with_reward_model:
        flags += ["--reward_model_path", tiny_reward_model, "--reward_weights", "0.5", "2.0"]
    folder = load_recipe("ppo").main(flags)
    assert (folder / "adapter_model.safetensors").exists()
    logs = seen["logs"]
    if with_reward_model:
        assert seen["names"] == ["reward_model", "instruction_following"]
        weighted = 0.5 * logs["rewards/reward_model/mean"] + 2.0 * logs["rewards/instruction_following/mean"]
        assert logs["objective/scores"] == pytest.approx(weighted, abs=1e-5)
    else:
        assert seen["names"] == ["instruction_following"]
        assert 0.0 <= logs["objective/scores"] <= 1.0  # a fraction of constraints followed


@pytest.mark.parametrize("with_reward_model", [False, True], ids=["function", "reward_model+function"])
def test_online_grpo_recipe_trains_with_the_named_reward(tmp_path, monkeypatch, tiny_reward_model, with_reward_model):
    from _recipe_utils import REPO_ROOT, load_recipe

    monkeypatch.chdir(REPO_ROOT)
    seen = _history(monkeypatch)
    flags = ["--config", "recipes/configs/grpo/tiny-cpu-online.yaml", "--dataset_path", CONSTRAINT_PROMPTS,
             "--output_dir", str(tmp_path / "grpo"), "--max_steps", "2", "--logging_steps", "1",
             "--reward_functions", "instruction_following"]  # fmt: skip
    if with_reward_model:
        flags += ["--reward_model_path", tiny_reward_model, "--reward_weights", "0.5", "2.0"]
    folder = load_recipe("grpo").main(flags)
    assert (folder / "adapter_model.safetensors").exists()
    assert not (folder / "reward_model").exists()  # nothing trained first: the data is prompts only
    logs = seen["logs"]
    assert "rewards/instruction_following/mean" in logs
    if with_reward_model:
        assert seen["names"] == ["reward_model", "instruction_following"]
        weighted = 0.5 * logs["rewards/reward_model/mean"] + 2.0 * logs["rewards/instruction_following/mean"]
        assert logs["reward"] == pytest.approx(weighted, abs=1e-5)


@pytest.mark.parametrize("recipe_name", ["ppo", "grpo"])
def test_recipes_refuse_the_named_reward_on_prompts_without_constraints(tmp_path, monkeypatch, recipe_name):
    from _recipe_utils import REPO_ROOT, load_recipe

    from trl_ext import models

    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(
        models, "load_model", lambda *a, **k: pytest.fail("the model was loaded before the data check")
    )
    config = {"ppo": "ppo/tiny-cpu.yaml", "grpo": "grpo/tiny-cpu-online.yaml"}[recipe_name]
    with pytest.raises(ConstraintError, match="needs prompts with constraints"):
        load_recipe(recipe_name).main(["--config", f"recipes/configs/{config}", "--dataset_path",
                                       "recipes/data/prompts.jsonl", "--output_dir", str(tmp_path),
                                       "--reward_functions", "instruction_following"])  # fmt: skip


@pytest.mark.parametrize(
    "name, source, options",
    [
        ("prompts_with_constraints.jsonl", "prompts.jsonl", dict(max_requests=48, constraints_per_prompt="1-2",
         instructions=["punctuation:no_comma", "change_case:english_lowercase", "length_constraints:number_words",
                       "keywords:letter_frequency"])),
        ("hh-rlhf-ifeval-prompts.jsonl", "hh-rlhf-harmless-test.jsonl.gz", dict(max_requests=256)),
    ],
)  # fmt: skip
def test_shipped_constraint_prompts_are_what_their_command_makes(name, source, options):
    """recipes/data/README.md's commands regenerate the shipped files byte for byte."""
    from conftest import TEST_DATA

    requests, _ = constraints.read_requests(str(TEST_DATA / source), options.pop("max_requests"))
    rows = constraints.attach_constraints(requests, seed=0, **options)
    shipped = (TEST_DATA / name).read_text(encoding="utf-8").splitlines()
    assert [json.dumps(r, ensure_ascii=False) for r in rows] == shipped
