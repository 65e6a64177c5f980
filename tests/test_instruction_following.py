"""Instruction following as IFEval scores it: answers rewritten to follow constraints (`trl_ext.rewards.repairs`), the
greedy pass rate and its paired gain (`trl_ext.evaluation.instruction_following`), the train / held-out split by
request, and the generator's `repair` option on the tiny model."""

import json
import math

import pytest
from _recipe_utils import REPO_ROOT, load_recipe

from trl_ext.evaluation import instruction_following as ifollow
from trl_ext.evaluation.generation import Generations
from trl_ext.rewards.checkers import text_of, verify
from trl_ext.rewards.constraints import read_requests
from trl_ext.rewards.repairs import REPAIRABLE, repair, trim_to_sentences

DATA = REPO_ROOT / "recipes" / "data"
ANSWER = (
    "Drink water every day. Sleep well at night, and keep a routine. Walk for twenty minutes! "
    "Eat vegetables with each meal. Ask a doctor before any change."
)

# (instruction, kwargs) for every rule, each with an answer that does not follow it before the repair
CASES = [
    ("change_case:english_capital", {}),
    ("change_case:english_lowercase", {}),
    ("combination:repeat_prompt", {"prompt_to_repeat": "How do I stay healthy?"}),
    ("combination:two_responses", {}),
    ("detectable_content:number_placeholders", {"num_placeholders": 3}),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}),
    ("detectable_format:constrained_response", {}),
    ("detectable_format:json_format", {}),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 3}),
    ("detectable_format:number_bullet_lists", {"num_bullets": 4}),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}),
    ("detectable_format:title", {}),
    ("keywords:existence", {"keywords": ["garden", "music"]}),
    ("keywords:forbidden_words", {"forbidden_words": ["water", "doctor"]}),
    ("keywords:frequency", {"keyword": "sleep", "frequency": 3, "relation": "at least"}),
    ("keywords:frequency", {"keyword": "every", "frequency": 1, "relation": "less than"}),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}),
    ("punctuation:no_comma", {}),
    ("startend:end_checker", {"end_phrase": "Is there anything else I can help with?"}),
    ("startend:quotation", {}),
]


def test_every_rule_has_a_case_here():
    assert {i for i, _ in CASES} == set(REPAIRABLE)


@pytest.mark.parametrize(("instruction", "kwargs"), CASES, ids=[f"{i}-{n}" for n, (i, _) in enumerate(CASES)])
def test_each_rule_makes_a_failing_answer_pass_the_checker(instruction, kwargs):
    assert not verify(ANSWER, [instruction], [kwargs], prompt="How do I stay healthy?").all_followed
    fixed = repair(ANSWER, [instruction], [kwargs], prompt="How do I stay healthy?")
    assert fixed is not None and verify(fixed, [instruction], [kwargs], prompt="How do I stay healthy?").all_followed


def test_rules_combine_and_the_result_is_verified():
    ids = ["startend:quotation", "change_case:english_lowercase", "detectable_content:postscript"]
    kwargs = [{}, {}, {"postscript_marker": "P.S."}]
    fixed = repair(ANSWER, ids, kwargs)
    assert fixed.startswith('"') and fixed.endswith('"') and fixed == fixed.lower() and "p.s." in fixed
    assert verify(fixed, ids, kwargs).all_followed


def test_no_rule_or_no_verified_result_means_no_repair():
    # the response language has no rule: the answer stays unrepaired rather than half-repaired
    assert repair(ANSWER, ["change_case:english_lowercase", "language:response_language"], [{}, {"language": "ko"}]) is None  # fmt: skip
    # two bullets asked of a one-word answer: no split makes it pass
    assert repair("Yes", ["detectable_format:number_bullet_lists"], [{"num_bullets": 2}]) is None


def test_a_cut_answer_is_trimmed_to_whole_sentences_before_the_repair():
    cut = "First point here. Second point there. And then the third one was about to"
    assert trim_to_sentences(cut, max_words=70) == "First point here. Second point there."
    assert trim_to_sentences(cut, max_words=4) == "First point here."
    assert trim_to_sentences("no sentence ever ends", max_words=70) == ""
    assert (
        repair(cut, ["change_case:english_lowercase"], [{}], finished=False) == "first point here. second point there."
    )
    assert repair("never ends", ["change_case:english_lowercase"], [{}], finished=False) is None


# --- scoring and the paired gain -------------------------------------------------------------------------------------
LOWER = {"prompt": [{"role": "user", "content": "hi. answer in lowercase"}], "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}  # fmt: skip
TWO = {"prompt": "hi", "instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma"], "kwargs": [{}, {}]}  # fmt: skip


def test_score_answers_by_hand():
    answers = ifollow.score_answers([LOWER, TWO, TWO, LOWER], ["all lower", "lower, comma", "", "lower but cut"], [True, True, True, False], [2, 3, 0, 3])  # fmt: skip
    assert answers.followed == [(True,), (True, False), (False, False), (False,)]
    assert answers.prompt_strict == [1.0, 0.0, 0.0, 0.0]
    assert answers.instruction_strict == pytest.approx(2 / 6)  # an empty and a cut answer follow nothing
    summary = answers.summary()
    assert summary["prompt_strict"] == 0.25 and summary["cut_at_max_new_tokens"] == 1 and summary["mean_length_tokens"] == 2.0  # fmt: skip


def test_paired_gain_by_hand():
    # differences 1, 0, 1, -1: mean 0.25; sample variance (0.75^2 + 0.25^2 + 0.75^2 + 1.25^2) / 3 = 2.75 / 3
    gain = ifollow.paired_gain([0, 1, 0, 1], [1, 1, 1, 0])
    assert gain["gain"] == 0.25 and gain["n"] == 4
    assert gain["paired_se"] == pytest.approx(math.sqrt(2.75 / 3) / 2)
    assert ifollow.paired_gain([1.0, 0.0], [1.0, 0.0])["paired_se"] == 0.0
    with pytest.raises(ValueError, match="2 base results but 1"):
        ifollow.paired_gain([1, 0], [1])


def _stub_policy(monkeypatch, answer: str):
    """A policy whose every greedy answer is `answer` (ended with an end-of-turn token)."""

    def generate(model, tokenizer, prompts, **kwargs):
        assert kwargs["do_sample"] is False  # scored as IFEval is: greedy
        n = len(prompts)
        return Generations(list(prompts), [answer] * n, [[1]] * n, [[5, 2]] * n, [True] * n)

    monkeypatch.setattr(ifollow, "generate", generate)


@pytest.mark.parametrize(("answer", "rate"), [("always lowercase, always.", 1.0), ("SHOUTING, ALWAYS.", 0.0)])
def test_a_stub_policy_that_always_follows_or_always_breaks_scores_one_or_zero(monkeypatch, answer, rate):
    rows = [json.loads(line) for line in (DATA / "ifeval-heldout-prompts.jsonl").read_text().splitlines()]
    lowercase = [dict(r, instruction_id_list=["change_case:english_lowercase"], kwargs=[{}]) for r in rows[:20]]
    _stub_policy(monkeypatch, answer)
    result = ifollow.answer_constraint_prompts(None, None, lowercase, progress=False)
    assert result.summary()["prompt_strict"] == rate and result.instruction_strict == rate


# --- the shipped prompts: split by request ----------------------------------------------------------------------------
def _rows(name):  # split at newlines only: model answers may hold other line separators (U+2028)
    return [json.loads(line) for line in (DATA / name).read_text().split("\n") if line]


def test_held_out_prompts_share_no_request_with_training():
    source = DATA / "hh-rlhf-harmless-test.jsonl.gz"
    train, held_out = _rows("ifeval-train-prompts.jsonl"), _rows("ifeval-heldout-prompts.jsonl")
    train_requests, _ = read_requests(str(source), max_requests=len(train))
    held_requests, _ = read_requests(str(source), skip_requests=len(train))
    assert len(held_out) >= 200 and len(held_requests) == len(held_out)
    assert not set(train_requests) & set(held_requests)
    for rows, requests in ((train, train_requests), (held_out, held_requests)):
        assert all(text_of(r["prompt"]).startswith(q + "\n\n") for r, q in zip(rows, requests, strict=True))
    pairs = _rows("smollm2-ifeval-pairs.jsonl")
    prompts_of_pairs = {text_of(r["prompt"]).split("\n\n")[0] for r in pairs}
    assert not prompts_of_pairs & {q.split("\n\n")[0] for q in held_requests}


def test_skip_requests_continues_where_max_requests_stopped():
    source = str(DATA / "hh-rlhf-harmless-test.jsonl.gz")
    first, _ = read_requests(source, max_requests=10)
    rest, _ = read_requests(source, max_requests=5, skip_requests=10)
    both, _ = read_requests(source, max_requests=15)
    assert first + rest == both and len(rest) == 5


# --- the generator's repair option ---------------------------------------------------------------------------------------
def test_the_generator_adds_verified_repairs_as_the_chosen_side(tmp_path, monkeypatch, tiny_model_path):
    """The tiny model's answers, replaced by two fixed sentences that break lowercase and no-comma constraints: with
    `repair` each such prompt gets a rewritten chosen side that the checkers confirm; without, the tied answers
    give no pair. Prompts whose constraints have no rule (word and letter counts) stay unrepaired."""
    from trl_ext.evaluation import generation

    def fixed_answers(model, tokenizer, prompts, *, num_return_sequences, **kwargs):
        n = len(prompts) * num_return_sequences
        texts = ["Well, First answer here.", "Second, Answer there."] * (n // 2)
        return Generations(list(prompts), texts, [[1]] * n, [[5, 2]] * n, [True] * n)

    monkeypatch.setattr(generation, "generate", fixed_answers)
    monkeypatch.chdir(REPO_ROOT)
    config = REPO_ROOT / "recipes" / "configs" / "generate" / "tiny-cpu.yaml"
    common = ["--config", str(config), "--max_prompts", "16", "--num_generations", "2"]
    out = tmp_path / "pairs.jsonl"
    load_recipe("generate").main([*common, "--output_path", str(out), "--repair", "true"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    meta = json.loads((tmp_path / "pairs.jsonl.meta.json").read_text())
    repaired = [r for r in rows if r.get("chosen_repaired")]
    assert repaired and meta["counts"]["repaired"] == len(repaired)
    for row in repaired:  # every rewritten chosen side follows all of its prompt's constraints; rejected as sampled
        assert verify(row["chosen"], row["instruction_id_list"], row["kwargs"], text_of(row["prompt"])).all_followed
        assert row["rejected"] in ("Well, First answer here.", "Second, Answer there.")
    assert all(set(r["instruction_id_list"]) <= set(REPAIRABLE) for r in repaired)
    unrepaired = [r for r in rows if not r.get("chosen_repaired")]
    assert all(not set(r["instruction_id_list"]) <= set(REPAIRABLE) for r in unrepaired)
    plain = tmp_path / "plain.jsonl"
    load_recipe("generate").main([*common, "--output_path", str(plain)])
    assert len(plain.read_text().splitlines()) == len(rows) - len(repaired)
