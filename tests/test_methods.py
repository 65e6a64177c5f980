"""The one table of methods (`trl_ext.methods`): every recipe, config folder, CLI command, data mapping, model-card
entry and planner entry is in it, and nothing is listed that it does not hold."""

import pytest
from _recipe_utils import REPO_ROOT

import dataset_builders
from trl_ext import cli, methods, model_card, plan

NOT_METHODS = {"__init__", "evaluate", "generate", "rlhf_pipeline"}  # recipes that train no method of their own


def test_every_recipe_and_config_folder_is_a_method_of_the_table():
    recipes = {p.stem for p in (REPO_ROOT / "recipes").glob("*.py")} - NOT_METHODS
    folders = {p.name for p in (REPO_ROOT / "recipes" / "configs").iterdir() if p.is_dir()} - {"generate"}
    assert recipes == set(methods.NAMES) == folders


def test_every_list_of_methods_is_the_table():
    assert cli.METHODS == methods.NAMES
    assert dataset_builders.METHODS == methods.NAMES
    assert list(model_card.METHODS) == list(methods.NAMES)
    assert model_card.METHODS["dpo"] == (methods.METHODS["dpo"].title, methods.METHODS["dpo"].paper)
    assert plan.RECIPE_METHODS == methods.NAMES
    assert (*methods.NAMES, "grpo-online") == plan.METHODS


def test_planner_terms_follow_the_table():
    assert set(plan.FUSED_HEAD_METHODS) == {"sft", "dpo", "ipo", "kto", "grpo", "grpo-online"}
    import memory_harness as memory

    assert set(memory._ROLLOUT_METHODS) == {"ppo", "grpo-online"}


def test_a_built_trainer_is_placed_through_its_bases():
    from trl import DPOTrainer, GRPOTrainer, KTOTrainer, RewardTrainer, SFTTrainer

    from trl_ext import LengthAwareIPOTrainer, ORPOTrainer, PPOTrainer, RankedGRPOTrainer
    from trl_ext.dpo import PrefixSharingDPOTrainer

    expected = {SFTTrainer: "sft", RewardTrainer: "reward", PPOTrainer: "ppo", DPOTrainer: "dpo",
                PrefixSharingDPOTrainer: "dpo", LengthAwareIPOTrainer: "ipo", KTOTrainer: "kto",
                ORPOTrainer: "orpo", RankedGRPOTrainer: "grpo", GRPOTrainer: "grpo-online"}  # fmt: skip
    for trainer, name in expected.items():
        assert methods.method_of_trainer(trainer) == name, trainer
    assert methods.method_of_trainer(object) is None


@pytest.mark.parametrize("name", methods.NAMES)
def test_each_method_cites_a_paper_and_names_existing_trainers(name):
    import trl

    import trl_ext
    from trl_ext.ranked_grpo import plackett_luce_reward

    method = methods.METHODS[name]
    assert "arxiv.org/abs/" in method.paper and method.title
    for trainer in method.trainers:
        assert any(hasattr(m, trainer) for m in (trl, trl_ext, plackett_luce_reward)), trainer
