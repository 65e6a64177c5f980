"""Unit tests of the shared recipe library `trl_ext.recipe` (fast: no training)."""

import logging
import math

import pytest
import torch
from _recipe_utils import load_recipe
from transformers import TrainerControl, TrainerState
from trl import DPOConfig

from trl_ext import model_card, models, recipe
from trl_ext.toy.synthetic import ToyTask
from trl_ext.toy.tiny import TINY_MODEL_ID


def _parse(*argv: str, tmp_path=None):
    out = ["--output_dir", str(tmp_path or "/tmp/trl-ext-unused"), "--use_cpu", "true"]  # no GPU: bf16 is refused
    return recipe.parse(recipe.make_parser(DPOConfig), [*argv, *out], script="recipes/dpo.py")


def test_parser_is_recipe_args_then_config_then_model_config():
    from trl import ModelConfig

    parser = recipe.make_parser(DPOConfig, extra_dataclasses=(load_recipe("kto").KTOArguments,))
    assert [t.__name__ for t in parser.dataclass_types] == [
        "RecipeArguments",
        "DPOConfig",
        "ModelConfig",
        "KTOArguments",
    ]
    assert parser.dataclass_types[2] is ModelConfig


def test_command_line_overrides_yaml_and_push_is_held_back_until_the_end(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 1.0e-3\nbeta: 0.3\nuse_cpu: true\nmodel_name_or_path: trl-ext/tiny-llama\n")
    args, training_args, model_args = _parse(
        "--config",
        str(config),
        "--beta",
        "0.5",
        "--push_to_hub",
        "true",
        "--hub_token",
        "hf_secret",
        tmp_path=tmp_path,
    )
    assert training_args.learning_rate == 1e-3 and training_args.beta == 0.5  # YAML, then the flag wins
    assert model_args.model_name_or_path == TINY_MODEL_ID
    assert args.push_to_hub and not training_args.push_to_hub  # Trainer must not create repos or push checkpoints
    assert args.hub_token == "hf_secret" and training_args.hub_token is None
    assert "hf_secret" not in args.command and "hf_secret" not in repr(args)
    assert args.command.startswith("python recipes/dpo.py --config ")
    assert training_args.trust_remote_code is False


def test_parse_seeds_torch_before_the_model_is_built(tmp_path):
    _parse("--seed", "7", tmp_path=tmp_path)
    first = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(first, torch.rand(3))


def test_dataset_options_accept_json_on_the_command_line(tmp_path):
    args = _parse("--dataset_options", '{"on_error": "drop"}', tmp_path=tmp_path)[0]
    assert args.dataset_options == {"on_error": "drop"}
    with pytest.raises(ValueError, match="eval_fraction"):
        recipe.RecipeArguments(eval_fraction=1.0)


@pytest.mark.parametrize(
    ("env", "launcher"),
    [({}, "python"), ({"WORLD_SIZE": "2"}, "torchrun --nproc_per_node 2"),
     ({"WORLD_SIZE": "4", "ACCELERATE_MIXED_PRECISION": "no"}, "accelerate launch --num_processes 4"),
     ({"ACCELERATE_MIXED_PRECISION": "no"}, "accelerate launch")],  # one process: still accelerate, not python
)  # fmt: skip
def test_format_command_names_the_launcher_and_redacts_tokens(env, launcher, monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith("ACCELERATE_") or k == "WORLD_SIZE"]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cmd = recipe.format_command(["--hub_token=abc", "--x", "a b", "--hub_token", "def"], "recipes/dpo.py")
    assert cmd == f"{launcher} recipes/dpo.py --hub_token=REDACTED --x 'a b' --hub_token REDACTED"


def test_resolve_checkpoint(tmp_path, caplog):
    assert recipe.resolve_checkpoint(None, str(tmp_path)) is None
    assert recipe.resolve_checkpoint("false", str(tmp_path)) is None
    with caplog.at_level(logging.WARNING, logger="trl_ext.recipe"):
        assert recipe.resolve_checkpoint("true", str(tmp_path)) is None
    assert "starting from scratch" in caplog.text
    for step in (5, 20, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert recipe.resolve_checkpoint("true", str(tmp_path)) == str(tmp_path / "checkpoint-20")
    assert recipe.resolve_checkpoint(str(tmp_path / "checkpoint-5"), "elsewhere") == str(tmp_path / "checkpoint-5")
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        recipe.resolve_checkpoint(str(tmp_path / "checkpoint-99"), str(tmp_path))


def test_lora_config_targets_all_linear_layers_and_seq_cls_for_reward_heads(tmp_path):
    _, _, model_args = _parse("--use_peft", "true", "--lora_r", "8", tmp_path=tmp_path)
    causal = models.lora_config(model_args)
    assert causal.target_modules == "all-linear" and causal.r == 8 and causal.task_type == "CAUSAL_LM"
    assert models.lora_config(model_args, head="seq-cls").task_type == "SEQ_CLS"
    _, _, explicit = _parse("--use_peft", "true", "--lora_target_modules", "q_proj", "v_proj", tmp_path=tmp_path)
    assert set(models.lora_config(explicit).target_modules) == {"q_proj", "v_proj"}
    _, _, no_peft = _parse(tmp_path=tmp_path)
    assert models.lora_config(no_peft) is None
    _, _, four_bit = _parse("--load_in_4bit", "true", tmp_path=tmp_path)
    with pytest.raises(ValueError, match="use_peft"):
        models.lora_config(four_bit)


def test_load_model_heads_and_trust_remote_code_off(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = {}
    original = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, path, **kwargs):
        seen.update(kwargs)
        return original(cls, path, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    _, training_args, model_args = _parse(
        "--model_name_or_path", TINY_MODEL_ID, "--use_cpu", "true", tmp_path=tmp_path
    )
    model = models.load_model(model_args, training_args)
    assert seen["trust_remote_code"] is False and seen["dtype"] == torch.float32
    assert type(model).__name__ == "LlamaForCausalLM"

    tokenizer = models.load_tokenizer(model_args, training_args)
    reward = models.load_model(model_args, training_args, head="seq-cls", tokenizer=tokenizer)
    assert type(reward).__name__ == "LlamaForSequenceClassification"
    assert reward.config.num_labels == 1 and reward.config.pad_token_id == tokenizer.pad_token_id
    with pytest.raises(ValueError, match="head"):
        models.load_model(model_args, training_args, head="value")


def test_load_model_4bit_is_nf4_with_double_quantization():
    parser = recipe.make_parser(DPOConfig)
    _, training_args, model_args = parser.parse_args_and_config(
        ["--model_name_or_path", TINY_MODEL_ID, "--load_in_4bit", "true", "--use_bnb_nested_quant", "true",
         "--use_peft", "true", "--use_cpu", "true", "--gradient_checkpointing", "false", "--output_dir", "/tmp/x"]
    )  # fmt: skip
    model = models.load_model(model_args, training_args)
    weight = model.model.layers[0].mlp.down_proj.weight
    assert type(weight).__name__ == "Params4bit" and weight.quant_type == "nf4" and weight.quant_state.nested
    assert weight.quant_state.dtype == torch.float32  # compute dtype follows `dtype` (bfloat16 in the GPU configs)
    assert model.model.norm.weight.dtype == torch.float32  # k-bit preparation: norms in fp32


def test_a_4bit_reward_model_trains_in_float32_without_mixed_precision(tmp_path):
    """TRL 1.16's RewardTrainer casts a quantized model's trainable parameters (the score head included) to bfloat16;
    a CPU run in float32 then fails at the first forward unless `recipe.train` casts them back."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    parser = recipe.make_parser(RewardConfig)
    _, training_args, model_args = parser.parse_args_and_config(
        ["--model_name_or_path", TINY_MODEL_ID, "--load_in_4bit", "true", "--dtype", "float32", "--use_peft", "true",
         "--use_cpu", "true", "--bf16", "false", "--gradient_checkpointing", "false", "--output_dir", str(tmp_path),
         "--max_steps", "1", "--per_device_train_batch_size", "2", "--report_to", "none"]
    )  # fmt: skip
    tokenizer = models.load_tokenizer(model_args, training_args)
    model = models.load_model(model_args, training_args, head="seq-cls", tokenizer=tokenizer)
    rows = [{"prompt": "a b", "chosen": " a", "rejected": " z"}] * 2
    trainer = RewardTrainer(model=model, args=training_args, train_dataset=Dataset.from_list(rows),
                            processing_class=tokenizer, peft_config=models.lora_config(model_args, head="seq-cls"))  # fmt: skip
    assert {p.dtype for p in trainer.model.parameters() if p.requires_grad} == {torch.bfloat16}  # TRL's cast
    metrics = recipe.train(trainer)
    assert {p.dtype for p in trainer.model.parameters() if p.requires_grad} == {torch.float32}
    assert math.isfinite(metrics["train_loss"])


def test_load_model_needs_a_model_name():
    from trl import ModelConfig

    with pytest.raises(ValueError, match="model_name_or_path is required"):
        models.model_path(ModelConfig())


def test_load_datasets_goes_through_dataset_builders_with_a_seeded_eval_split(tmp_path):
    path = ToyTask(seed=0).write_jsonl("pairwise_ab", 50, tmp_path / "ab.jsonl")
    args = recipe.RecipeArguments(dataset_path=str(path), eval_fraction=0.2)
    train, evaluation = recipe.load_datasets(args, method="dpo", seed=3)
    assert len(train) == 40 and len(evaluation) == 10
    assert {"prompt", "chosen", "rejected"} <= set(train.column_names)
    again, _ = recipe.load_datasets(args, method="dpo", seed=3)
    assert train["prompt"] == again["prompt"]  # same seed, same split

    test_path = ToyTask(seed=1).write_jsonl("pairs", 12, tmp_path / "test.jsonl", split="test")
    args = recipe.RecipeArguments(dataset_path=str(path), eval_dataset_path=str(test_path), max_train_samples=7)
    train, evaluation = recipe.load_datasets(args, method="dpo")
    assert len(train) == 7 and len(evaluation) == 12
    assert recipe.load_datasets(recipe.RecipeArguments(dataset_path=str(path)), method="dpo")[1] is None
    with pytest.raises(ValueError, match="dataset_path is required"):
        recipe.load_datasets(recipe.RecipeArguments(), method="dpo")


def test_non_finite_guard_stops_on_nan_loss_or_weights():
    guard, state, control = recipe.NonFiniteLossCallback(), TrainerState(), TrainerControl()
    state.global_step = 3
    guard.on_log(None, state, control, logs={"loss": 0.7, "grad_norm": 1.0})
    for key, value in [("loss", math.nan), ("grad_norm", math.inf), ("eval_loss", -math.inf)]:
        with pytest.raises(recipe.NonFiniteLossError, match=f"step 3: {key} ="):
            guard.on_log(None, state, control, logs={key: value})

    model = torch.nn.Linear(2, 2)
    model.bias.requires_grad_(False)
    guard.on_step_end(None, state, control, model=model)
    with torch.no_grad():
        model.bias[0] = math.nan  # frozen weights are not the guard's business
    guard.on_step_end(None, state, control, model=model)
    with torch.no_grad():
        model.weight[0, 0] = math.inf
    with pytest.raises(recipe.NonFiniteLossError, match="trainable weight weight is NaN/inf"):
        guard.on_step_end(None, state, control, model=model)


def test_model_card_has_what_the_issue_asks_for(tmp_path):
    args, training_args, model_args = _parse(
        "--model_name_or_path", "Qwen/Qwen2.5-7B-Instruct", "--load_in_4bit", "true", "--use_bnb_nested_quant",
        "true", "--use_peft", "true", "--dataset_path", "org/prefs", "--use_cpu", "true", tmp_path=tmp_path,
    )  # fmt: skip
    card = model_card.card_for_run(
        method="dpo", model_args=model_args, recipe_args=args, training_args=training_args,
        row_counts={"train": 900, "eval": 100}, metrics={"eval_rewards/accuracies": 0.71, "train_loss": 0.5},
        is_adapter=True, world_size=2,
    )  # fmt: skip
    assert card.startswith('---\nbase_model: "Qwen/Qwen2.5-7B-Instruct"\nlibrary_name: "peft"')
    assert 'datasets: ["org/prefs"]' in card  # a Hub id, so the Hub links it
    for text in [
        "Direct Preference Optimization", "https://arxiv.org/abs/2305.18290", "4-bit NF4 + double quantization",
        "Rows: 900 for training, 100 for evaluation", "| beta | 0.1 |", "| lora_target_modules | all-linear |",
        "| effective_batch_size | 16 |", "| eval_rewards/accuracies | 0.71 |", "python recipes/dpo.py --model_name_or_path",
        "- trl: 1.16", "- transformers: ", "- peft: ", "- torch: ",
    ]:  # fmt: skip
        assert text in card, text


def test_the_card_says_what_training_ran_in_plain_values(tmp_path):
    # 8 steps of 4 rows over 2196 rows: the card said "Rows: 2196 for training", num_train_epochs 3.0 and
    # SchedulerType.CONSTANT
    args, training_args, model_args = _parse(
        "--dataset_path", "pairs.jsonl", "--max_steps", "8", "--lr_scheduler_type", "constant", tmp_path=tmp_path
    )
    card = model_card.card_for_run(
        method="dpo", model_args=model_args, recipe_args=args, training_args=training_args,
        row_counts={"train": 2196, "eval": None, "steps": 8, "epochs": 32 / 2196}, metrics={}, is_adapter=True,
    )  # fmt: skip
    assert "training ran 8 steps and saw about 32 of the training rows" in card
    assert "| lr_scheduler_type | constant |" in card and "SchedulerType" not in card and "OptimizerNames" not in card
    assert "| max_steps | 8 |" in card and "num_train_epochs" not in card


def test_every_method_of_the_project_has_a_paper():
    assert set(model_card.METHODS) == {"sft", "reward", "ppo", "dpo", "ipo", "kto", "orpo", "grpo"}
    assert all("arxiv.org/abs/" in paper for _, paper in model_card.METHODS.values())


def test_a_missing_reward_model_folder_is_named_in_one_line(tmp_path):
    missing = str(tmp_path / "outputs" / "reward-smollm2-cpu")
    with pytest.raises(FileNotFoundError) as error:
        models.load_reward_model(missing)
    message = str(error.value)
    assert missing in message and "recipes/reward.py" in message and "\n" not in message
