"""Tensor memory of a recipe's training step at a real model's shapes, measured on the CPU without the memory.

The measuring harness of `benchmarks/memory.py` and `benchmarks/gpu_memory.py` (and their tests), not library
code: the planner (`trl_ext.plan`) reads the constants this measured, never this module.

`measure_recipe(config)` runs the recipe of a config (its own `main`: data set-up, `load_model`, LoRA, trainer, two
optimizer steps) with three things replaced, all undone afterwards:

- **Weights.** `from_pretrained` builds the named architecture (`model_shapes`: the published Qwen2.5 shapes, or a
  model's `config.json`) with random weights under PyTorch's `FakeTensorMode`: tensors have shapes, dtypes and
  storages but no data, so a 7B model costs nothing. Linear weights go through transformers' bitsandbytes quantizer
  (the modules it converts and skips) and `bitsandbytes.functional.quantize_4bit` with the config's NF4 / double
  quantization settings, so packed weights and their quantization statistics have their real sizes; `load_model`
  then runs unchanged (k-bit preparation, gradient checkpointing), and the trainer adds LoRA.
- **Values.** Nothing is computed, so a value read on the host (`loss.item()`, `if mask.any()`) cannot be known:
  numbers read 1 and truth values read True, while what depends on the data alone (token ids, masks, a packed
  batch's layout) is computed for real (`HostValues`). Generation runs every completion to `max_new_tokens` and
  hands back real ids (the filler word, no end of sequence): the worst case, as every other sequence is at its
  maximum length. The decode loop is a prefill and one pass over the other max_new_tokens - 1 positions
  (`_generation_at_full_length`: the KV cache at its final size; a bound from above on the decode steps).
- **Counting.** PyTorch's `MemTracker` counts every live storage by category (parameters, buffers, gradients,
  optimizer state, activations, temporaries) and keeps the peak. `TrainableMemTracker` installs its gradient hooks on
  trainable tensors only (LoRA's frozen base has no gradient to hook) and counts the 4-bit quantization statistics
  as parameters.

What this measures is the tensor memory PyTorch allocates; a CUDA run adds its context, the caching allocator's
rounding and fragmentation, and kernels' workspaces (see `CUDA_OVERHEAD_BYTES`). The tokenizer is the embedded
SmolLM2's (ids are ids: the model's vocabulary sets the embedding and logits sizes); the data is synthetic, every
sequence at the config's maximum length.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import tempfile
import time
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trl_ext.methods import PLANNED
from trl_ext.model_shapes import CUDA_OVERHEAD_BYTES, GIB, MODEL_SHAPES, model_shapes  # noqa: F401 (re-exported)
from trl_ext.plan import FITTED, Run, Shapes, activation_features, static_bytes

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- placeholders
class HostValues(TorchDispatchMode):
    """Values under fake weights. Anything computed from the data alone (token ids, masks, lengths, the layout of a
    packed batch) is computed for real: an op whose tensors are all real, or that creates an integer or boolean
    tensor from nothing, runs outside the fake mode. Host reads of fake values (`loss.item()`, `if nan.any()`) cannot
    be known: numbers read 1 (so `lr / (1 - beta**step)` stays finite) and truth values True (no NaN found)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch._subclasses.fake_tensor import FakeTensor
        from torch.utils._python_dispatch import _disable_current_modes
        from torch.utils._pytree import tree_leaves

        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        fake = any(isinstance(t, FakeTensor) for t in tensors)
        if fake and func is torch.ops.aten.equal.default:
            return True
        if fake and func is torch.ops.aten._local_scalar_dense.default:
            dtype = args[0].dtype
            if dtype == torch.bool:
                return True
            return 1.0 if dtype.is_floating_point else 1
        if func is torch.ops.aten.nonzero.default and fake:  # fake values: every entry counts (the worst case)
            with _disable_current_modes():
                return torch.ones(args[0].shape, dtype=torch.bool).nonzero()
        if func in (torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default):
            # A boolean index is its nonzero positions: taken on the host (real masks) or all of them (fake masks)
            indices = []
            for index in args[1]:
                if isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8):
                    with _disable_current_modes():
                        mask = torch.ones(index.shape, dtype=torch.bool) if isinstance(index, FakeTensor) else index
                        indices.extend(mask.bool().nonzero().unbind(1))
                else:
                    indices.append(index)
            args = (args[0], indices, *args[2:])
            tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            fake = any(isinstance(t, FakeTensor) for t in tensors)
        if tensors and not fake:
            with _disable_current_modes():
                return func(*args, **kwargs)
        result = func(*args, **kwargs)
        if not tensors and isinstance(result, torch.Tensor) and not result.dtype.is_floating_point:
            with _disable_current_modes():  # an index or mask made from nothing (arange, ones): real
                return func(*args, **kwargs)
        return result


def _swap_or_set_data(original):
    """`torch.utils.swap_tensors` for `Module.to()` on fake parameters: torch always swaps a FakeTensor parameter,
    which fails once anything holds a weak reference to it (FakeTensorMode does) and would drop the attributes a
    4-bit weight carries (its quantization state); setting `.data` keeps both. A packed 4-bit weight ignores a dtype
    change (`reward_model.to(torch.bfloat16)` would otherwise turn its uint8 codes into bf16 numbers)."""

    def swap(t1, t2):
        from torch._subclasses.fake_tensor import FakeTensor

        if not isinstance(t1, FakeTensor):
            return original(t1, t2)
        if getattr(t1, "bnb_quantized", False) and t2.dtype != t1.dtype:
            return  # packed 4-bit codes keep their storage dtype under .to(dtype), as bitsandbytes' Params4bit.to does
        t1.data = t2.detach()

    return swap


# ------------------------------------------------------------------------------------------------- tracker
def _tracker_class():
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    class TrainableMemTracker(MemTracker):
        """`MemTracker` that hooks gradients of trainable tensors only, counts 4-bit quantization statistics
        (absmax, nested absmax, code books) as parameters, and keeps the global peak only: no per-module
        snapshots (which refuse a module called twice in a step, as a reference pass with the adapter disabled
        does, and cost a copy per call)."""

        def _pre_fw_hook(self, module, inputs) -> None:
            if module not in self.memory_tracking:
                self._track_module_params_and_buffers(module, install_grad_hooks=True)
                self.memory_tracking[module] = True
            elif self._mod_tracker.is_bw and self._ac_mod is None:  # recomputation under checkpointing
                self._ac_mod, self._in_ac = weakref.ref(module), True

        def _post_fw_hook(self, module, inputs, outputs) -> None:
            if self._mod_tracker.is_bw and self._ac_mod is not None and self._ac_mod() is module:
                self._ac_mod, self._in_ac = None, False

        def _pre_bw_hook(self, module, args) -> None:
            pass

        def _post_bw_hook(self, module, args) -> None:
            pass

        def _update_peak_stats(self, peak_state) -> None:
            for device, snapshot in self._curr_mem_snap.items():
                total = sum(value for key, value in snapshot.items() if key != "Total")
                if self._peak_mem.get(device, 0) < total:
                    self._peak_mem[device] = total
                    self._peak_mem_snap[device] = dict(snapshot)

        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            # Private MemTracker API (listed in tests/test_trl_internals.py): its own grad hooks fail on frozen tensors.
            memory = super()._track_module_params_and_buffers(module, install_grad_hooks=False)
            for submodule in module.modules():
                state = getattr(getattr(submodule, "weight", None), "quant_state", None)
                for tensor in _quant_state_tensors(state):
                    self._update_and_maybe_create_winfos(tensor, _MemRefType.PARAM)
            if install_grad_hooks:
                for param in module.parameters():
                    if param.requires_grad and self._param_to_grad_hook_handles.get(param) is None:
                        self._param_to_grad_hook_handles[param] = (
                            param.register_hook(self._count_grad),
                            param.register_post_accumulate_grad_hook(self._count_accumulated_grad),
                        )
            return memory

        def _count_grad(self, grad: torch.Tensor) -> None:  # a hook must return None
            self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

        def _count_accumulated_grad(self, param: torch.Tensor) -> None:
            self._update_and_maybe_create_winfos(param.grad, _MemRefType.GRAD)

    return TrainableMemTracker


def _quant_state_tensors(state) -> Iterator[torch.Tensor]:
    if state is None:
        return
    for value in (state.absmax, state.code, getattr(state, "offset", None)):
        if isinstance(value, torch.Tensor):
            yield value
    yield from _quant_state_tensors(getattr(state, "state2", None))


CATEGORIES = ("parameters", "buffers", "gradients", "optimizer", "activations", "temporaries", "other")
_CATEGORY_OF = {
    "Parameter": "parameters",
    "Buffer": "buffers",
    "Gradient": "gradients",
    "Optstate": "optimizer",
    "Activation": "activations",
    "Temp": "temporaries",
    "Other": "other",
}


def _snapshot_bytes(snapshot: dict) -> dict[str, int]:
    """MemTracker's per-device snapshot, summed over devices, keyed by our category names."""
    totals = dict.fromkeys(CATEGORIES, 0)
    for device_snapshot in snapshot.values():
        for key, value in device_snapshot.items():
            name = _CATEGORY_OF.get(getattr(key, "value", key))
            if name is not None:
                totals[name] += int(value)
    return totals


# ------------------------------------------------------------------------------------------------- fake models
def _quantize_linear_weights(model, quantization_config, device: str | None = None) -> None:
    """Replace the Linear layers transformers' bitsandbytes quantizer converts by 4-bit ones (`quantize_4bit` with
    the config's block size, quant type and double quantization), as `from_pretrained` does with a checkpoint.

    `device` None: the weights are fake and each 4-bit layer gets a plain fake parameter holding the packed codes and
    carrying the quantization state (bitsandbytes' Params4bit cannot wrap a fake tensor). Otherwise: real
    `Params4bit` quantized on `device`, exactly transformers' own conversion."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnb_functional
    from torch.utils._python_dispatch import _disable_current_modes
    from transformers.quantizers import AutoHfQuantizer

    quantizer = AutoHfQuantizer.from_config(quantization_config, pre_quantized=False)
    dense = {name: param for name, param in model.named_parameters()}
    with _disable_current_modes(), torch.device("meta"):  # the new modules' placeholder weights cost nothing
        quantizer.preprocess_model(model, device_map={"": device or "cpu"})
    for name, module in model.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        source = dense.pop(f"{name}.weight")
        if device is not None:
            module.weight = bnb.nn.Params4bit(source.data, requires_grad=False, **module.weight.__dict__).to(device)
        else:
            packed, state = bnb_functional.quantize_4bit(
                source,
                blocksize=module.weight.blocksize,
                compress_statistics=module.weight.compress_statistics,
                quant_type=module.weight.quant_type,
                quant_storage=module.weight.quant_storage,
            )
            weight = torch.nn.Parameter(packed, requires_grad=False)
            for key, value in module.weight.__dict__.items():
                setattr(weight, key, value)
            weight.quant_state, weight.bnb_quantized, weight.module = state, True, module
            module.weight = weight
            # bitsandbytes repacks a CPU model's weights for AVX-512 inference on its first no-grad forward; a CUDA
            # run keeps them as they are, and so does the measurement (the repacked codes would count as activations)
            module.support_avx512bf16_for_cpu = False
        del source
        if module.bias is not None:
            module.bias = torch.nn.Parameter(dense.pop(f"{name}.bias").data, requires_grad=False)
    quantizer.postprocess_model(model)
    model.hf_quantizer = quantizer
    model.is_quantized = True


def build_model(auto_class, shapes: dict[str, Any], device: str | None = None, **kwargs: Any):
    """`auto_class.from_pretrained(...)` stand-in: the architecture `shapes` with random weights, in `dtype`,
    quantized as `quantization_config` says. `device` None: fake weights (call under a FakeTensorMode); else real
    ones initialised on `device`."""
    from transformers import AutoConfig

    shapes = dict(shapes)
    model_type = shapes.pop("model_type")
    for key in ("architectures", "torch_dtype", "dtype", "transformers_version", "quantization_config"):
        shapes.pop(key, None)
    config = AutoConfig.for_model(model_type, **shapes)
    if "num_labels" in kwargs:
        config.num_labels = kwargs["num_labels"]
    quantization_config = kwargs.get("quantization_config")
    dtype = kwargs.get("dtype") or torch.float32
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = auto_class.from_config(config, dtype=dtype, attn_implementation=kwargs.get("attn_implementation"))
    if quantization_config is not None:
        _quantize_linear_weights(model, quantization_config, device)
    return model


# ------------------------------------------------------------------------------------------------- the record
@dataclass
class Measurement:
    """One measured configuration: the peak of all tensors alive at once, by category, in bytes."""

    config: str
    model: str
    method: str
    num_layers: int
    peak_bytes: int
    categories: dict[str, int]
    settings: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, int] = field(default_factory=dict)
    how: str = ""
    where: str = ""
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


HOW = (
    "MemTracker (torch.distributed._tools.mem_tracker) over the recipe's own trainer, 2 optimizer steps, fake "
    "tensors at the model's real shapes (random weights, 4-bit NF4 as configured), every sequence at its maximum "
    "length, generation to max_new_tokens (prefill, then one pass to the final KV cache size); tensor memory only (no CUDA context or allocator overhead)"
)


# ------------------------------------------------------------------------------------------------- synthetic data
_WORD = " word"  # one token in the SmolLM2 vocabulary


def _text(tokens: int) -> str:
    return (_WORD * max(tokens, 1)).strip()


def synthetic_rows(method: str, settings: dict[str, Any], rows: int = 64) -> list[dict[str, Any]]:
    """Rows in the recipe's input shape whose sequences reach the config's maximum lengths after tokenization
    (longer ones are truncated by the trainers; the reward trainer drops over-long pairs, so it gets a few tokens
    under `max_length` for the chat template's special tokens). Prompts of rollout methods and ranked groups are at
    `max_prompt_length`."""
    max_length = settings.get("max_length") or 1024
    if method in ("ppo", "grpo-online"):
        prompt = _text(settings.get("max_prompt_length") or 512)
        if method == "ppo":
            return [{"prompt": prompt} for _ in range(rows)]
        n = settings.get("num_generations") or 4
        return [
            {"prompt": prompt, "responses": [_text(settings.get("reward_max_length") or 1024)] * n,
             "ranking": list(range(1, n + 1))}
            for _ in range(rows)
        ]  # fmt: skip
    if method == "grpo":
        prompt = _text(settings.get("max_prompt_length") or 512)
        n = settings.get("group_size") or 4
        answer = _text(settings.get("max_completion_length") or 512)
        return [{"prompt": prompt, "responses": [answer] * n, "ranking": list(range(1, n + 1))} for _ in range(rows)]
    # A short prompt: with prefix sharing a long one would be computed once for both answers (fewer tokens), so the
    # worst case is a short prompt and answers filling max_length
    prompt_tokens = 32
    answer = _text(max_length - prompt_tokens - 8 if method == "reward" else 2 * max_length)
    prompt = _text(prompt_tokens)
    if method == "sft":
        return [{"prompt": prompt, "completion": answer} for _ in range(rows)]
    if method == "kto":
        return [{"prompt": prompt, "response": answer, "label": i % 2 == 0} for i in range(rows)]
    if method == "ipo":  # length-aware IPO reads declared lengths
        return [{"prompt": prompt, "chosen": answer, "rejected": answer, "chosen_length": 2 * max_length,
                 "rejected_length": 2 * max_length} for _ in range(rows)]  # fmt: skip
    return [{"prompt": prompt, "chosen": answer, "rejected": answer} for _ in range(rows)]


# ------------------------------------------------------------------------------------------------- measuring a recipe
def _recipe_main(method: str):
    """The recipe script's `main` (from the clone's `recipes/` or the wheel's `trl_ext/recipes`)."""
    from trl_ext.packaged import load_recipe

    return load_recipe(method.removesuffix("-online")).main


@contextlib.contextmanager
def _patched(target, name: str, value) -> Iterator[None]:
    original = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, original)


@contextlib.contextmanager
def _generation_at_full_length(filler_id: int) -> Iterator[None]:
    """Sampling in two forward passes that leave the KV cache at its final size.

    A decode loop of `max_new_tokens` steps costs minutes under fake tensors (every op of every step goes through
    three dispatch modes), so `generate` here prefills the prompt and samples one token as usual, then runs the
    other `max_new_tokens - 1` positions (a filler token) through the model in one pass on that cache: the cache ends
    at prompt + max_new_tokens positions, as a run whose every completion reaches `max_new_tokens` (the worst case)
    ends. The second pass's activations are those of max_new_tokens - 1 tokens where a real decode step has one
    token's, so the generation phase is bounded from above (by less than the prefill's own transient when the
    completion is shorter than the prompt). The sampled ids (fake) come back as real ids of the filler token, so
    whatever reads them (decoding, end-of-sequence search, scoring) sees full-length completions."""
    from torch.utils._python_dispatch import _disable_current_modes
    from transformers.generation import utils as generation_utils

    original_generate = generation_utils.GenerationMixin.generate

    def generate(self, *args, **kwargs):
        kwargs = dict(kwargs)
        input_ids = kwargs.pop("input_ids", args[0] if args else None)
        config = copy.deepcopy(kwargs.pop("generation_config", None) or self.generation_config)
        new_tokens = kwargs.pop("max_new_tokens", None) or config.max_new_tokens
        mask = kwargs.pop("attention_mask", None)
        config.max_new_tokens, config.min_new_tokens = 1, None
        config.return_dict_in_generate, config.use_cache = True, True
        first = original_generate(self, input_ids=input_ids, attention_mask=mask, generation_config=config, **kwargs)
        with _disable_current_modes():
            filler = torch.full((input_ids.shape[0], new_tokens - 1), filler_id, dtype=input_ids.dtype)
            real = torch.cat([input_ids, filler[:, :1], filler], dim=1)[:, : input_ids.shape[1] + new_tokens]
            full_mask = None if mask is None else torch.ones(real.shape, dtype=mask.dtype)
        if new_tokens > 1:
            with torch.no_grad():
                self(input_ids=filler, attention_mask=full_mask, past_key_values=first.past_key_values,
                     use_cache=True, logits_to_keep=1)  # fmt: skip
        del first
        return real

    with _patched(generation_utils.GenerationMixin, "generate", generate):
        yield


def measure_recipe(
    config_path: str | Path,
    *,
    model: str | None = None,
    num_layers: int | None = None,
    overrides: dict[str, Any] | None = None,
    steps: int | None = None,
    device: str | None = None,
) -> Measurement:
    """Peak tensor memory of `steps` optimizer steps of the config's recipe at `model`'s shapes (default: the
    config's model; `num_layers` fewer decoder layers). `overrides`: config fields to change (e.g.
    `{"max_length": 512}`). `steps`: optimizer steps (default 2, so the second forward meets the optimizer state;
    1 for PPO and online GRPO, whose one step samples per_device_train_batch_size x gradient_accumulation_steps
    prompts at once and already holds everything). See the module docstring for what is real and what is fake.

    `device` ("cuda", "cpu"): real random weights and real steps on that device instead (benchmarks/gpu_memory.py);
    the peak is then `torch.cuda.max_memory_allocated` (one category, `allocated`; the reserved peak in `extra`) on
    CUDA, and only timing on the CPU."""
    import transformers
    import yaml
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from trl_ext import recipe
    from trl_ext.models import resolve_model_name
    from trl_ext.plan import config_method

    config_path = Path(config_path)
    settings = dict(yaml.safe_load(config_path.read_text()) or {})
    settings.update(overrides or {})
    method = config_method(config_path, settings)
    steps = steps or (1 if method in _ROLLOUT_METHODS else 2)
    model_name = model or settings["model_name_or_path"]
    shapes = model_shapes(model_name)
    if num_layers is not None:
        shapes["num_hidden_layers"] = num_layers
    layers = int(shapes["num_hidden_layers"])
    # Ids are ids: the tokenizer only turns the synthetic words into as many tokens (read before anything is patched).
    tokenizer_path = resolve_model_name("trl-ext/smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    import bitsandbytes.functional as bnb_functional

    bnb_functional.create_dynamic_map()  # built once on the host: its construction reads values

    phases: dict[str, int] = {}
    peak: dict[str, int] = dict.fromkeys(CATEGORIES, 0)
    tracker_class = _tracker_class()
    original_train = transformers.Trainer.train

    timing: dict[str, float] = {}

    def device_train(trainer, *args, **kwargs):
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        began = time.perf_counter()
        result = original_train(trainer, *args, **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()
            allocated, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
            phases[type(trainer).__name__] = allocated
            if allocated >= sum(peak.values()):  # one figure on a GPU: the allocator's peak (reserved beside it)
                peak.clear()
                peak["allocated"] = allocated
                timing["reserved_bytes"] = reserved
        timing["train_seconds"] = timing.get("train_seconds", 0.0) + time.perf_counter() - began
        return result

    def measured_train(trainer, *args, **kwargs):
        tracker = tracker_class()
        modules = [value for value in vars(trainer).values() if isinstance(value, torch.nn.Module)]
        for reward in getattr(trainer, "reward_funcs", None) or []:  # online GRPO's scorer holds its model
            modules += [value for value in vars(reward).values() if isinstance(value, torch.nn.Module)]
        tracker.track_external(*modules)
        with tracker:
            result = original_train(trainer, *args, **kwargs)
        categories = _snapshot_bytes(tracker.get_tracker_snapshot("peak"))
        name = type(trainer).__name__
        phases[name] = sum(categories.values())
        if phases[name] >= sum(peak.values()):
            peak.update(categories)
        return result

    def stand_in_from_pretrained(auto_class):
        def from_pretrained(name, *args, **kwargs):
            kwargs.pop("device_map", None)
            return build_model(auto_class, shapes, device, **kwargs)

        return from_pretrained

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data.jsonl"
        with data.open("w") as handle:
            for row in synthetic_rows(method, settings):
                handle.write(json.dumps(row) + "\n")
        argv = ["--config", str(config_path), "--dataset_path", str(data), "--output_dir", str(Path(folder) / "out"),
                "--model_name_or_path", model_name, "--max_steps", str(steps), "--logging_steps", "1",
                "--save_strategy", "no", "--eval_strategy", "no", "--eval_fraction", "0", "--report_to", "none",
                "--use_cpu", str(device != "cuda").lower(), "--dataloader_num_workers", "0"]  # fmt: skip
        if method not in _ROLLOUT_METHODS:  # one micro-batch per step: the same peak, fewer fake steps
            argv += ["--gradient_accumulation_steps", "1"]
        for key, value in (overrides or {}).items():
            argv += [f"--{key}", str(value)]
        if method in _ROLLOUT_METHODS:
            # A reward model of the policy's shapes, loaded for scoring as the recipe loads one. Online GRPO without
            # reward_model_path first trains it (a separate phase before the policy is loaded, with the token count
            # of one reward/qlora-24gb step: 8 sequences at reward_max_length); that phase is not in this figure.
            argv += ["--reward_model_path", model_name]
        start = time.perf_counter()
        with contextlib.ExitStack() as stack:
            for auto_class in (AutoModelForCausalLM, AutoModelForSequenceClassification):
                stack.enter_context(_patched(auto_class, "from_pretrained", stand_in_from_pretrained(auto_class)))
            stack.enter_context(_patched(AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer))
            stack.enter_context(_patched(recipe, "finish", lambda trainer, *a, **k: None))
            if device is None:
                stack.enter_context(_patched(torch.utils, "swap_tensors", _swap_or_set_data(torch.utils.swap_tensors)))
                stack.enter_context(_patched(transformers.Trainer, "train", measured_train))
                filler = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(_WORD))[0]
                stack.enter_context(_generation_at_full_length(filler))
                stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
                stack.enter_context(HostValues())
            else:
                stack.enter_context(_patched(transformers.Trainer, "train", device_train))
            _recipe_main(method)(argv)
        seconds = time.perf_counter() - start
    return Measurement(
        config=str(config_path),
        model=model_name,
        method=method,
        num_layers=layers,
        peak_bytes=sum(peak.values()),
        categories=peak,
        settings={key: settings.get(key) for key in _SETTINGS if settings.get(key) is not None},
        phases=phases,
        how=HOW if device is None else DEVICE_HOW,
        where=_where(device),
        seconds=round(seconds, 1),
        extra=timing,
    )


DEVICE_HOW = (
    "the recipe's own trainer on the device, real random weights of the model's shapes (4-bit NF4 as configured), "
    "2 optimizer steps (1 rollout step), every sequence at its maximum length; peak = torch.cuda.max_memory_allocated "
    "during training"
)


def _where(device: str | None) -> str:
    import platform

    import transformers

    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    if device == "cuda":
        return f"{torch.cuda.get_device_name()}, {versions}"
    return f"{platform.machine()} CPU, {versions}"


# Their rollout batch is per_device_train_batch_size x gradient_accumulation_steps: measured as configured
_ROLLOUT_METHODS = tuple(name for name, m in PLANNED.items() if m.generates)

_SETTINGS = (
    "gradient_accumulation_steps", "num_ppo_epochs", "num_mini_batches", "generation_batch_size",
    "steps_per_generation",
    "per_device_train_batch_size", "max_length", "max_prompt_length", "max_completion_length", "num_generations",
    "reward_max_length", "reward_per_device_train_batch_size", "prefix_sharing", "gradient_checkpointing", "optim",
    "lora_r", "lora_target_modules", "dtype", "load_in_4bit", "use_bnb_nested_quant",
)  # fmt: skip


# ------------------------------------------------------------------------------------------- the planner's fit
def fit(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per-method coefficients from measured records (`benchmarks/results/memory.json`).

    - `embedding_bytes`: 4 (float32 after k-bit preparation) or 2 (a trainer that casts them back to bf16),
      whichever makes the exact parameter bytes match the measured parameters category.
    - `width`, `head`, `rollout_width`: non-negative least squares of what the measured peak holds beyond the exact
      terms (parameters, optimizer, checkpoints, KV cache) on the features of `activation_features`.
    """
    coefficients: dict[str, dict[str, float]] = {}
    by_method: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_method.setdefault(record["method"], []).append(record)
    for method, rows in sorted(by_method.items()):
        runs = []
        for record in rows:
            shapes = Shapes.of(dict(model_shapes(record["model"]), num_hidden_layers=record["num_layers"]))
            runs.append((record, shapes, Run.of(method, record["settings"] | record.get("overrides", {}))))
        errors = {}
        for embedding_bytes in (4.0, 2.0):
            trial = {method: {"embedding_bytes": embedding_bytes}}
            errors[embedding_bytes] = sum(
                abs(static_bytes(shapes, run, trial)["parameters"] - record["categories"]["parameters"])
                for record, shapes, run in runs
            )
        embedding_bytes = min(errors, key=errors.get)
        current = {method: {"embedding_bytes": embedding_bytes}}
        xs, ys = [], []
        for record, shapes, run in runs:
            features = activation_features(shapes, run)
            exact = sum(static_bytes(shapes, run, current).values()) + features["checkpoints"] + features["kv_cache"]
            xs.append([features[name] for name in FITTED])
            ys.append(record["peak_bytes"] - exact)
        x, y = np.array(xs, dtype=float), np.array(ys, dtype=float)
        active = [i for i in range(len(FITTED)) if x[:, i].any()]
        solution = np.zeros(len(FITTED))
        while active:  # least squares, dropping a feature whose coefficient comes out negative
            values, *_ = np.linalg.lstsq(x[:, active], y, rcond=None)
            if (values >= 0).all():
                solution[active] = values
                break
            active.pop(int(np.argmin(values)))
        coefficients[method] = {"embedding_bytes": embedding_bytes}
        coefficients[method].update({name: round(float(v), 6) for name, v in zip(FITTED, solution)})
    return coefficients
