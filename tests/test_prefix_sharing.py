"""Prefix sharing (`trl_ext.prefix_sharing`): the packed layout worked out by hand, and every user of it (ranked GRPO,
Plackett-Luce, the Plackett-Luce reward model, DPO and length-aware IPO pairs) giving the unshared loss and gradients
to float tolerance, with padding, truncated prompts, LoRA and a 4-bit base."""

import logging

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from torch.testing import assert_close
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl import DPOConfig, DPOTrainer, RewardConfig
from trl.trainer.utils import add_fused_lm_head, pad

from trl_ext import LengthAwareIPOConfig, LengthAwareIPOTrainer, RankedGRPOConfig, RankedGRPOTrainer
from trl_ext.dpo import PrefixSharingDPOConfig, PrefixSharingDPOTrainer
from trl_ext.prefix_sharing import (
    EXACT_FAMILIES,
    PairPrefixSharing,
    pack_groups,
    packed_model_inputs,
    pooled_positions,
    prefix_sharing_usable,
    shared_prefix_log_probs,
    shared_prefix_scores,
    supports_prefix_sharing,
)
from trl_ext.ranked_grpo import PlackettLuceRewardTrainer
from trl_ext.toy.synthetic import ToyTask

CPU = dict(use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none", save_strategy="no", seed=0)
TOL = dict(rtol=1e-5, atol=1e-5)


def assert_grads_close(got: dict, want: dict, scale_tol: float = 1e-5) -> None:
    """Equal up to float summation order: each tensor's largest difference against its largest entry."""
    assert sorted(got) == sorted(want) and want
    for name in want:
        error = (got[name] - want[name]).abs().max().item()
        assert error <= scale_tol * want[name].abs().max().item() + 1e-7, f"{name}: max difference {error:.3g}"


def _batch(prompts, responses):
    """Right-padded prompt + response sequences, their labels (-100 on prompts and padding) and group numbers."""
    seqs, masks, groups = [], [], []
    for g, (prompt, group) in enumerate(zip(prompts, responses)):
        for response in group:
            seqs.append(torch.tensor(prompt + response))
            masks.append(torch.tensor([0] * len(prompt) + [1] * len(response)))
            groups.append(g)
    ids = pad(seqs, 0, "right")
    attention = pad([torch.ones_like(s) for s in seqs], 0, "right")
    labels = ids.masked_fill(pad(masks, 0, "right") == 0, -100)
    return ids, attention, labels, torch.tensor(groups)


# --- the layout -------------------------------------------------------------------------------------------------
def test_one_group_is_packed_as_worked_out_by_hand():
    ids, attention, labels, groups = _batch([[1, 2, 3]], [[[4, 5], [6]]])
    packed = pack_groups(ids, attention, groups, labels=labels)
    # trunk [1, 2], then (3, 4, 5) and (3, 6): the last prompt token opens each segment
    assert packed.input_ids.tolist() == [[1, 2, 3, 4, 5, 3, 6]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 2, 3]]
    assert packed.segments.tolist() == [[0, 0, 1, 1, 1, 2, 2]]
    assert packed.labels.tolist() == [[-100, -100, -100, 4, 5, -100, 6]]
    allowed = (packed.attention_mask() == 0)[0, 0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 1, 0],  # the second segment sees the trunk and itself, not the first response
        [1, 1, 0, 0, 0, 1, 1],
    ]
    # unshared per-token positions: row 0 holds log p(4) at 2, log p(5) at 3; row 1 holds log p(6) at 2
    assert packed.gather_index.tolist() == [[-1, -1, 2, 3], [-1, -1, 5, -1]]
    assert packed.last_index.tolist() == [4, 6]
    assert (packed.packed_tokens, packed.unshared_tokens) == (7, 10)


def test_prompts_cut_differently_share_only_their_common_prefix():
    # keep_end truncation can shift one member's prompt: tokens are compared position by position
    ids, attention, labels, groups = _batch([[1, 2, 3, 4]], [[[5]]])
    other = _batch([[9, 2, 3, 4]], [[[6]]])
    packed = pack_groups(torch.cat([ids, other[0]]), torch.cat([attention, other[1]]), torch.tensor([0, 0]),
                         labels=torch.cat([labels, other[2]]))  # fmt: skip
    assert packed.segments.tolist() == [[1] * 5 + [2] * 5]  # nothing shared: no common first token
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4] * 2]


def test_padding_gaps_and_left_padding_are_refused():
    ids, attention, labels, groups = _batch([[1, 2]], [[[3], [4, 5]]])
    with pytest.raises(ValueError, match="right-padded"):
        pack_groups(ids, attention.flip(1), groups)
    with pytest.raises(ValueError, match="no gap"):
        pack_groups(ids, attention, torch.tensor([0, 2]))


def test_unsupported_attention_and_sliding_windows_are_named(tiny_model_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, attn_implementation="sdpa")
    assert supports_prefix_sharing(model) is None
    model.config._attn_implementation = "flash_attention_2"
    assert "cannot take a 4D attention mask" in supports_prefix_sharing(model)
    model.config._attn_implementation = "sdpa"
    model.config.sliding_window = 64
    assert "sliding-window" in supports_prefix_sharing(model)


# --- model families: shared equals unshared, or the family is refused ---------------------------------------------
_DENSE = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=64, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
_LINEAR = dict(head_dim=16, linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=8,
               linear_value_head_dim=8, layer_types=["linear_attention", "full_attention"])  # fmt: skip
_MAMBA = dict(mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_n_groups=1)
# tiny random configs: (model_type, overrides of _DENSE or a config of its own)
FAMILIES = {
    "llama": {},
    "mistral": dict(sliding_window=None),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen2": {},
    "qwen2-sliding-flag-but-no-sliding-layer": dict(
        model_type="qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=2
    ),  # fmt: skip
    "qwen3": {},
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
    "gemma": {},
    "phi3": {},
    "olmo2": {},
    "gpt_neox": {},
    "gpt2": dict(
        own=dict(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=256, bos_token_id=1, eos_token_id=2)
    ),  # fmt: skip
    "granite": {},
    "smollm3": {},
}
REFUSED = {  # model_type -> (config, what the refusal names)
    "qwen3_5_text": (dict(_DENSE, **_LINEAR), "linear_attention layers"),
    "qwen3_next": (
        dict(
            _DENSE,
            **_LINEAR,
            num_experts=2,
            num_experts_per_tok=1,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
        ),
        "linear_attention layers",
    ),  # fmt: skip
    "bamba": (dict(_DENSE, **_MAMBA, attn_layer_indices=[1]), "state runs"),
    "jamba": (dict(_DENSE, num_experts=2, attn_layer_period=2, attn_layer_offset=1, mamba_d_state=8), "state runs"),
    "granitemoehybrid": (
        dict(_DENSE, **_MAMBA, layer_types=["mamba", "attention"], num_local_experts=2, num_experts_per_tok=1),
        "state runs",
    ),  # fmt: skip
    "lfm2": (dict(_DENSE, layer_types=["conv", "full_attention"]), "conv layers"),
    "mpt": (dict(vocab_size=128, d_model=32, n_heads=4, n_layers=2, max_seq_len=256), "ALiBi"),
    "bloom": (dict(vocab_size=128, hidden_size=32, n_layer=2, n_head=4), "ALiBi"),
    "falcon": (dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, alibi=True), "ALiBi"),
    "mistral": (dict(_DENSE, sliding_window=4), "sliding-window"),
    "mixtral": (dict(_DENSE, num_local_experts=4, num_experts_per_tok=2, output_router_logits=True), "router"),
    "qwen3_moe": (
        dict(_DENSE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, output_router_logits=True),
        "router",
    ),  # fmt: skip
}


def _family_model(model_type: str, config: dict, attention: str = "sdpa"):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config), attn_implementation=attention,
                                             dtype=torch.float32)  # fmt: skip
    return model.eval()


def test_the_family_table_is_the_list_of_exact_families():
    assert {spec.get("model_type", name) for name, spec in FAMILIES.items()} == EXACT_FAMILIES


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_exact_family_gives_the_unshared_log_probs(name):
    spec = dict(FAMILIES[name])
    model_type, own = spec.pop("model_type", name), spec.pop("own", None)
    model = _family_model(model_type, own or dict(_DENSE, **spec))
    assert supports_prefix_sharing(model) is None
    add_fused_lm_head(model)
    ids, attention, labels, groups = _batch(PROMPTS, RESPONSES)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True).log_probs
        got, _ = shared_prefix_log_probs(model, {"input_ids": ids, "attention_mask": attention}, labels, groups)
    assert_close(got, want, **TOL)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_hybrid_alibi_and_router_loss_families_are_refused_with_one_warning(name, caplog):
    # each of these gave wrong shared log-probs (state crossing responses, ALiBi from row distance) or crashed
    config, reason = REFUSED[name]
    model = _family_model(name, config, attention="eager" if name in ("mpt", "bloom", "falcon") else "sdpa")
    with caplog.at_level(logging.WARNING, logger="trl_ext.prefix_sharing"):
        assert prefix_sharing_usable(True, model) is False
    assert reason in supports_prefix_sharing(model)
    assert caplog.text.count("training runs unshared") == 1


# --- exactness of the forward ----------------------------------------------------------------------------------
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]
RESPONSES = [[[20, 21, 22], [23, 24], [25, 26, 27, 28, 29]], [[30], [31, 32, 33, 34, 35, 36, 37, 38]]]


def _logps_and_grads(model, share: bool):
    ids, attention, labels, groups = _batch(PROMPTS, RESPONSES)
    model.zero_grad()
    if share:
        logps, _ = shared_prefix_log_probs(model, {"input_ids": ids, "attention_mask": attention}, labels, groups)
    else:
        logps = model(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True).log_probs
    (logps * torch.linspace(0.5, 1.5, logps.numel()).reshape(logps.shape)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return logps.detach(), grads


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("adapter", [None, "lora"])
def test_log_probs_and_gradients_equal_the_unshared_forward(tiny_model_path, attention, adapter):
    from peft import get_peft_model

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, attn_implementation=attention, dtype=torch.float32)
    add_fused_lm_head(model)
    if adapter:
        model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        )
    want, want_grads = _logps_and_grads(model, share=False)
    got, got_grads = _logps_and_grads(model, share=True)
    assert ((want != 0) == (got != 0)).all()  # the same tokens carry a log-prob
    assert_close(got, want, **TOL)
    assert_grads_close(got_grads, want_grads)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_bf16_compute_takes_the_packed_mask(tiny_model_path, attention):
    # sdpa gets a boolean mask (valid whatever the compute dtype), eager an additive float32 one (type promotion)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, attn_implementation=attention, dtype=torch.bfloat16)
    add_fused_lm_head(model)
    ids, attention_mask, labels, groups = _batch(PROMPTS, RESPONSES)
    inputs = packed_model_inputs(pack_groups(ids, attention_mask, groups, labels=labels), model, ids.device)
    assert inputs["attention_mask"].dtype == (torch.bool if attention == "sdpa" else torch.float32)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True).log_probs
        got, _ = shared_prefix_log_probs(model, {"input_ids": ids, "attention_mask": attention_mask}, labels, groups)
    assert got.dtype == want.dtype and (got.float() - want.float()).abs().max() < 1e-2 * want.abs().max()


def test_a_4bit_nf4_base_with_lora_gives_the_unshared_numbers(tiny_model_path):
    pytest.importorskip("bitsandbytes")
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_path, quantization_config=quantization, dtype=torch.float32
    )
    assert any("4bit" in type(p).__name__ for p in model.parameters())
    add_fused_lm_head(model)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    want, want_grads = _logps_and_grads(model, share=False)
    got, got_grads = _logps_and_grads(model, share=True)
    assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert_grads_close(got_grads, want_grads, 1e-4)


# --- the trainers ----------------------------------------------------------------------------------------------
def _loss_and_grads(trainer, examples):
    trainer.model.train()
    trainer.model.zero_grad()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop
    inputs = trainer._prepare_inputs(trainer.data_collator(examples))
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def _assert_same(shared, unshared, examples):
    want, want_grads = _loss_and_grads(unshared, examples)
    got, got_grads = _loss_and_grads(shared, examples)
    assert want.abs().item() > 1e-6  # a loss that moves
    assert_close(got, want, **TOL)
    assert_grads_close(got_grads, want_grads)


def _perturbed_lora():
    return LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)


@pytest.mark.parametrize("loss_type", ["dapo", "plackett_luce"])
def test_ranked_grpo_loss_and_gradients_equal_unshared(tiny_model_path, tmp_path, loss_type):
    rows = ToyTask(seed=3, n_responses=4, prompt_words=12).rows("ranked", 4)
    rows[1]["responses"] = rows[1]["responses"][:3]  # groups of different sizes
    rows[1]["ranking"] = [1, 3, 2]
    data = Dataset.from_list(rows)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    trainers = []
    for share in (True, False):
        torch.manual_seed(0)  # the same LoRA initialization in both
        model = AutoModelForCausalLM.from_pretrained(tiny_model_path, attn_implementation="sdpa")
        args = RankedGRPOConfig(str(tmp_path / str(share)), loss_type=loss_type, beta=0.1, max_prompt_length=24,
                                prefix_sharing=share, per_device_train_batch_size=4, **CPU)  # fmt: skip
        trainers.append(RankedGRPOTrainer(model, args=args, train_dataset=data, processing_class=tokenizer,
                                          peft_config=_perturbed_lora()))  # fmt: skip
    assert trainers[0].prefix_sharing and not trainers[1].prefix_sharing
    examples = [trainers[0].train_dataset[i] for i in range(4)]
    assert len(examples[0]["prompt_ids"]) == 24  # prompts truncated to their last max_prompt_length tokens
    _assert_same(*trainers, examples)


def _pair_trainers(tiny_model_path, tmp_path, make, **extra):
    data = Dataset.from_list(ToyTask(seed=4, prompt_words=10).rows("pairs_with_lengths", 4))
    out = []
    for share in (True, False):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_path, attn_implementation="sdpa")
        out.append(make(model, share, data, str(tmp_path / str(share)), **extra))
    return out, data


@pytest.mark.parametrize(
    "reference, extra",
    [("peft", {}), ("ref_model", {}), ("peft", {"max_length": 40, "truncation_mode": "keep_end"})],
    ids=["peft-reference", "reference-copy", "keep-end-truncation"],
)
def test_prefix_sharing_dpo_equals_trls_dpo_trainer(tiny_model_path, tmp_path, reference, extra, caplog):
    def make(model, share, data, out, **kw):
        config = PrefixSharingDPOConfig if share else DPOConfig
        args = config(
            out, beta=0.1, per_device_train_batch_size=4, **CPU, **kw, **({"prefix_sharing": True} if share else {})
        )
        trainer_cls = PrefixSharingDPOTrainer if share else DPOTrainer
        peft = _perturbed_lora() if reference == "peft" else None
        if peft is None:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 0.02)  # move the policy from the reference TRL copies
        return trainer_cls(model, args=args, train_dataset=data, peft_config=peft)

    (shared, unshared), data = _pair_trainers(tiny_model_path, tmp_path, make, **extra)
    assert type(unshared) is DPOTrainer and shared.prefix_sharing is not None
    examples = [shared.train_dataset[i] for i in range(4)]
    with caplog.at_level(logging.WARNING, logger="trl_ext.prefix_sharing"):
        _assert_same(shared, unshared, examples)
    sharing = shared.prefix_sharing
    if "truncation_mode" in extra:  # keep_end cut these prompts differently: nothing to share, so nothing packed
        assert sharing.packed_tokens == 0 and caplog.text.count("share no prompt token") == 1
    else:
        assert 0 < sharing.packed_tokens < sharing.unshared_tokens


def test_length_aware_ipo_with_prefix_sharing_equals_it_without(tiny_model_path, tmp_path):
    def make(model, share, data, out):
        args = LengthAwareIPOConfig(out, beta=0.5, length_penalty=0.3, prefix_sharing=share,
                                    per_device_train_batch_size=4, **CPU)  # fmt: skip
        return LengthAwareIPOTrainer(model, args=args, train_dataset=data, peft_config=_perturbed_lora())

    (shared, unshared), _ = _pair_trainers(tiny_model_path, tmp_path, make)
    assert shared.prefix_sharing is not None and unshared.prefix_sharing is None
    _assert_same(shared, unshared, [shared.train_dataset[i] for i in range(4)])


def test_plackett_luce_reward_model_scores_equal_unshared(tiny_model_path, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    rows = ToyTask(seed=5, prompt_words=10).rows("ranked", 3)
    trainers = []
    for share in (True, False):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        torch.nn.init.normal_(model.score.weight)  # a head that scores something
        args = RewardConfig(str(tmp_path / str(share)), center_rewards_coefficient=0.01, **CPU)
        peft = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        trainers.append(PlackettLuceRewardTrainer(model, args=args, train_dataset=Dataset.from_list(rows),
                                                  processing_class=tokenizer, peft_config=peft,
                                                  prefix_sharing=share))  # fmt: skip
    _assert_same(*trainers, [trainers[0].train_dataset[i] for i in range(3)])


def test_an_unsupported_model_trains_unshared_with_one_warning(tiny_model_path, tmp_path, caplog):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, attn_implementation="sdpa")
    model.config.sliding_window = 16
    data = Dataset.from_list(ToyTask(seed=6).rows("pairs", 4))
    args = PrefixSharingDPOConfig(str(tmp_path), beta=0.1, prefix_sharing=True, **CPU)
    with caplog.at_level(logging.WARNING, logger="trl_ext.prefix_sharing"):
        trainer = PrefixSharingDPOTrainer(model, args=args, train_dataset=data, peft_config=_perturbed_lora())
    assert trainer.prefix_sharing is None
    assert "training runs unshared" in caplog.text and "sliding-window" in caplog.text


def test_pair_hooks_pack_pairs_and_pass_other_calls_through_with_one_warning(tiny_model_path, caplog):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, attn_implementation="sdpa")
    add_fused_lm_head(model)
    ids, attention, labels, _ = _batch([[5, 6, 7, 8]], [[[9, 10], [11]]])  # one pair: chosen, rejected
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True).log_probs
        sharing = PairPrefixSharing()
        sharing.register(model)
        got = model(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True).log_probs
        assert (sharing.packed_tokens, sharing.unshared_tokens) == (3 + 3 + 2, 2 * 6)
        assert_close(got, want, **TOL)
        with caplog.at_level(logging.WARNING, logger="trl_ext.prefix_sharing"):
            for _ in range(2):  # an odd batch, twice: one warning
                odd = model(input_ids=ids[:1], attention_mask=attention[:1], labels=labels[:1], fused_lm_head=True)
            no_mask = model(input_ids=ids, labels=labels, fused_lm_head=True)  # padding-free style
    assert sharing.packed_tokens == 8  # nothing more was packed
    assert_close(odd.log_probs, want[:1], **TOL)
    assert no_mask.log_probs.shape == want.shape
    assert caplog.text.count("odd number of sequences") == 1 and caplog.text.count("no 2D attention_mask") == 1


def test_reward_scores_pool_where_the_model_does_when_pad_is_eos(tiny_model_path):
    # pad_token_id == eos_token_id and answers ending in EOS: transformers pools at the last token that is not the
    # pad id (before the EOS); the shared path read the last mask position (the EOS): 0.2394 vs 0.1306 in review
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1).eval()
    eos = model.config.eos_token_id
    model.config.pad_token_id = eos
    torch.nn.init.normal_(model.score.weight)
    prompts, responses = [[5, 6, 7, 8, 9]], [[[20, 21, eos], [22, eos], [23, 24, 25, 26, eos]]]
    seqs = [torch.tensor(prompts[0] + r) for r in responses[0]]
    ids = pad(seqs, eos, "right")
    attention = pad([torch.ones_like(s) for s in seqs], 0, "right")
    assert pooled_positions(ids, attention, eos).tolist() == [6, 5, 8]  # the token before each EOS
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=attention).logits
        got = shared_prefix_scores(model, {"input_ids": ids, "attention_mask": attention}, torch.tensor([0, 0, 0]))
    assert_close(got, want, **TOL)


def test_a_reference_model_that_cannot_share_is_checked_on_its_own(tiny_model_path, tmp_path, caplog):
    # an ALiBi reference (Bloom) beside a Llama policy: hooked as the policy was, its forward crashed
    data = Dataset.from_list(ToyTask(seed=4, prompt_words=10).rows("pairs", 4))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    reference = _family_model("bloom", dict(vocab_size=len(tokenizer), hidden_size=32, n_layer=2, n_head=4,
                                            pad_token_id=0, eos_token_id=1), attention="eager")  # fmt: skip
    trainers = []
    for share in (True, False):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_path, attn_implementation="sdpa")
        config = PrefixSharingDPOConfig if share else DPOConfig
        args = config(str(tmp_path / str(share)), beta=0.1, per_device_train_batch_size=4, **CPU,
                      **({"prefix_sharing": True} if share else {}))  # fmt: skip
        with caplog.at_level(logging.WARNING, logger="trl_ext.prefix_sharing"):
            trainers.append((PrefixSharingDPOTrainer if share else DPOTrainer)(
                model, ref_model=reference, args=args, train_dataset=data, processing_class=tokenizer))  # fmt: skip
    shared, unshared = trainers
    assert "ALiBi" in caplog.text and "the reference model runs unshared" in caplog.text
    _assert_same(shared, unshared, [shared.train_dataset[i] for i in range(4)])
    assert 0 < shared.prefix_sharing.packed_tokens < shared.prefix_sharing.unshared_tokens  # the policy still shares


def test_dpo_with_a_router_loss_trains_unshared_and_without_it_shares(tiny_model_path, tmp_path, caplog):
    # TRL asks a mixture-of-experts policy for router logits whenever its config has them: the load-balancing loss
    # then received the 4D mask and crashed
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    data = Dataset.from_list(ToyTask(seed=4, prompt_words=10).rows("pairs", 4))
    for coefficient, shares in ((None, False), (0.0, True)):
        model = _family_model("mixtral", dict(_DENSE, vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1,
                                              num_local_experts=4, num_experts_per_tok=2))  # fmt: skip
        args = PrefixSharingDPOConfig(str(tmp_path / str(coefficient)), beta=0.1, per_device_train_batch_size=4,
                                      prefix_sharing=True, router_aux_loss_coef=coefficient, max_steps=1, **CPU)  # fmt: skip
        with caplog.at_level(logging.WARNING, logger="trl_ext.prefix_sharing"):
            trainer = PrefixSharingDPOTrainer(model, args=args, train_dataset=data, processing_class=tokenizer,
                                              peft_config=_perturbed_lora())  # fmt: skip
            trainer.train()
        assert (trainer.prefix_sharing is not None) is shares
        assert ("load-balancing loss" in caplog.text) is not shares
        caplog.clear()
