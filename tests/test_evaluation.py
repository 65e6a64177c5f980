"""trl_ext.evaluation and trl_ext.eval_report: metrics against hand-computed values, model helpers on the tiny model."""

import json
import math

import pytest
import torch
from torch.testing import assert_close

from trl_ext import eval_report, model_card
from trl_ext import evaluation as ev
from trl_ext.tokenization import encode_completion


# ------------------------------------------------------------------------------------------------ pure metrics
def test_token_logps_is_log_softmax_at_the_label():
    logits = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]])  # (1, 2, 3)
    labels = torch.tensor([[1, 2]])
    z = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    assert_close(ev.token_logps(logits, labels), torch.tensor([[math.log(1 / 3), 3.0 - z]]))


def test_sequence_logps_sums_and_averages_over_the_mask():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = ev.sequence_logps(lp, mask)
    assert_close(out.sum, torch.tensor([-6.0, -1.0]))
    assert_close(out.mean, torch.tensor([-2.0, -0.5]))
    assert_close(out.count, torch.tensor([3.0, 2.0]))
    empty = ev.sequence_logps(lp[:1], torch.zeros(1, 3))
    assert empty.sum.item() == 0.0 and empty.mean.item() == 0.0


def test_preference_accuracy_counts_ties_as_half():
    chosen = torch.tensor([1.0, 2.0, 3.0, 0.0])
    rejected = torch.tensor([0.0, 2.0, 4.0, -1.0])
    assert ev.preference_accuracy(chosen, rejected) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert ev.preference_accuracy(chosen, rejected, tie=0.0) == pytest.approx(2 / 4)
    assert math.isnan(ev.preference_accuracy(torch.tensor([]), torch.tensor([])))
    assert ev.win_rate(torch.tensor([0.9, 0.1]), torch.tensor([0.5, 0.5])) == pytest.approx(0.5)


def test_implicit_rewards_and_margins():
    policy, ref = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -4.5])
    rewards = ev.implicit_reward(policy, ref)
    assert_close(rewards, torch.tensor([1.0, -0.5]))
    assert_close(ev.reward_margins(rewards[:1], rewards[1:]), torch.tensor([1.5]))


def test_pairwise_auc_over_all_good_bad_pairs():
    good, bad = torch.tensor([3.0, 1.0]), torch.tensor([2.0, 1.0, 0.0])
    # pairs: (3,2) (3,1) (3,0) win; (1,2) loses; (1,1) ties; (1,0) wins -> (4 + 0.5) / 6
    assert ev.pairwise_auc(good, bad) == pytest.approx(4.5 / 6)


def test_kl_estimates_by_hand():
    pol = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -9.0], [-2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    d = [[0.5, -1.0], [1.0]]  # log pi - log pi_ref on the masked tokens
    k1 = ev.kl_summary(pol, ref, mask, "k1")
    assert k1.per_token == pytest.approx((0.5 - 1.0 + 1.0) / 3)
    assert k1.per_sequence == pytest.approx(((0.5 - 1.0) + 1.0) / 2)
    k3 = ev.kl_summary(pol, ref, mask, "k3")
    f = lambda x: math.exp(-x) - 1 + x  # noqa: E731
    assert k3.per_token == pytest.approx((f(0.5) + f(-1.0) + f(1.0)) / 3, rel=1e-6)
    assert all(v >= 0 for v in k3.per_sequence_values.tolist())
    k2 = ev.kl_summary(pol, ref, mask, "k2")  # d^2 / 2
    assert k2.per_token == pytest.approx(sum(x * x / 2 for row in d for x in row) / 3)
    assert k2.per_sequence_values.tolist() == pytest.approx([(0.25 + 1.0) / 2, 0.5])
    with pytest.raises(ValueError, match="estimator"):
        ev.kl_summary(pol, ref, mask, "k4")


def test_summaries():
    s = ev.describe([1, 2, 3, 10])
    assert s == {"mean": 4.0, "std": pytest.approx(math.sqrt(12.5)), "min": 1, "median": 2.5, "max": 10}
    spread = ev.mean_and_spread([1.0, 2.0, 3.0, float("nan")])
    assert spread == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "n": 3}
    assert ev.mean_and_spread([0.5])["std"] == 0.0
    assert ev.mean_and_spread([])["n"] == 0


# ------------------------------------------------------------------------------------------------ tiny model
@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    return model, tokenizer


def _peft(model_path, init_lora_weights):
    """The tiny model with a LoRA adapter; init_lora_weights=False makes the adapter change the outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_path)
    config = LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=init_lora_weights)
    return get_peft_model(base, config).eval()


def _hand_logp(model, tokenizer, prompt, completion):
    """log pi(completion | prompt), summed over the completion tokens and EOS, one sequence at a time."""
    n_prompt = len(tokenizer(prompt)["input_ids"])
    ids = torch.tensor([tokenizer(prompt + completion)["input_ids"] + [tokenizer.eos_token_id]])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    return sum(logp[t, targets[t]].item() for t in range(n_prompt - 1, len(targets)))


PAIRS = [
    {"prompt": "apple: one two\n", "chosen": "sun sky", "rejected": "mud rot tar"},
    {"prompt": "river: red\n", "chosen": "oak owl bee fig", "rejected": "ash"},
    {"prompt": "stone: big old new far\n", "chosen": "tea", "rejected": "grub gnat"},
]


def test_implicit_reward_equals_the_hand_summed_logprob_difference(tiny_model_path):
    model = _peft(tiny_model_path, init_lora_weights=False)
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(tiny_model_path)
    prompts = [p["prompt"] for p in PAIRS]
    completions = [p["chosen"] for p in PAIRS]
    scores = ev.completion_scores(model, tokenizer, prompts, completions, batch_size=2, progress=False)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        policy = _hand_logp(model, tokenizer, p, c)
        with model.disable_adapter():
            ref = _hand_logp(model, tokenizer, p, c)
        assert scores.policy.sum[i].item() == pytest.approx(policy, abs=1e-4)
        assert scores.reference.sum[i].item() == pytest.approx(ref, abs=1e-4)
        assert scores.implicit_reward[i].item() == pytest.approx(policy - ref, abs=1e-4)
        n = len(tokenizer(c)["input_ids"]) + 1  # completion tokens + EOS
        assert scores.policy.count[i].item() == n
        assert scores.implicit_reward_mean[i].item() == pytest.approx((policy - ref) / n, abs=1e-4)
    assert (scores.implicit_reward.abs() > 1e-3).all()  # the adapter really changed the model


def test_batching_does_not_change_log_probs(tiny):
    model, tokenizer = tiny
    prompts = [p["prompt"] for p in PAIRS] * 2
    completions = [p["chosen"] for p in PAIRS] + [p["rejected"] for p in PAIRS]
    one = ev.completion_scores(model, tokenizer, prompts, completions, batch_size=1, progress=False)
    many = ev.completion_scores(model, tokenizer, prompts, completions, batch_size=4, progress=False)
    assert one.reference is None  # a full model without ref_model has no reference
    assert_close(one.policy.sum, many.policy.sum, atol=1e-4, rtol=1e-5)


def test_encode_completion_matches_trl_dpo_tokenization(tiny):
    """Our (prompt_ids, completion_ids) are the ones TRL 1.16's DPOTrainer trains on (plain and conversational)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = tiny
    conversational = [
        {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "sun"}],
         "rejected": [{"role": "assistant", "content": "mud rot"}]},
    ]  # fmt: skip
    for rows in (PAIRS, conversational):
        args = DPOConfig("/tmp/unused", use_cpu=True, bf16=False, report_to="none", max_length=None)
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
        for row, tokenized in zip(rows, trainer.train_dataset):
            for side in ("chosen", "rejected"):
                prompt_ids, completion_ids = encode_completion(tokenizer, row["prompt"], row[side])
                assert prompt_ids == tokenized["prompt_ids"]
                assert completion_ids == tokenized[f"{side}_ids"]


def test_kl_of_a_model_to_itself_is_zero(tiny_model_path, tiny):
    model = _peft(tiny_model_path, init_lora_weights=True)  # LoRA B = 0: the adapter is the identity
    _, tokenizer = tiny
    gens = ev.generate(model, tokenizer, [p["prompt"] for p in PAIRS], max_new_tokens=12, num_return_sequences=2, progress=False)  # fmt: skip
    kl = ev.kl_to_reference(model, gens, progress=False)
    assert kl.per_token == 0.0 and kl.per_sequence == 0.0
    plain, _ = tiny
    kl2 = ev.kl_to_reference(plain, gens, ref_model=plain, progress=False)
    assert kl2.per_token == 0.0
    # and a model equal to its reference ranks every pair as a tie: accuracy exactly 1/2
    assert ev.evaluate_pairs(model, tokenizer, PAIRS, progress=False).metrics()["preference_accuracy"] == 0.5


def test_kl_is_positive_for_a_changed_model(tiny_model_path, tiny):
    model = _peft(tiny_model_path, init_lora_weights=False)
    _, tokenizer = tiny
    gens = ev.generate(model, tokenizer, [p["prompt"] for p in PAIRS] * 4, max_new_tokens=16, progress=False)
    assert ev.kl_to_reference(model, gens, progress=False, estimator="k3").per_token > 0


def test_reference_model_needs_an_adapter_or_an_explicit_reference(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="no reference model"), ev.reference_model(model):
        pass
    with ev.reference_model(model, ref_model=model) as ref:
        assert ref is model


def test_generation_is_batched_consistently_and_reproducibly(tiny):
    model, tokenizer = tiny
    prompts = ["a\n", "river: red big old\n", "xy: z\n"]
    greedy_one = ev.generate(
        model, tokenizer, prompts, max_new_tokens=10, do_sample=False, batch_size=1, progress=False
    )
    greedy_all = ev.generate(
        model, tokenizer, prompts, max_new_tokens=10, do_sample=False, batch_size=3, progress=False
    )
    assert greedy_one.completion_ids == greedy_all.completion_ids  # left padding does not change the result
    a = ev.generate(model, tokenizer, prompts, max_new_tokens=10, seed=3, num_return_sequences=2, progress=False)
    b = ev.generate(model, tokenizer, prompts, max_new_tokens=10, seed=3, num_return_sequences=2, progress=False)
    assert a.completions == b.completions and len(a.completions) == 6
    assert a.prompts == [p for p in prompts for _ in range(2)]
    for ids, done in zip(a.completion_ids, a.finished):
        assert len(ids) <= 10 and (ids[-1] == tokenizer.eos_token_id) == done
        assert tokenizer.pad_token_id not in ids[:-1] or not done
    assert ev.completion_lengths(a, "tokens") == [len(ids) - d for ids, d in zip(a.completion_ids, a.finished)]


def test_reward_scores_and_accuracy_of_a_reward_model(tiny_model_path, tiny):
    from transformers import AutoModelForSequenceClassification

    _, tokenizer = tiny
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1).eval()
    rm.config.pad_token_id = tokenizer.pad_token_id
    prompts = [p["prompt"] for p in PAIRS]
    scores = ev.reward_scores(rm, tokenizer, prompts, [p["chosen"] for p in PAIRS], batch_size=2, progress=False)
    for i, p in enumerate(PAIRS):  # one at a time, as RewardTrainer formats it: prompt + completion + EOS
        ids = torch.tensor([tokenizer(p["prompt"] + p["chosen"])["input_ids"] + [tokenizer.eos_token_id]])
        with torch.no_grad():
            assert scores[i].item() == pytest.approx(rm(ids).logits[0, 0].item(), abs=1e-4)
    acc = ev.reward_model_accuracy(rm, tokenizer, PAIRS, progress=False)
    by_hand = []
    for p in PAIRS:  # the same pairs scored one at a time, by hand
        chosen, rejected = (
            rm(torch.tensor([tokenizer(p["prompt"] + p[side])["input_ids"] + [tokenizer.eos_token_id]])).logits[0, 0]
            for side in ("chosen", "rejected")
        )
        by_hand.append((chosen - rejected).item())
    assert acc["reward_model_accuracy"] == pytest.approx(sum((m > 0) + 0.5 * (m == 0) for m in by_hand) / len(PAIRS))
    assert acc["reward_model_margin"] == pytest.approx(sum(by_hand) / len(PAIRS), abs=1e-4)


def test_evaluate_policy_reports_everything(tiny_model_path, tiny):
    from trl_ext.toy.synthetic import quality

    model = _peft(tiny_model_path, init_lora_weights=False)
    _, tokenizer = tiny
    labelled = [{"prompt": "a\n", "completion": "sun", "label": True}, {"prompt": "a\n", "completion": "mud", "label": False}]  # fmt: skip
    report = ev.evaluate_policy(
        model, tokenizer, pairs=PAIRS, labelled=labelled, prompts=["a\n", "b\n"], num_samples=2,
        score_fn=lambda prompts, completions: [quality(c) for c in completions], max_new_tokens=8, progress=False,
    )  # fmt: skip
    m = report["metrics"]
    for key in ("preference_accuracy", "likelihood_accuracy", "reference_likelihood_accuracy", "reward_margin",
                "label_auc", "kl_per_token", "length_mean", "reference_length_mean", "win_rate", "score_mean"):  # fmt: skip
        assert key in m, key
    assert m["n_pairs"] == 3 and len(report["distributions"]["length_after"]) == 4
    # each pair's implicit-reward margin, summed log-probabilities computed by hand under the policy and the reference
    expected = []
    for p in PAIRS:
        policy = {side: _hand_logp(model, tokenizer, p["prompt"], p[side]) for side in ("chosen", "rejected")}
        with model.disable_adapter():
            ref = {side: _hand_logp(model, tokenizer, p["prompt"], p[side]) for side in ("chosen", "rejected")}
        expected.append((policy["chosen"] - ref["chosen"]) - (policy["rejected"] - ref["rejected"]))
    assert_close(
        torch.tensor(report["distributions"]["implicit_reward_margin"]), torch.tensor(expected), atol=1e-4, rtol=0
    )
    assert m["reward_margin"] == pytest.approx(sum(expected) / 3, abs=1e-4)
    assert m["preference_accuracy"] == pytest.approx(sum(x > 0 for x in expected) / 3)
    # the policy's mean score is the mean true quality of its own samples (all 4 are in report["samples"])
    assert m["score_mean"] == pytest.approx(sum(quality(r["policy"]) for r in report["samples"]) / 4)


# ------------------------------------------------------------------------------------------------ reports
def _report():
    return {
        "metrics": {"preference_accuracy": 0.75, "kl_per_token": 0.0123, "length_mean": 12.0, "custom": float("nan")},
        "distributions": {
            "margin_before": [0.0, 1.0, -1.0],
            "margin_after": [1.0, 2.0, 0.5],
            "implicit_reward_margin": [1.0, 1.0, 1.5],
            "length_before": [3, 4, 5],
            "length_after": [4, 6, 8],
            "score_after": [0.2, 0.4],
        },  # fmt: skip
        "samples": [{"prompt": "p|q", "reference": "a", "policy": "b"}],
    }


def test_markdown_table_orders_known_metrics_first():
    table = eval_report.markdown_table({"zzz": 1, "kl_per_token": 0.01234, "preference_accuracy": 0.5})
    rows = table.splitlines()
    assert rows[0] == "| metric | value | meaning |"
    assert rows[2].startswith("| preference_accuracy | 0.5 |") and rows[3].startswith("| kl_per_token | 0.01234 |")
    assert rows[4] == "| zzz | 1 |  |"
    assert "KL(pi \\|\\| pi_ref)" in rows[3]  # pipes inside a cell are escaped


def test_write_report_writes_json_markdown_and_pngs(tmp_path):
    files = eval_report.write_report(_report(), tmp_path / "eval", extra={"model": "m"})
    assert set(files["figures"]) == {"reward_margin", "likelihood_margin", "length", "score"}
    for path in files["figures"].values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(files["json"].read_text())
    assert data["model"] == "m" and data["metrics"]["preference_accuracy"] == 0.75
    md = files["markdown"].read_text()
    assert "| preference_accuracy | 0.75 |" in md and "| custom | n/a |" in md
    assert "![length](length.png)" in md and "p\\|q" in md


def test_update_model_card_appends_once_and_copies_figures(tmp_path):
    files = eval_report.write_report(_report(), tmp_path / "eval")
    card = tmp_path / "model" / "README.md"
    card.parent.mkdir()
    card.write_text("---\nbase_model: x\n---\n\n# my model\n")
    eval_report.update_model_card(card, {"preference_accuracy": 0.75}, files["figures"])
    eval_report.update_model_card(card, {"preference_accuracy": 0.8}, files["figures"])  # replaces, not appends
    text = card.read_text()
    assert text.startswith("---\nbase_model: x\n---\n\n# my model\n")
    assert text.count(model_card.CARD_BEGIN) == 1 and "| preference_accuracy | 0.8 |" in text
    assert "![length](eval/length.png)" in text and (tmp_path / "model" / "eval" / "length.png").exists()
