"""The recipes end to end on the tiny model, in-process on a CPU: train, save, card; QLoRA; resume; NaN guard; merge.

Also "does it learn" (held-out implicit-reward accuracy on the ToyTask test split) and a 2-process
`accelerate launch` run of the DPO recipe.
"""

import json
import logging
import math
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from _recipe_utils import RECIPES, REPO_ROOT, ParamSnapshot, StopAtStep, load_recipe, tiny_args, write_data
from safetensors.torch import load_file

from trl_ext import recipe
from trl_ext.models import resolve_model_name
from trl_ext.toy.synthetic import ToyTask
from trl_ext.toy.tiny import TINY_MODEL_ID

# Every test here trains the tiny model: the "tiny-model training" tier (`make test-slow`).
pytestmark = pytest.mark.slow

METHODS = ["sft", "reward", "dpo", "kto", "orpo"]
PAPERS = {"sft": "2203.02155", "reward": "2203.02155", "dpo": "2305.18290", "kto": "2402.01306", "orpo": "2403.07691"}


@pytest.fixture
def snapshot(monkeypatch):
    """Adds a ParamSnapshot to the callbacks every recipe passes to its trainer."""
    snap = ParamSnapshot()
    default = recipe.callbacks
    monkeypatch.setattr(recipe, "callbacks", lambda: [*default(), snap])
    return snap


def run(method, tmp_path, *flags, n=40, data=None):
    data = data or write_data(method, tmp_path, n)
    return load_recipe(method).main(tiny_args(method, data, tmp_path / "out", *flags))


@pytest.mark.parametrize("method", METHODS)
def test_recipe_trains_saves_and_writes_a_card(method, tmp_path, snapshot, tiny_model_path):
    out = run(method, tmp_path, "--max_steps", "4", "--eval_fraction", "0.25")

    assert out == tmp_path / "out"
    files = set(os.listdir(out))
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "README.md"} <= files
    assert not any(f.endswith(".bin") and f != "training_args.bin" for f in files)  # safetensors only
    losses = [log["loss"] for log in snapshot.logs if "loss" in log]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    # every trainable parameter (LoRA A and B, the reward head) moved; the base stayed frozen
    assert snapshot.before and snapshot.changed() == list(snapshot.before)
    assert all("lora_" in n or "score" in n for n in snapshot.before)

    card = (out / "README.md").read_text()
    assert PAPERS[method] in card and f"Base model: `{TINY_MODEL_ID}`" in card
    assert "base_model:" not in card  # the front matter's base_model is a Hub id, and the tiny model has none
    assert "Rows: 30 for training, 10 for evaluation" in card
    assert re.search(rf"`[^`]+\.jsonl`: shape `\w+`, 40 rows read, 0 dropped as invalid, 40 rows for {method}", card)
    assert f"recipes/{method}.py --config" in card and "--max_steps 4" in card
    assert "| learning_rate | 0.0005 |" in card and "| lora_r | 16 |" in card
    assert "eval_loss" in card and "train_loss" in card and "- trl: 1.16" in card


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_conversational_data_works_with_the_tiny_chat_template(method, tmp_path, snapshot):
    data = write_data(method, tmp_path, 24, conversational=True)
    assert isinstance(json.loads(data.read_text().splitlines()[0])["prompt"], list)
    run(method, tmp_path, "--max_steps", "2", "--eval_fraction", "0", data=data)
    assert snapshot.changed()


def test_qlora_on_cpu_trains_lora_on_a_4bit_nf4_double_quantized_base(tmp_path, snapshot):
    run(method := "dpo", tmp_path, "--max_steps", "3", "--load_in_4bit", "true", "--use_bnb_nested_quant", "true")
    assert "Linear4bit" in snapshot.module_types, f"{method}: the base was not quantized"
    assert snapshot.changed() == list(snapshot.before)
    cfg = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    linear = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert {name.rsplit(".", 1)[-1] for name in cfg["target_modules"]} == linear  # all linear layers, not lm_head


def test_merge_adapter_writes_a_16bit_model_equal_to_base_plus_adapter(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = run("dpo", tmp_path, "--max_steps", "3", "--merge_adapter", "true", "--eval_fraction", "0")
    assert out == tmp_path / "out" / "merged"
    tensors = load_file(out / "model.safetensors")
    assert tensors and all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert not any("lora" in k for k in tensors)
    assert (out / "README.md").exists() and (out / "tokenizer.json").exists()

    ids = torch.tensor([list(range(5, 40))])
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(resolve_model_name(TINY_MODEL_ID), dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, out.parent)
    with torch.no_grad():
        diff = (merged(ids).logits - adapted(ids).logits).abs().max().item()
    assert 0 < diff < 0.05  # bf16 rounding of the merged weights, nothing more


def test_merged_reward_model_keeps_its_trained_score_head(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    out = run("reward", tmp_path, "--max_steps", "3", "--merge_adapter", "true", "--eval_fraction", "0")
    merged = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForSequenceClassification.from_pretrained(resolve_model_name(TINY_MODEL_ID), num_labels=1)
    adapted = PeftModel.from_pretrained(base, out.parent)
    ids = torch.tensor([list(range(5, 30))])
    with torch.no_grad():
        a, b = merged(ids).logits, adapted(ids).logits
    assert a.shape == (1, 1) and abs(a.item() - b.item()) < 0.05


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tmp_path, monkeypatch):
    data = write_data("dpo", tmp_path, 64)
    flags = ["--max_steps", "8", "--save_strategy", "steps", "--save_steps", "4", "--eval_fraction", "0"]
    dpo = load_recipe("dpo")
    dpo.main(tiny_args("dpo", data, tmp_path / "full", *flags))

    default = recipe.callbacks
    monkeypatch.setattr(recipe, "callbacks", lambda: [*default(), StopAtStep(4)])
    with pytest.raises(StopAtStep.Killed):
        dpo.main(tiny_args("dpo", data, tmp_path / "killed", *flags))
    assert (tmp_path / "killed" / "checkpoint-4").is_dir()
    assert not (tmp_path / "killed" / "adapter_model.safetensors").exists()  # nothing final from a killed run

    monkeypatch.setattr(recipe, "callbacks", default)
    dpo.main(tiny_args("dpo", data, tmp_path / "killed", *flags, "--resume_from_checkpoint", "true"))
    full = load_file(tmp_path / "full" / "adapter_model.safetensors")
    resumed = load_file(tmp_path / "killed" / "adapter_model.safetensors")
    halfway = load_file(tmp_path / "killed" / "checkpoint-4" / "adapter_model.safetensors")
    assert full.keys() == resumed.keys()
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=0, atol=0)
    assert any(not torch.equal(halfway[k], full[k]) for k in full)  # the resumed run did train steps 5-8


@pytest.mark.parametrize(
    ("recipe_name", "config", "steps"),
    [
        ("ppo", "tiny-cpu", 8),  # 4 optimizer steps per rollout: killed after the first rollout
        ("grpo", "tiny-cpu", 8),  # offline: RankedGRPOTrainer
        ("grpo", "tiny-cpu-online", 4),  # online: the reward model saved by the killed run is reused on resume
    ],
)
def test_our_trainers_resume_to_the_same_weights(tmp_path, monkeypatch, recipe_name, config, steps):
    module = load_recipe(recipe_name)
    half = steps // 2
    flags = ["--max_steps", str(steps), "--save_strategy", "steps", "--save_steps", str(half), "--logging_steps", "1"]

    data = RECIPES / "data" / ("prompts.jsonl" if recipe_name == "ppo" else "ranked.jsonl")

    def args(out, *extra):
        return ["--config", str(RECIPES / "configs" / recipe_name / f"{config}.yaml"), "--output_dir", str(out),
                "--dataset_path", str(data), *flags, *extra]  # fmt: skip

    module.main(args(tmp_path / "full"))
    default = recipe.callbacks
    monkeypatch.setattr(recipe, "callbacks", lambda: [*default(), StopAtStep(half)])
    with pytest.raises(StopAtStep.Killed):
        module.main(args(tmp_path / "killed"))
    assert not (tmp_path / "killed" / "adapter_model.safetensors").exists()
    monkeypatch.setattr(recipe, "callbacks", default)
    module.main(args(tmp_path / "killed", "--resume_from_checkpoint", "true"))

    files = ["adapter_model.safetensors"] + (["value_head.safetensors"] if recipe_name == "ppo" else [])
    for name in files:
        full, resumed = load_file(tmp_path / "full" / name), load_file(tmp_path / "killed" / name)
        halfway = load_file(tmp_path / "killed" / f"checkpoint-{half}" / name)
        assert full.keys() == resumed.keys()
        for k in full:
            torch.testing.assert_close(resumed[k], full[k], rtol=0, atol=0)
        assert any(not torch.equal(halfway[k], full[k]) for k in full), name  # the resumed run trained on


def test_diverging_run_stops_with_a_clear_error_and_saves_nothing(tmp_path):
    # A learning rate this large drives the weights to inf within a few steps, as a real divergence does.
    with pytest.raises(recipe.NonFiniteLossError, match=r"step \d+: .*NaN/inf|nan|inf") as err:
        run("dpo", tmp_path, "--max_steps", "20", "--learning_rate", "1e38", "--eval_fraction", "0")
    assert "nothing was saved as final or pushed" in str(err.value)
    out = tmp_path / "out"
    assert not (out / "adapter_model.safetensors").exists() and not (out / "README.md").exists()


# ------------------------------------------------------------------------------------------------ slow tier
def implicit_reward_accuracy(model_dir, pairs, method):
    """Held-out preference accuracy of the implicit reward on `pairs` (TRL's definitions).

    DPO/KTO: r(x, y) = log pi(y|x) - log pi_ref(y|x) (summed over completion tokens; pi_ref = base, adapter off).
    ORPO (no reference): r(x, y) = mean token log pi(y|x), the quantity ORPO's `rewards/*` metrics report.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(resolve_model_name(TINY_MODEL_ID))
    model = PeftModel.from_pretrained(base, str(model_dir)).eval()

    def logps(prompt, response):
        n_prompt = len(tok(prompt)["input_ids"])
        ids = torch.tensor([tok(prompt + response)["input_ids"] + [tok.eos_token_id]])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
        return lp[n_prompt - 1 :]  # completion tokens (and EOS)

    def reward(prompt, response):
        if method == "orpo":
            return logps(prompt, response).mean().item()
        policy = logps(prompt, response).sum().item()
        with model.disable_adapter():
            return policy - logps(prompt, response).sum().item()

    wins = [reward(p["prompt"], p["chosen"]) > reward(p["prompt"], p["rejected"]) for p in pairs]
    return sum(wins) / len(wins)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "n_train", "threshold"), [("dpo", 400, 0.7), ("kto", 600, 0.7), ("orpo", 400, 0.62)]
)
def test_preference_methods_learn_the_toy_rule(method, n_train, threshold, tmp_path):
    """Train on the ToyTask train split (topics disjoint from the test split), evaluate on 200 held-out test pairs.

    Chance is 0.5 (a 200-pair accuracy has a standard error of about 0.035 there); the untrained model (adapter off,
    or the base's mean log-probability for ORPO) is at chance by construction or close to it.
    """
    data = write_data(method, tmp_path, n_train)
    out = load_recipe(method).main(tiny_args(method, data, tmp_path / "out", "--eval_fraction", "0",
                                             "--num_train_epochs", "2"))  # fmt: skip
    test_pairs = ToyTask(seed=1).rows("pairs", 200, split="test")
    accuracy = implicit_reward_accuracy(out, test_pairs, method)
    print(f"{method}: held-out implicit-reward accuracy {accuracy:.3f} ({n_train} training rows, 2 epochs)")
    assert accuracy >= threshold, f"{method}: held-out implicit-reward accuracy {accuracy:.3f} < {threshold}"


@pytest.mark.multiprocess
def test_dpo_two_process_cpu_run_through_accelerate_launch_trains_and_saves_once(tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo): both train on their shard; only the main process saves."""
    data = write_data("dpo", tmp_path, 64)
    # Instrument without touching the recipe: record which ranks save weights or write the card.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        textwrap.dedent(f"""
        import os, peft
        _orig = peft.PeftModel.save_pretrained
        def _record(self, *args, **kwargs):
            with open({str(tmp_path / "saves.txt")!r}, "a") as f:
                f.write(os.environ.get("RANK", "?") + " " + str(args[0] if args else "") + "\\n")
            return _orig(self, *args, **kwargs)
        peft.PeftModel.save_pretrained = _record
    """)
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", "recipes/accelerate_configs/cpu_2proc.yaml",
        "recipes/dpo.py", *tiny_args("dpo", data, tmp_path / "out", "--max_steps", "4", "--eval_fraction", "0"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    saves = (tmp_path / "saves.txt").read_text().split("\n")[:-1]
    assert saves == [f"0 {tmp_path / 'out'}"], saves
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| num_processes | 2 |" in card and "| effective_batch_size | 16 |" in card
    assert "accelerate launch --num_processes 2 recipes/dpo.py" in card
    # 4 steps x 8 rows x 2 processes = 64 rows = one epoch: both processes trained on their own half
    assert "| epoch | 1 |" in card


def test_kto_class_weights_are_logged_once_for_the_rows_trained_on(tmp_path, caplog):
    # the loader logged them for the whole file and the recipe again for its training split: two different numbers
    with caplog.at_level(logging.DEBUG):
        run("kto", tmp_path, "--max_steps", "1", "--eval_fraction", "0.25")
    lines = [r.getMessage() for r in caplog.records if "KTO classes" in r.getMessage() and r.levelno >= logging.INFO]
    assert len(lines) == 1 and "of the 30 training rows" in lines[0], lines
