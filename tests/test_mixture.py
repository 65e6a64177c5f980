"""`dataset_mixture`: several sources, each in its own layout with a row count or a fraction, drawn and shuffled with
the seed; the model card lists every source with rows read, dropped and used."""

import json

import pytest
from _recipe_utils import load_recipe

from trl_ext import model_card, recipe


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def openai_rows(n):
    return [{"input": {"messages": [{"role": "user", "content": f"q{i}"}]},
             "preferred_output": [{"role": "assistant", "content": "good"}],
             "non_preferred_output": [{"role": "assistant", "content": "bad"}]} for i in range(n)]  # fmt: skip


def parse(tmp_path, yaml_text, *flags):
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model_name_or_path: trl-ext/tiny-llama\noutput_dir: {tmp_path / 'out'}\nuse_cpu: true\n" + yaml_text
    )
    return recipe.parse(load_recipe("dpo").make_parser(), ["--config", str(config), *flags], script="dpo.py")


def test_a_mixture_draws_rows_and_fractions_of_each_source_in_its_own_layout(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", openai_rows(10))
    b = write_jsonl(tmp_path / "b.jsonl", [{"Q": f"x{i}", "A": "yes", "B": "no", "bad": None} for i in range(20)] + [{"Q": "", "A": "y", "B": "n"}])  # fmt: skip
    yaml_text = f"""dataset_mixture:
  - path: {a}
    rows: 6
  - path: {b}
    columns: {{prompt: Q, chosen: A, rejected: B}}
    fraction: 0.5
    options: {{conversational: true, on_error: drop}}
"""
    args, training_args, model_args = parse(tmp_path, yaml_text)
    train, _ = recipe.load_datasets(args, method="dpo", seed=1)
    assert len(train) == 16
    prompts = [row["prompt"][0]["content"] for row in train]
    assert sum(p.startswith("q") for p in prompts) == 6 and sum(p.startswith("x") for p in prompts) == 10
    assert prompts != sorted(prompts, key=lambda p: (p[0] != "q", p))  # shuffled together, not one after the other
    again, _ = recipe.load_datasets(parse(tmp_path, yaml_text)[0], method="dpo", seed=1)
    assert again.to_list() == train.to_list()  # the seed decides
    reports = [(r["source"], r["format"], r["rows_in"], r["dropped"], r["used"]) for r in args.data_reports]
    assert reports == [(str(a), "openai_dpo", 10, 0, 6), (str(b), None, 21, 1, 10)]
    card = model_card.card_for_run(method="dpo", model_args=model_args, recipe_args=args, training_args=training_args,
                             row_counts={"train": 16}, metrics={}, is_adapter=True)  # fmt: skip
    assert f"`{a}`: shape `pairs`, 10 rows read, 0 dropped as invalid, 10 rows for dpo, 6 of them used in the mixture; read as openai_dpo" in card  # fmt: skip
    assert f"`{b}`: shape `pairs`, 21 rows read, 1 dropped as invalid, 20 rows for dpo, 10 of them used in the mixture" in card  # fmt: skip
    assert "Data: `a mixture of 2 sources`" in card


def test_mixture_mistakes_are_clear(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", openai_rows(3))
    plain = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    args = parse(tmp_path, f"dataset_mixture:\n  - path: {a}\n    rows: 5\n")[0]
    with pytest.raises(ValueError, match=r"rows 5 asked, 3 available"):
        recipe.load_datasets(args, method="dpo")
    args = parse(tmp_path, f"dataset_mixture:\n  - path: {a}\n  - path: {plain}\n")[0]
    with pytest.raises(ValueError, match=r"every source must give the same columns .*conversational: true"):
        recipe.load_datasets(args, method="dpo")
    with pytest.raises(ValueError, match=r"give rows or fraction, not both"):
        parse(tmp_path, f"dataset_mixture:\n  - path: {a}\n    rows: 1\n    fraction: 0.5\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['weight'\]"):
        parse(tmp_path, f"dataset_mixture:\n  - path: {a}\n    weight: 2\n")
    with pytest.raises(ValueError, match="dataset_path or dataset_mixture, not both"):
        recipe.load_datasets(parse(tmp_path, f"dataset_path: {a}\ndataset_mixture:\n  - path: {a}\n")[0], method="dpo")
