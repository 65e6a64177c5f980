"""Will a run fit? The peak GPU memory of a recipe config, predicted in milliseconds without building the model.

    python -m trl_ext.plan --config recipes/configs/dpo/qlora-24gb.yaml [--model Qwen/Qwen2.5-14B-Instruct]
                           [--gpu_memory 24] [--json] [--set max_length=2048 ...]
    trl-ext plan --config dpo/qlora-24gb

The prediction has two parts:

- **Exact sizes** from the model's shapes (`trl_ext.model_shapes.model_shapes`: its `config.json` or the published Qwen2.5
  shapes) and the config: 4-bit NF4 weights with their quantization statistics, the embeddings and norms (float32
  after k-bit preparation where the trainer keeps them so), LoRA, the optimizer state, a second 4-bit reward model
  for PPO and online GRPO, the KV cache of a rollout.
- **Activations** as bytes per token of the step's sequences: `4 h` per decoder layer (gradient checkpointing keeps
  each layer's float32 input), `width` bytes per `(h + I)` (the one layer being recomputed in the backward pass),
  and `head` bytes per vocabulary entry per token through the LM head (its logits and their gradient; TRL's fused
  head takes at most 4096 tokens at a time), and for PPO and online GRPO `rollout_width` bytes per `(h + I)` of the
  sampled sequences. These depend on what each trainer computes (ORPO materialises full logits, the reward model has
  no LM head); they are fitted per method on measurements of two small shapes (`benchmarks/memory_harness.fit`, from
  `benchmarks/results/memory.json`'s calibration records) and checked on the configs' own models and on sequence
  lengths the fit never saw (`tests/test_plan.py`: within 10%).

What a CUDA run adds on top of the tensor memory (context, allocator rounding, workspaces) is the fixed
`trl_ext.model_shapes.CUDA_OVERHEAD_BYTES`; `fits` compares tensors + that allowance with the card.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trl_ext.methods import NAMES, PLANNED, method_of_trainer

GIB = 2**30
METHODS = tuple(PLANNED)  # trl_ext.methods: the recipes, with GRPO online as its own entry

# Fitted on benchmarks/results/memory.json's calibration records (Qwen2.5-0.5B and -1.5B shapes) by `benchmarks/memory_harness.fit`;
# tests/test_plan.py re-fits and checks these are what the records give.
COEFFICIENTS: dict[str, dict[str, float]] = {
    "dpo": {"embedding_bytes": 4.0, "width": 5.184224, "head": 6.647999, "rollout_width": 0.0},
    "grpo": {"embedding_bytes": 4.0, "width": 4.678239, "head": 6.801811, "rollout_width": 0.0},
    "grpo-online": {"embedding_bytes": 4.0, "width": 0.0, "head": 7.082171, "rollout_width": 0.0},
    "ipo": {"embedding_bytes": 4.0, "width": 5.184224, "head": 6.647999, "rollout_width": 0.0},
    "kto": {"embedding_bytes": 4.0, "width": 7.607914, "head": 6.744523, "rollout_width": 0.0},
    "orpo": {"embedding_bytes": 2.0, "width": 0.788964, "head": 17.994162, "rollout_width": 0.0},
    "ppo": {"embedding_bytes": 4.0, "width": 0.0, "head": 5.343236, "rollout_width": 2.907742},
    "reward": {"embedding_bytes": 4.0, "width": 24.026727, "head": 0.01369, "rollout_width": 0.0},
    "sft": {"embedding_bytes": 4.0, "width": 4.397816, "head": 6.728693, "rollout_width": 0.0},
}


# ------------------------------------------------------------------------------------------------- settings
@dataclass
class Shapes:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    qkv_bias: bool = True
    head_dim: int = 0  # 0: hidden // heads

    @classmethod
    def of(cls, config: dict[str, Any]) -> Shapes:
        """The shapes of a dense decoder (`config.json` fields; a vision-language config's `text_config`). Raises
        ValueError for what the planner does not model (mixture-of-experts layers) or cannot read."""
        if isinstance(config.get("text_config"), dict):
            config = {**config, **config["text_config"]}
        experts = {k: config[k] for k in _EXPERT_FIELDS if config.get(k)}
        if experts:
            raise ValueError(
                f"mixture-of-experts shapes ({', '.join(f'{k}={v}' for k, v in experts.items())}) are not modelled: "
                "the planner counts dense layers only"
            )
        missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                               "vocab_size") if config.get(k) is None]  # fmt: skip
        if missing:
            raise ValueError(f"the model's config has no {', '.join(missing)}: its shapes cannot be read")
        heads = int(config["num_attention_heads"])
        return cls(
            hidden=int(config["hidden_size"]),
            intermediate=int(config["intermediate_size"]),
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            vocab=int(config["vocab_size"]),
            tied=_tied(config),
            qkv_bias=config.get("model_type", "qwen2") == "qwen2" or bool(config.get("attention_bias", False)),
            head_dim=int(config.get("head_dim") or 0),
        )

    @property
    def head_width(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def q_width(self) -> int:
        return self.heads * self.head_width  # hidden, unless head_dim says otherwise (Gemma, Qwen3)

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_width

    @property
    def linear_params_per_layer(self) -> int:
        h, q, kv, i = self.hidden, self.q_width, self.kv_width, self.intermediate
        return h * q + 2 * h * kv + q * h + 3 * h * i  # q, k, v, o, gate, up, down

    @property
    def lora_width_per_layer(self) -> int:
        """Sum of (in + out) over the seven linear layers: LoRA holds r x this per layer."""
        h, q, kv, i = self.hidden, self.q_width, self.kv_width, self.intermediate
        return (h + q) + 2 * (h + kv) + (q + h) + 3 * (h + i)


_EXPERT_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")


def _tied(config: dict[str, Any]) -> bool:
    """`tie_word_embeddings`, or when the config leaves it out, its family's default in transformers (they differ)."""
    if "tie_word_embeddings" in config:
        return bool(config["tie_word_embeddings"])
    model_type = config.get("model_type")
    try:
        from transformers import AutoConfig  # only here: the published shapes all say it

        return bool(AutoConfig.for_model(model_type).tie_word_embeddings)
    except (ImportError, ValueError, KeyError, TypeError):
        raise ValueError(
            f"the model's config says no tie_word_embeddings and its model_type {model_type!r} gives no default"
        ) from None


_POSITIVE_FIELDS = ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "max_prompt_length",
                    "max_completion_length", "num_generations", "num_mini_batches")  # fmt: skip
_RECIPE_SCRIPT = re.compile(r"recipes/(\w+)\.py\b")
RECIPE_METHODS = NAMES  # the recipes the planner models: all of them


def config_method(config_path: str | Path, settings: dict[str, Any], method: str | None = None) -> str:
    """`dpo`, ..., `grpo-online` (a GRPO config with `mode: online`): from what the config says, never from where
    the file lives: `method` when given (`trl-ext plan --method`), else the recipe its own command line names (every
    recipe config opens with `# accelerate launch recipes/<method>.py --config ...`, and a copy keeps it). A config
    that names no recipe is a one-line error asking for `--method`."""
    if method is None:
        lines = Path(config_path).read_text().splitlines()
        head = lines[0] if lines else ""
        found = _RECIPE_SCRIPT.search(head) if head.startswith("#") else None
        if found is None:
            raise ValueError(
                f"{config_path}: its first line names no recipe (# ... recipes/<method>.py ...), so the method is "
                f"unknown: pass --method ({', '.join(RECIPE_METHODS)})"
            )
        method = found.group(1)
    if method not in RECIPE_METHODS:
        raise ValueError(
            f"{config_path}: method {method!r} is not one the planner models ({', '.join(RECIPE_METHODS)})"
        )
    if method == "grpo" and settings.get("mode") == "online":
        return "grpo-online"
    return method


@dataclass
class Run:
    """What the memory of a step depends on, read from a recipe config (unset fields take the trainers' defaults)."""

    method: str
    micro_batch: int
    max_length: int
    prompt_length: int
    completion_length: int
    group_size: int
    gradient_accumulation: int
    num_mini_batches: int
    generation_batch: int | None
    lora_r: int
    nested_quant: bool
    load_in_4bit: bool
    optimizer_bytes_per_param: float
    prefix_sharing: bool

    @classmethod
    def of(cls, method: str, settings: dict[str, Any], group_size: int = 4) -> Run:
        """The run a config describes; unset fields take the trainers' defaults. Raises ValueError for a setting
        that is not a positive count, and for `gradient_checkpointing: false`, which the planner does not model."""
        for key in _POSITIVE_FIELDS:
            value = settings.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{key}={value!r}: expected a positive integer")
        checkpointing = settings.get("activation_checkpointing", settings.get("gradient_checkpointing"))
        if checkpointing is False:
            raise ValueError(
                "gradient_checkpointing false is not modelled: the planner counts each layer's checkpointed input "
                "only, and without checkpointing every layer keeps its activations (many times more)"
            )
        optim = str(settings.get("optim") or "adamw_torch")
        return cls(
            method=method,
            micro_batch=int(settings.get("per_device_train_batch_size") or 8),
            max_length=int(settings.get("max_length") or 1024),
            prompt_length=int(settings.get("max_prompt_length") or 512),
            completion_length=int(settings.get("max_completion_length") or (256 if method == "grpo-online" else 512)),
            group_size=group_size,
            gradient_accumulation=int(settings.get("gradient_accumulation_steps") or 1),
            num_mini_batches=int(settings.get("num_mini_batches") or 1),
            generation_batch=settings.get("generation_batch_size")
            or (
                int(settings["steps_per_generation"]) * int(settings.get("per_device_train_batch_size") or 8)
                if settings.get("steps_per_generation")
                else None
            ),
            lora_r=int(settings.get("lora_r") or 16) if settings.get("use_peft", True) else 0,
            nested_quant=bool(settings.get("use_bnb_nested_quant", False)),
            load_in_4bit=bool(settings.get("load_in_4bit", False)),
            # two moments per trainable parameter: 1 byte each in 8-bit optimizers (bitsandbytes; plus a float32
            # absmax per 256-value block of each), 4 bytes otherwise
            optimizer_bytes_per_param=2.0 + 8 / 256 if "8bit" in optim else 8.0,
            prefix_sharing=bool(settings.get("prefix_sharing", False)),
        )

    # tokens of one micro-step's forward with gradients, and of those through the LM head
    def train_tokens(self) -> int:
        b, n = self.micro_batch, self.group_size
        if self.method in ("sft", "kto"):
            return b * self.max_length
        if self.method in ("reward", "dpo", "ipo", "orpo"):
            return 2 * b * self.max_length  # chosen and rejected (prefix sharing saves the prompt: ~0 at worst)
        if self.method == "grpo":
            p, c = self.prompt_length, self.completion_length
            return b * (p + n * c) if self.prefix_sharing else b * n * (p + c)
        return b * (self.prompt_length + self.completion_length)  # grpo-online, ppo: sequences of a micro-batch

    def generated_sequences(self) -> int:
        """Sequences sampled at once (online GRPO: a generation batch; PPO: a rollout); 0 offline."""
        if self.method == "grpo-online":
            return int(self.generation_batch or self.micro_batch * self.gradient_accumulation)
        if self.method == "ppo":
            return self.micro_batch * self.gradient_accumulation * self.num_mini_batches
        return 0


# ------------------------------------------------------------------------------------------------- sizes
def four_bit_bytes(params: int, nested: bool) -> float:
    """NF4: half a byte per weight, an absmax per 64 (one byte with double quantization, plus a float32 per 256 of
    those; four bytes without)."""
    blocks = params / 64
    return params / 2 + (blocks + blocks / 256 * 4 if nested else blocks * 4)


def static_bytes(
    shapes: Shapes, run: Run, coefficients: dict[str, dict[str, float]] | None = None
) -> dict[str, float]:
    """Parameters (policy, reward model) and optimizer state, which live through the whole run."""
    coefficients = COEFFICIENTS if coefficients is None else coefficients
    h, layers = shapes.hidden, shapes.layers
    linear = shapes.linear_params_per_layer * layers
    small = layers * (2 * h + (shapes.q_width + 2 * shapes.kv_width if shapes.qkv_bias else 0)) + h  # norms, biases
    embeddings = shapes.vocab * h * (1 if shapes.tied or run.method == "reward" else 2)
    lora = run.lora_r * shapes.lora_width_per_layer * layers
    if run.method == "reward":
        lora += h  # the score head, trained in full
    # float32 after k-bit preparation, unless the trainer casts them back (fitted: 4 or 2)
    embedding_bytes = coefficients.get(run.method, {}).get("embedding_bytes", 4.0)
    base = four_bit_bytes(linear, run.nested_quant) if run.load_in_4bit else 2 * linear
    parameters = base + 4 * small + embedding_bytes * embeddings + 4 * lora
    if run.method in ("ppo", "grpo-online"):  # the reward model: the same base, no k-bit preparation, no LM head
        parameters += base + 2 * small + 2 * shapes.vocab * h
    return {"parameters": parameters, "optimizer": run.optimizer_bytes_per_param * lora}


# TRL's fused LM head (trl/kernels/chunked_logprob.py) projects TOKEN_CHUNK_SIZE tokens at a time: what it holds
# per token of the vocabulary is bounded by that many tokens, whatever the sequence length.
FUSED_HEAD_TOKENS = 4096
FUSED_HEAD_METHODS = tuple(name for name, m in PLANNED.items() if m.fused_lm_head)


def activation_features(shapes: Shapes, run: Run) -> dict[str, float]:
    """The per-token quantities the activation terms multiply: checkpointed layer inputs (bytes, exact), tokens x
    (h + I) and LM-head tokens x vocabulary (fitted bytes per unit), and the rollout's KV cache (bytes, exact)."""
    tokens = run.train_tokens()
    head_tokens = min(tokens, FUSED_HEAD_TOKENS) if run.method in FUSED_HEAD_METHODS else tokens
    generated = run.generated_sequences() * (run.prompt_length + run.completion_length)
    return {
        "checkpoints": 4.0 * tokens * shapes.layers * shapes.hidden,
        "width": float(tokens * (shapes.hidden + shapes.intermediate)),
        "head": float(head_tokens * shapes.vocab),
        "kv_cache": 2.0 * 2 * generated * shapes.layers * shapes.kv_width,  # k and v, bf16
        "rollout_width": float(generated * (shapes.hidden + shapes.intermediate)),
    }


# ------------------------------------------------------------------------------------------------- prediction
@dataclass
class Prediction:
    config: str
    model: str
    method: str
    peak_bytes: int
    categories: dict[str, int]
    cuda_overhead_bytes: int
    gpu_memory_bytes: int | None = None
    fits: bool | None = None
    suggestions: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def predict_bytes(
    shapes: Shapes, run: Run, coefficients: dict[str, dict[str, float]] | None = None
) -> dict[str, float]:
    """Categories of the predicted peak, in bytes: parameters, optimizer, and activations (everything the step
    makes: kept tensors, the rollout's cache, the LM head's logits and gradients, the recomputed layer)."""
    coefficients = COEFFICIENTS if coefficients is None else coefficients
    c = coefficients.get(run.method, {})
    static = static_bytes(shapes, run, coefficients)
    features = activation_features(shapes, run)
    activations = features["checkpoints"] + features["kv_cache"]
    activations += sum(c.get(name, 0.0) * features[name] for name in FITTED)
    return {"parameters": static["parameters"], "optimizer": static["optimizer"], "activations": activations}


def predict(
    config: str | Path,
    *,
    model: str | None = None,
    overrides: dict[str, Any] | None = None,
    gpu_memory_gib: float | None = None,
    group_size: int = 4,
    method: str | None = None,
) -> Prediction:
    """The predicted peak of `config` (a recipe YAML) at `model`'s shapes (default: the config's model); `method`
    when the config does not name its recipe (`config_method`)."""
    import yaml

    from trl_ext.model_shapes import model_shapes

    path = Path(config)
    settings = dict(yaml.safe_load(path.read_text()) or {})
    settings.update(overrides or {})
    method = config_method(path, settings, method)
    model_name = model or settings.get("model_name_or_path")
    if not model_name:
        raise ValueError(f"{path}: no model_name_or_path; pass --model")
    shapes = Shapes.of(model_shapes(model_name))
    return _prediction(str(path), model_name, shapes, Run.of(method, settings, group_size=group_size), gpu_memory_gib)


def _prediction(config: str, model: str, shapes: Shapes, run: Run, gpu_memory_gib: float | None) -> Prediction:
    """The prediction's record: categories, peak, and with a card's memory the verdict and suggestions."""
    from trl_ext.model_shapes import CUDA_OVERHEAD_BYTES

    categories = {key: int(value) for key, value in predict_bytes(shapes, run).items()}
    peak = sum(categories.values())
    prediction = Prediction(config, model, run.method, peak, categories, CUDA_OVERHEAD_BYTES)
    if gpu_memory_gib is not None:
        budget = int(gpu_memory_gib * GIB)
        prediction.gpu_memory_bytes = budget
        prediction.fits = peak + CUDA_OVERHEAD_BYTES <= budget
        prediction.suggestions = suggest(shapes, run, budget - CUDA_OVERHEAD_BYTES)
    return prediction


def suggest(shapes: Shapes, run: Run, tensor_budget: int) -> dict[str, Any]:
    """The largest per-device batch that fits and divides the effective batch (`per_device_train_batch_size x
    gradient_accumulation_steps`, kept by the suggested accumulation), and the longest sequence length that fits at
    the configured batch; None where even a batch of 1 / 64 tokens does not fit."""
    import dataclasses

    def peak(r: Run) -> float:
        return sum(predict_bytes(shapes, r).values())

    effective = run.micro_batch * run.gradient_accumulation
    rollout = run.method in ("grpo-online", "ppo")  # their batch sizes their rollout too: no accumulation advice
    batch = None
    for size in range(1, 257):
        if peak(dataclasses.replace(run, micro_batch=size)) > tensor_budget:
            break
        if rollout or effective % size == 0:
            batch = size
    length_field = "max_completion_length" if run.method in ("grpo", "grpo-online", "ppo") else "max_length"
    longest = None
    for length in range(64, 65537, 64):
        changed = (
            dataclasses.replace(run, completion_length=length)
            if length_field == "max_completion_length"
            else dataclasses.replace(run, max_length=length)
        )
        if peak(changed) > tensor_budget:
            break
        longest = length
    result: dict[str, Any] = {"per_device_train_batch_size": batch, length_field: longest}
    if batch is not None and not rollout:
        result["gradient_accumulation_steps"] = effective // batch
    return result


# the fitted per-unit terms (`benchmarks/memory_harness.fit` computes them from the measured records)
FITTED = ("width", "head", "rollout_width")


# ------------------------------------------------------------------------------------------------- start-up check
def trainer_prediction(trainer: Any, gpu_memory_gib: float) -> Prediction | None:
    """The prediction for a built trainer (its model's config, its arguments, its LoRA rank), or None when the
    trainer or the model is not one the planner knows."""
    method = method_of_trainer(type(trainer))  # the trainer classes the recipes build (trl_ext.methods)
    model = trainer.model
    config = getattr(model, "config", None)
    if method is None or config is None:
        return None
    settings = dict(trainer.args.to_dict())
    settings["load_in_4bit"] = bool(getattr(model, "is_loaded_in_4bit", False))
    quantizer = getattr(model, "hf_quantizer", None)
    settings["use_bnb_nested_quant"] = bool(
        getattr(getattr(quantizer, "quantization_config", None), "bnb_4bit_use_double_quant", False)
    )
    peft_config = (getattr(model, "peft_config", None) or {}).get("default")
    settings["use_peft"] = peft_config is not None
    settings["lora_r"] = getattr(peft_config, "r", 0) if peft_config is not None else 0
    try:
        shapes = Shapes.of(config.to_dict())
        run = Run.of(method, settings)
    except (KeyError, TypeError, ValueError):  # a model or a setting the planner does not model: no prediction
        return None
    model_name = str(getattr(config, "_name_or_path", ""))
    return _prediction("(this run)", model_name, shapes, run, gpu_memory_gib)


def warn_if_too_big(trainer: Any) -> Prediction | None:
    """On a GPU, before the first step: log a warning with the predicted peak and what would fit when the run will
    not fit the visible card. Does nothing on the CPU; never stops the run (the prediction can be wrong)."""
    if getattr(trainer.args, "use_cpu", False):
        return None
    gpu = visible_gpu_memory_gib()
    if gpu is None:
        return None
    prediction = trainer_prediction(trainer, gpu)
    if prediction is not None and not prediction.fits:
        import logging

        total = (prediction.peak_bytes + prediction.cuda_overhead_bytes) / GIB
        advice = ", ".join(f"{key} {value}" for key, value in prediction.suggestions.items() if value is not None)
        logging.getLogger(__name__).warning(
            "this run is predicted to need %.1f GiB (%.1f GiB of tensors + %.1f GiB CUDA allowance) and the GPU has "
            "%.1f GiB: expect an out-of-memory error. What fits (trl-ext plan): %s",
            total, prediction.peak_bytes / GIB, prediction.cuda_overhead_bytes / GIB, gpu, advice or "nothing",
        )  # fmt: skip
    return prediction


# ------------------------------------------------------------------------------------------------- CLI
def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trl-ext plan",
        description="Predict a recipe config's peak GPU memory (per category) and whether it fits a card, in "
        "seconds and without building the model. Tensor memory plus a fixed CUDA allowance; see docs/recipes.md.",
    )
    parser.add_argument("--config", required=True, help="a recipe YAML (or a packaged name such as dpo/qlora-24gb)")
    parser.add_argument("--model", help="another model: a Hub name with known shapes, or a folder with config.json")
    parser.add_argument(
        "--method", choices=RECIPE_METHODS, help="the recipe the config is for (default: the one its first line names)"
    )
    parser.add_argument("--gpu_memory", type=float, help="the card's memory in GiB (default: the visible GPU's)")
    parser.add_argument("--group_size", type=int, default=4, help="offline GRPO: responses per ranked group")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override config fields")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def visible_gpu_memory_gib() -> float | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory / GIB
    except Exception:  # noqa: BLE001 - no usable CUDA: no default card
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        from trl_ext.packaged import resolve_config

        config = resolve_config(args.config, "")
        overrides = {}
        for item in args.set:
            if "=" not in item:
                raise ValueError(f"--set {item}: expected FIELD=VALUE")
            key, value = item.split("=", 1)
            overrides[key] = _parse_value(value)
        gpu = args.gpu_memory if args.gpu_memory is not None else visible_gpu_memory_gib()
        prediction = predict(config, model=args.model, overrides=overrides, gpu_memory_gib=gpu,
                             group_size=args.group_size, method=args.method)  # fmt: skip
    except Exception as error:  # noqa: BLE001 - one line, exit 2, as every command of the CLI
        print(f"trl-ext plan: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(prediction.to_dict()))
        return 0
    print(report(prediction))
    return 0


def report(prediction: Prediction) -> str:
    lines = [f"{prediction.config} ({prediction.method}) at {prediction.model}'s shapes:"]
    for key, value in prediction.categories.items():
        lines.append(f"  {key:12s} {value / GIB:7.2f} GiB")
    lines.append(f"  {'peak tensors':12s} {prediction.peak_bytes / GIB:7.2f} GiB")
    total = prediction.peak_bytes + prediction.cuda_overhead_bytes
    lines.append(f"  + CUDA allowance {prediction.cuda_overhead_bytes / GIB:.1f} GiB = {total / GIB:.2f} GiB")
    if prediction.gpu_memory_bytes is not None:
        verdict = "fits" if prediction.fits else "does NOT fit"
        lines.append(f"  {verdict} a {prediction.gpu_memory_bytes / GIB:.1f} GiB card")
        s = dict(prediction.suggestions)
        accumulation = s.pop("gradient_accumulation_steps", None)
        batch = s.pop("per_device_train_batch_size", None)
        ((length_field, longest),) = s.items()
        # two separate limits, each with the other setting as configured: not one combination
        lines.append(
            "  largest batch that fits (at the configured length): per_device_train_batch_size "
            + ("none" if batch is None else str(batch))
            + (f" with gradient_accumulation_steps {accumulation}" if accumulation is not None else "")
        )
        lines.append(
            f"  longest that fits (at the configured batch): {length_field} {'none' if longest is None else longest}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
