"""benchmarks/memory_harness.py: fake-weight measurement of a recipe's training step (what benchmarks/memory.py records)."""

import pytest
import torch
from memory_harness import HostValues, _tracker_class, measure_recipe, model_shapes
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from trl_ext.plan import Run, Shapes, four_bit_bytes, static_bytes


def test_host_values_are_real_for_data_and_placeholders_for_fake_values():
    with FakeTensorMode(allow_non_fake_inputs=True), HostValues():
        weights = torch.randn(4, 3)  # a float made from nothing: fake
        positions = torch.arange(4)  # an index made from nothing: real
        mask = positions < 2  # data only: real
        picked = weights[mask]  # fake values at real positions: the mask's true count of rows
        everything = weights[weights > 0]  # fake mask: every entry counts (the worst case)
        assert isinstance(weights, FakeTensor) and not isinstance(positions, FakeTensor)
        assert mask.tolist() == [True, True, False, False]
        assert picked.shape == (2, 3) and isinstance(picked, FakeTensor)
        assert everything.shape == (12,)
        assert weights.sum().item() == 1.0 and bool(torch.isnan(weights).any()) is True
        assert int(positions.sum()) == 6  # real values read as they are


def test_tracker_counts_gradients_of_trainable_tensors_only():
    tracker_class = _tracker_class()
    with FakeTensorMode(allow_non_fake_inputs=True), HostValues():
        frozen = torch.nn.Linear(256, 256)
        frozen.requires_grad_(False)
        adapter = torch.nn.Linear(256, 8)
        model = torch.nn.Sequential(frozen, adapter)
        tracker = tracker_class()
        tracker.track_external(model)
        with tracker:
            model(torch.randn(4, 256)).sum().backward()  # MemTracker's own hooks fail on `frozen`
            current = tracker.get_tracker_snapshot("current")
    (snapshot,) = current.values()
    assert snapshot[next(k for k in snapshot if getattr(k, "value", k) == "Gradient")] == (256 * 8 + 8) * 4
    assert snapshot[next(k for k in snapshot if getattr(k, "value", k) == "Parameter")] == (256 * 257 + 257 * 8) * 4


def test_model_shapes_known_names_and_config_files(tmp_path):
    assert model_shapes("Qwen/Qwen2.5-7B-Instruct")["hidden_size"] == 3584
    (tmp_path / "config.json").write_text('{"model_type": "llama", "hidden_size": 64}')
    assert model_shapes(str(tmp_path))["model_type"] == "llama"
    with pytest.raises(ValueError, match="unknown model shapes"):
        model_shapes("someone/unknown-model")


def test_four_bit_sizes_are_nf4_with_double_quantization():
    # 64 weights: 32 bytes of codes + one 8-bit absmax; every 256 absmax share one float32
    assert four_bit_bytes(64 * 256, nested=True) == 64 * 128 + 256 + 4
    assert four_bit_bytes(64, nested=False) == 32 + 4


def test_measured_parameters_and_optimizer_state_are_the_exact_sizes():
    """One decoder layer of Qwen2.5-0.5B through the DPO recipe: the parameter bytes MemTracker counts are the
    4-bit weights with their statistics, float32 embeddings, norms and biases, and float32 LoRA, to the byte's
    percent; 8-bit AdamW keeps about 2 bytes per LoRA parameter."""
    measured = measure_recipe(
        "recipes/configs/dpo/qlora-12gb.yaml", model="Qwen/Qwen2.5-0.5B", num_layers=1, overrides={"max_length": 128}
    )
    shapes = Shapes.of(dict(model_shapes("Qwen/Qwen2.5-0.5B"), num_hidden_layers=1))
    run = Run.of("dpo", measured.settings | {"use_peft": True})
    expected = static_bytes(shapes, run)
    lora = 16 * shapes.lora_width_per_layer
    assert measured.categories["parameters"] == pytest.approx(expected["parameters"], rel=0.01)
    assert measured.categories["optimizer"] == pytest.approx(2 * lora, rel=0.1)  # + block statistics
    assert measured.categories["activations"] + measured.categories["temporaries"] > 0
    assert measured.peak_bytes == sum(measured.categories.values())
    assert measured.phases == {"PrefixSharingDPOTrainer": measured.peak_bytes}


def test_four_bit_weights_stay_parameters_through_a_no_grad_forward():
    """A reward model scores without gradients in eval mode; on a CPU with AVX-512 bitsandbytes would repack its 4-bit
    codes on that first forward (new storages, counted as activations, the parameters' shrinking). A CUDA run keeps
    them, so the measurement does too."""
    import bitsandbytes.functional as bnb_functional
    from memory_harness import _snapshot_bytes, _swap_or_set_data, build_model
    from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

    bnb_functional.create_dynamic_map()
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.bfloat16)  # fmt: skip
    shapes = dict(model_shapes("Qwen/Qwen2.5-0.5B"), num_hidden_layers=1)
    swap = torch.utils.swap_tensors
    torch.utils.swap_tensors = _swap_or_set_data(swap)
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), HostValues():
            model = build_model(AutoModelForSequenceClassification, shapes, None, dtype=torch.bfloat16,
                                quantization_config=config, num_labels=1).eval()  # fmt: skip
            model.config.pad_token_id = 0
            tracker = _tracker_class()()
            tracker.track_external(model)
            before = _snapshot_bytes(tracker.get_tracker_snapshot("current"))["parameters"]
            with tracker, torch.no_grad():
                model(input_ids=torch.ones(2, 16, dtype=torch.long))
                after = _snapshot_bytes(tracker.get_tracker_snapshot("current"))["parameters"]
    finally:
        torch.utils.swap_tensors = swap
    assert after >= before - 64 * 1024  # q/k/v biases may be cast to the compute dtype (kilobytes); codes stay
