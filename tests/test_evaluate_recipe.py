"""recipes/evaluate.py end to end on the tiny model: every input shape, a reward model, adapter vs merged model, card."""

import json

import pytest
import torch
from _recipe_utils import REPO_ROOT, load_recipe

from trl_ext.toy.synthetic import ToyTask

FAST = ["--num_prompts", "4", "--max_new_tokens", "8", "--max_pairs", "12", "--batch_size", "4"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model_path):
    """A LoRA adapter on the tiny model whose weights really change the outputs (as a trained one would)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(folder)
    (folder / "README.md").write_text("---\nlibrary_name: peft\n---\n\n# tiny adapter\n")
    merged = folder / "merged"
    model.merge_and_unload().save_pretrained(merged)
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(merged)
    return folder


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, tiny_model_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path_factory.mktemp("rm")
    torch.manual_seed(1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1)
    rm.config.pad_token_id = tokenizer.pad_token_id
    rm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def evaluate(*argv):
    return load_recipe("evaluate").main([str(a) for a in argv])


def data(tmp_path, shape, n=12):
    return ToyTask(seed=3).write_jsonl(shape, n, tmp_path / f"{shape}.jsonl", split="test")


def test_adapter_on_pairs_writes_metrics_plots_and_updates_the_card(adapter, tmp_path):
    out = tmp_path / "eval"
    files = evaluate("--model_name_or_path", adapter, "--dataset_path", data(tmp_path, "pairs"),
                     "--output_dir", out, "--update_model_card", "true", *FAST)  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["n_pairs"] == 12
    for key in ("preference_accuracy", "likelihood_accuracy", "kl_per_token", "length_mean", "reference_length_mean"):
        assert key in metrics, key
    assert metrics["kl_per_token"] != 0.0  # the adapter changes the model, and the reference is its base
    assert {p.name for p in out.glob("*.png")} == {"reward_margin.png", "likelihood_margin.png", "length.png"}
    assert "| preference_accuracy |" in (out / "metrics.md").read_text()
    card = (adapter / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\n---\n\n# tiny adapter\n")
    assert (
        "## Evaluation" in card and "![length](eval/length.png)" in card and (adapter / "eval" / "length.png").exists()
    )
    assert files["json"] == out / "metrics.json"


@pytest.mark.parametrize(
    ("shape", "present", "absent"),
    [
        ("pairwise_ab", ["preference_accuracy"], ["label_auc"]),
        ("ranked", ["preference_accuracy"], ["label_auc"]),
        ("pairs_with_lengths", ["preference_accuracy"], ["label_auc"]),
        ("binary", ["label_auc", "good_reward"], ["preference_accuracy"]),
        ("prompts", ["kl_per_token", "length_mean"], ["preference_accuracy", "label_auc"]),
    ],
)
def test_every_input_shape(adapter, tmp_path, shape, present, absent):
    evaluate("--model_name_or_path", adapter, "--dataset_path", data(tmp_path, shape), "--output_dir", tmp_path / "e",
             "--plots", "false", *FAST)  # fmt: skip
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())["metrics"]
    assert all(k in metrics for k in present), metrics
    assert not any(k in metrics for k in absent), metrics
    assert not list((tmp_path / "e").glob("*.png"))


def test_reward_model_accuracy_and_win_rate(adapter, reward_model, tmp_path):
    evaluate("--model_name_or_path", adapter, "--dataset_path", data(tmp_path, "pairs"), "--output_dir", tmp_path / "e",
             "--reward_model_name_or_path", reward_model, *FAST)  # fmt: skip
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["reward_model_accuracy"] <= 1.0 and 0.0 <= metrics["win_rate"] <= 1.0
    assert "score_mean" in metrics and "reference_score_mean" in metrics
    assert (tmp_path / "e" / "score.png").exists()


def test_merged_model_with_its_base_gives_the_adapters_numbers(adapter, tiny_model_path, tmp_path):
    pairs = data(tmp_path, "pairs")
    evaluate("--model_name_or_path", adapter, "--dataset_path", pairs, "--output_dir", tmp_path / "a",
             "--num_prompts", "0", "--plots", "false")  # fmt: skip
    evaluate("--model_name_or_path", adapter / "merged", "--base_model_name_or_path", tiny_model_path,
             "--dataset_path", pairs, "--output_dir", tmp_path / "m", "--num_prompts", "0", "--plots", "false")  # fmt: skip
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())["metrics"]
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())["metrics"]
    assert a["preference_accuracy"] == m["preference_accuracy"]
    assert a["reward_margin"] == pytest.approx(m["reward_margin"], abs=1e-3)


def test_full_model_without_a_base_reports_what_needs_no_reference(adapter, tmp_path):
    evaluate("--model_name_or_path", adapter / "merged", "--dataset_path", data(tmp_path, "pairs"),
             "--output_dir", tmp_path / "e", "--plots", "false", *FAST)  # fmt: skip
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())["metrics"]
    assert "likelihood_accuracy" in metrics and "length_mean" in metrics
    assert "preference_accuracy" not in metrics and "kl_per_token" not in metrics


def test_yaml_config_parses(tmp_path, adapter):
    config = tmp_path / "eval.yaml"
    config.write_text(f"model_name_or_path: {adapter}\ndataset_path: {data(tmp_path, 'pairs')}\nmax_pairs: 3\n")
    (args,) = (
        load_recipe("evaluate").make_parser().parse_args_and_config(["--config", str(config), "--num_prompts", "2"])
    )
    assert args.max_pairs == 3 and args.num_prompts == 2 and args.output_dir == "eval"


def test_the_docstring_command_names_existing_files():
    doc = load_recipe("evaluate").__doc__
    assert "python recipes/evaluate.py --model_name_or_path outputs/dpo-tiny-cpu" in doc
    assert (REPO_ROOT / "recipes" / "data" / "pairs.jsonl").exists()


def test_adapter_on_a_4bit_nf4_base(adapter, tmp_path):
    """QLoRA-trained adapters are evaluated on a 4-bit base (bitsandbytes quantizes on a CPU too)."""
    from trl_ext.models import load_policy

    model, ref_model, _ = load_policy(str(adapter), load_in_4bit=True, dtype="float32")
    assert ref_model is None and "Linear4bit" in {type(m).__name__ for m in model.modules()}
    evaluate("--model_name_or_path", adapter, "--dataset_path", data(tmp_path, "pairs"), "--output_dir", tmp_path / "e",
             "--load_in_4bit", "true", "--dtype", "float32", "--plots", "false", *FAST)  # fmt: skip
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())["metrics"]
    assert 0 <= metrics["preference_accuracy"] <= 1 and metrics["kl_per_token"] != 0.0


def test_pairs_are_called_held_out_only_when_the_run_did_not_train_on_them(tmp_path):
    from trl_ext import eval_report

    trained = tmp_path / "train.jsonl"
    trained.write_text("{}\n")
    card = f"# run\n\n- Data: `{trained}` (shape `pairs`)\n"
    assert eval_report.pairs_label(str(trained), card).startswith("pairs from the training file")
    assert eval_report.pairs_label(str(tmp_path / "other.jsonl"), card) == "held-out pairs"
    assert "not recorded" in eval_report.pairs_label(str(trained), None)
    table = eval_report.markdown_table({"preference_accuracy": 0.5}, pairs_label="pairs from the training file")
    assert "held-out" not in table and "pairs from the training file" in table


def test_the_reward_margin_figure_shows_the_reward_margin_metric(tmp_path):
    pytest.importorskip("matplotlib")
    from trl_ext import eval_report

    # it showed log-likelihood margins (mean 24) under the name of the metric reward_margin (0.12)
    dists = {"margin_before": [24.0, 23.0], "margin_after": [24.2, 23.04], "implicit_reward_margin": [0.2, 0.04]}
    figures = eval_report.plot_distributions(dists, tmp_path)
    assert set(figures) == {"reward_margin", "likelihood_margin"}


def test_constraint_prompts_give_pass_rates_of_base_and_trained_with_the_paired_gain(adapter, tmp_path, monkeypatch):
    """Greedy answers of the adapter and of its base on constraint prompts: a policy stubbed to follow a lowercase
    constraint only when the adapter is on scores 1.0 against the base's 0.0, a paired gain of 1 with SE 0."""
    from trl_ext.evaluation import instruction_following as ifollow
    from trl_ext.evaluation.generation import Generations

    def generate(model, tokenizer, prompts, **kwargs):
        lora = [m for m in model.modules() if hasattr(m, "lora_A")]
        adapter_on = bool(lora) and not any(m.disable_adapters for m in lora)
        answer = "all in lowercase." if adapter_on else "Not Lowercase."
        n = len(prompts)
        return Generations(list(prompts), [answer] * n, [[1]] * n, [[5, 2]] * n, [True] * n)

    monkeypatch.setattr(ifollow, "generate", generate)
    prompts = tmp_path / "prompts.jsonl"
    row = {"prompt": [{"role": "user", "content": "Say hi in lowercase."}],
           "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}  # fmt: skip
    prompts.write_text("\n".join(json.dumps(row) for _ in range(6)) + "\n")
    out = tmp_path / "eval"
    evaluate("--model_name_or_path", adapter, "--constraint_prompts_path", prompts, "--output_dir", out,
             "--max_constraint_prompts", "5", "--plots", "false")  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["if_prompts"] == 5
    assert (metrics["reference_if_prompt_strict"], metrics["if_prompt_strict"]) == (0.0, 1.0)
    assert (metrics["if_gain"], metrics["if_paired_se"]) == (1.0, 0.0)
    table = (out / "metrics.md").read_text()
    assert "IFEval prompt-level strict" in table and "(follows) all in lowercase." in table


def test_constraint_prompts_without_constraints_are_refused_before_a_model_loads(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    with pytest.raises(ValueError, match="instruction_following needs prompts with constraints"):
        evaluate(
            "--model_name_or_path", "no-such-model", "--constraint_prompts_path", prompts, "--output_dir", tmp_path
        )
    with pytest.raises(ValueError, match="--dataset_path .* and/or --constraint_prompts_path"):
        evaluate("--model_name_or_path", "no-such-model", "--output_dir", tmp_path)
