import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_ext.models import resolve_model_name
from trl_ext.toy.synthetic import BAD_WORDS, GOOD_WORDS, SHAPES, ToyTask, quality
from trl_ext.toy.tiny import TINY_MODEL_ID


def test_tiny_model_loads_offline_and_tokenizer_is_prefix_stable(tiny_model_path):
    path = resolve_model_name(TINY_MODEL_ID)
    assert path == str(tiny_model_path)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.vocab_size == len(tok) == 260
    assert tok("abc")["input_ids"] == [tok.convert_tokens_to_ids(c) for c in "abc"]  # no EOS appended
    assert tok.decode(tok("héllo wörld")["input_ids"]) == "héllo wörld"
    prompt = [{"role": "user", "content": "hi"}]
    p_ids = tok.apply_chat_template(prompt, add_generation_prompt=True)["input_ids"]
    full = tok.apply_chat_template(prompt + [{"role": "assistant", "content": "yo"}])["input_ids"]
    assert full[: len(p_ids)] == p_ids and full[-1] == tok.eos_token_id
    assert (tiny_model_path / "model.safetensors").exists()


def test_tiny_model_is_deterministic(tiny_model_path):
    from trl_ext.toy.tiny import build_tiny_model

    model, _ = build_tiny_model(seed=0)
    saved = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    built, loaded = model.state_dict(), saved.state_dict()
    assert list(built) == list(loaded)  # the same tensors by name (a zip of the two would pair mismatched keys)
    for name, tensor in built.items():
        assert torch.equal(tensor, loaded[name]), name


@pytest.mark.multiprocess
def test_two_ranks_building_into_an_empty_cache_both_get_the_whole_model(tmp_path):
    """`accelerate launch` on a fresh machine: each rank may build the tiny model inside a process group, where
    transformers' `save_pretrained` writes weights on rank 0 only. Rank 1 building first must still cache a whole
    model (for rank 0 too), and no half-built folder may be left behind."""
    script = tmp_path / "build.py"
    script.write_text(
        textwrap.dedent("""
        import torch, torch.distributed as dist
        from transformers import AutoModelForCausalLM
        dist.init_process_group("gloo")
        from trl_ext.toy.tiny import build_tiny_model, tiny_model_path
        if dist.get_rank() == 1:  # a rank other than 0 builds first (the case that used to cache half a model)
            path = tiny_model_path()
            dist.barrier()
        else:
            dist.barrier()
            path = tiny_model_path()
        loaded, built = AutoModelForCausalLM.from_pretrained(path).state_dict(), build_tiny_model(0)[0].state_dict()
        assert loaded.keys() == built.keys() and all(torch.equal(loaded[k], built[k]) for k in built)
        dist.destroy_process_group()
    """)
    )
    env = dict(os.environ, TRL_EXT_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (folder,) = (tmp_path / "cache").iterdir()  # no half-built folders left behind
    files = sorted(f.name for f in folder.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(files)


def test_non_tiny_names_pass_through():
    assert resolve_model_name("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"


def test_quality_is_the_good_word_fraction():
    assert quality("sun sky rot") == 2 / 3
    assert quality("") == 0.0
    assert not set(GOOD_WORDS) & set(BAD_WORDS)


def test_every_shape_has_its_fields_and_is_reproducible():
    task = ToyTask(seed=3)
    for shape in SHAPES + ("sft", "prompts"):
        rows = task.rows(shape, 5)
        assert rows == task.rows(shape, 5)
        json.dumps(rows)
    r = task.rows("ranked", 20)
    assert all(sorted(x["ranking"]) == [1, 2, 3, 4] for x in r)
    lw = task.rows("pairs_with_lengths", 20)
    assert all(x["chosen_length"] == len(x["chosen"].split()) for x in lw)


def test_train_and_test_prompts_are_disjoint():
    task = ToyTask()
    train = {r["prompt"].split(":")[0] for r in task.rows("pairs", 300)}
    test = {r["prompt"].split(":")[0] for r in task.rows("pairs", 300, split="test")}
    assert train and test and not train & test


def test_clean_annotator_follows_quality_and_confounded_one_prefers_length():
    def agreement(rows, key):  # among pairs that differ on `key`, how often the chosen one has more of it
        differ = [r for r in rows if key(r["chosen"]) != key(r["rejected"])]
        return sum(key(r["chosen"]) > key(r["rejected"]) for r in differ) / len(differ)

    clean = ToyTask(gamma=0.0, seed=0).rows("pairs", 2000)
    confounded = ToyTask(gamma=1.5, seed=0).rows("pairs", 2000)
    words = lambda t: len(t.split())  # noqa: E731
    assert agreement(clean, quality) > 0.75
    assert abs(agreement(clean, words) - 0.5) < 0.06  # length carries no signal for the clean annotator
    assert agreement(confounded, words) > agreement(clean, words) + 0.15
    # Bradley-Terry check: P(chosen = higher utility) matches the logistic model on average
    differ = [r for r in clean if quality(r["chosen"]) != quality(r["rejected"])]
    expected = sum(1 / (1 + math.exp(-6 * abs(quality(r["chosen"]) - quality(r["rejected"])))) for r in differ)
    assert abs(agreement(clean, quality) - expected / len(differ)) < 0.03
