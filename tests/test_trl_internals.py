"""Every private TRL (and transformers `Trainer`) name trl_ext overrides or calls, in one place.

Each entry checks the signature we were written against and, where a signature says too little, a behavioural probe.
A TRL or transformers upgrade that moves one fails here first, naming the version, before any trainer misbehaves.
The pin in pyproject.toml (trl>=1.16,<1.17) keeps users on the tested version.
"""

import hashlib
import inspect

import pytest
import torch
import transformers
import trl
from transformers import AutoModelForCausalLM, Trainer
from trl import DPOTrainer, GRPOConfig, GRPOTrainer, RewardTrainer
from trl.experimental.orpo import ORPOTrainer as TRLORPOTrainer

from trl_ext import LengthAwareIPOTrainer, PPOTrainer, RankedGRPOConfig, RankedGRPOTrainer
from trl_ext.dpo import PrefixSharingDPOTrainer
from trl_ext.ranked_grpo import PlackettLuceRewardTrainer

VERSIONS = f"trl {trl.__version__}, transformers {transformers.__version__}"

# (class, method name, parameters we rely on, who relies on it)
OVERRIDDEN_OR_CALLED = [
    (DPOTrainer, "_compute_loss", ["self", "model", "inputs", "return_outputs"], "LengthAwareIPOTrainer overrides"),
    (
        DPOTrainer,
        "_prepare_dataset",
        ["self", "dataset", "processing_class", "args", "dataset_name"],
        "LengthAwareIPOTrainer overrides",
    ),  # fmt: skip
    (DPOTrainer, "compute_ref_log_probs", ["self", "model", "inputs"], "LengthAwareIPOTrainer overrides"),
    (
        RewardTrainer,
        "_prepare_dataset",
        ["self", "dataset", "processing_class", "args", "dataset_name"],
        "PlackettLuceRewardTrainer overrides",
    ),  # fmt: skip
    # public but internal, and in trl.experimental (no stability promise): the fields it returns are checked by
    # tests/test_chat_templates.py, which trains nothing if they drift
    (TRLORPOTrainer, "tokenize_row", ["self", "feature", "model"], "trl_ext.orpo.ORPOTrainer overrides"),
    (Trainer, "_set_signature_columns_if_needed", ["self"], "IPO, Plackett-Luce, RankedGRPO and PPO override"),
    (
        Trainer,
        "get_batch_samples",
        ["self", "epoch_iterator", "num_batches", "device"],
        "RankedGRPOTrainer overrides",
    ),  # fmt: skip
    (Trainer, "_get_train_sampler", ["self", "train_dataset"], "RankedGRPOTrainer and PPOTrainer override"),
    (
        Trainer,
        "_get_dataloader",
        ["self", "dataset", "description", "batch_size", "sampler_fn", "is_training", "dataloader_key"],
        "PPOTrainer calls",
    ),  # fmt: skip
    (Trainer, "_prepare_inputs", ["self", "inputs"], "PPOTrainer overrides and RankedGRPOTrainer calls"),
    (Trainer, "_save", ["self", "output_dir", "state_dict"], "PPOTrainer overrides"),
    (Trainer, "_load_from_checkpoint", ["self", "resume_from_checkpoint", "model"], "PPOTrainer overrides"),
    (
        GRPOTrainer,
        "_calculate_rewards",
        ["self", "inputs", "prompts", "completions", "completion_ids_list"],
        "RewardModelScorer is called from",
    ),  # fmt: skip
]


def test_trl_version_is_the_one_we_are_written_against():
    assert trl.__version__.startswith("1.16."), f"trl_ext is written against TRL 1.16; found {VERSIONS}"


@pytest.mark.parametrize(("owner", "name", "params", "who"), OVERRIDDEN_OR_CALLED, ids=lambda v: getattr(v, "__name__", str(v))[:40])  # fmt: skip
def test_signature(owner, name, params, who):
    method = getattr(owner, name, None)
    assert method is not None, f"{owner.__name__}.{name} is gone ({who} it) in {VERSIONS}"
    found = list(inspect.signature(method).parameters)
    assert found[: len(params)] == params, f"{owner.__name__}.{name} changed ({who} it) in {VERSIONS}: {found}"


def test_our_overrides_are_the_ones_listed():
    listed = {(owner, name) for owner, name, _, _ in OVERRIDDEN_OR_CALLED}
    ours = {
        LengthAwareIPOTrainer: DPOTrainer,
        PrefixSharingDPOTrainer: DPOTrainer,
        PlackettLuceRewardTrainer: RewardTrainer,
        RankedGRPOTrainer: Trainer,
        PPOTrainer: Trainer,
    }
    for cls, base in ours.items():
        for name, value in vars(cls).items():
            if name.startswith("_") and not name.startswith("__") and callable(value) and hasattr(base, name):
                owner = next(k for k in base.__mro__ if name in vars(k))
                assert (owner, name) in listed or (base, name) in listed or (Trainer, name) in listed, (
                    f"{cls.__name__}.{name} overrides a private {owner.__name__} method that is not guarded here"
                )


def test_dpo_compute_loss_calls_policy_and_reference_with_the_fused_head():
    # LengthAwareIPOTrainer._compute_loss captures the two fused forward calls TRL makes and reads their log_probs
    source = inspect.getsource(DPOTrainer._compute_loss)
    assert source.count("fused_lm_head=True") == 3, f"DPOTrainer._compute_loss changed in {VERSIONS}"
    assert "self._metrics[mode]" in source and "self.precompute_ref_logps" in source


def test_dpo_compute_loss_passes_chosen_then_rejected_as_keywords():
    # PrefixSharingDPOTrainer (and LengthAwareIPOTrainer with prefix_sharing) repack, in forward hooks, the keyword
    # inputs of TRL's fused calls as [chosen; rejected] pairs; a positional call or another order would not be packed
    source = inspect.getsource(DPOTrainer._compute_loss)
    assert "model(**model_kwargs, labels=labels, fused_lm_head=True)" in source, f"changed in {VERSIONS}"
    assert "# batch is [chosen, rejected]" in source, f"DPO's batch order changed in {VERSIONS}"


def test_fused_lm_head_returns_per_token_log_probs(tiny_model_path):
    # RankedGRPOTrainer relies on add_fused_lm_head and on `outputs.log_probs` (N, T-1) of the labelled tokens
    from trl.trainer.utils import add_fused_lm_head, selective_log_softmax

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        expected = selective_log_softmax(model(input_ids=ids).logits[:, :-1], ids[:, 1:])
    add_fused_lm_head(model)
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids, fused_lm_head=True, use_cache=False)
    assert out.log_probs.shape == (1, 4), f"fused LM head output changed in {VERSIONS}"
    torch.testing.assert_close(out.log_probs, expected, rtol=1e-4, atol=1e-4)


def test_grpo_groups_rewards_as_the_ranked_scorer_assumes():
    # RewardModelScorer(rank_within_group=True) groups the gathered rewards as consecutive runs of num_generations
    source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    assert "rewards.view(-1, num_generations)" in source, f"GRPO's reward grouping changed in {VERSIONS}"
    assert "self._calculate_rewards(inputs, prompts, completions, completion_ids_list)" in source


def test_grpo_config_post_init_is_the_one_ranked_grpo_config_partly_redoes():
    # Offline, RankedGRPOConfig skips GRPOConfig.__post_init__ (its checks need num_generations) and re-does its
    # scale_rewards and pad_to_multiple_of normalization. A new check or normalization there must be looked at.
    digest = hashlib.sha256(inspect.getsource(GRPOConfig.__post_init__).encode()).hexdigest()[:16]
    assert digest == "e833cd8d6b4619ad", (
        f"GRPOConfig.__post_init__ changed in {VERSIONS}: re-check what RankedGRPOConfig.__post_init__ re-does offline"
    )
    offline = RankedGRPOConfig("out", use_cpu=True, bf16=False, scale_rewards=True, pad_to_multiple_of="8")
    assert offline.scale_rewards == "group" and offline.pad_to_multiple_of == 8


def test_private_helpers_we_import_exist():
    from trl.data_utils import common_prefix_length
    from trl.models import prepare_deepspeed, prepare_fsdp, unwrap_model_for_generation  # noqa: F401
    from trl.trainer.base_config import _BaseConfig
    from trl.trainer.base_trainer import _BaseTrainer
    from trl.trainer.utils import (  # noqa: F401
        RepeatSampler,
        disable_dropout_in_model,
        identity,
        pad,
        selective_log_softmax_and_entropy,
        use_adapter,
    )

    from trl_ext.ppo import PPOConfig

    assert issubclass(PPOConfig, _BaseConfig) and issubclass(PPOTrainer, _BaseTrainer)
    assert common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    assert pad([torch.tensor([1]), torch.tensor([2, 3])], 0, "left").tolist() == [[0, 1], [2, 3]]


def test_torch_mem_tracker_internals_the_memory_harness_overrides():
    """benchmarks/memory_harness.py's TrainableMemTracker overrides and calls private MemTracker methods (torch has
    no public hook for frozen tensors or for a module called twice per step)."""
    from torch.distributed._tools.mem_tracker import MemTracker
    from torch.utils._python_dispatch import _disable_current_modes  # noqa: F401 (HostValues runs data ops for real)

    expected = {
        "_track_module_params_and_buffers": ["self", "module", "install_grad_hooks"],
        "_update_and_maybe_create_winfos": ["self", "t", "reftype"],
        "_pre_fw_hook": ["self", "module", "inputs"],
        "_post_fw_hook": ["self", "module", "inputs", "outputs"],
        "_pre_bw_hook": ["self", "module", "args"],
        "_post_bw_hook": ["self", "module", "args"],
        "_update_peak_stats": ["self", "peak_state"],
    }
    for name, params in expected.items():
        method = getattr(MemTracker, name, None)
        assert method is not None, f"MemTracker.{name} is gone in torch {torch.__version__}"
        found = list(inspect.signature(method).parameters)
        assert found[: len(params)] == params, f"MemTracker.{name} changed in torch {torch.__version__}: {found}"
    tracker = MemTracker()
    for attribute in ("_curr_mem_snap", "_peak_mem", "_peak_mem_snap", "_param_to_grad_hook_handles", "_ac_mod",
                      "_in_ac", "_mod_tracker", "memory_tracking"):  # fmt: skip
        assert hasattr(tracker, attribute), f"MemTracker().{attribute} is gone in torch {torch.__version__}"
