"""Loading models and tokenizers: the one home for it (recipes, trainers, evaluation and benchmarks call these).

- Names: `resolve_model_name` turns the project's embedded model ids (``trl-ext/tiny-llama``,
  ``trl-ext/smollm2-135m-instruct``) into local folders,
  built on first use; any other name or path is passed through.
- Training: `load_tokenizer`, `load_model` (4-bit NF4 + k-bit preparation when asked), `lora_config`.
- After training: `merge_adapter` (16-bit base reloaded, never merged into 4-bit weights).
- Inference: `load_policy` (an adapter on its base, or a full model, with its reference) and `load_reward_model`
  (a one-score sequence classifier: full, merged, or a LoRA adapter with its score head), optionally in 4-bit.
- `torch_dtype` parses every dtype string the configs and flags use.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from peft import LoraConfig, PeftConfig, PeftModel, prepare_model_for_kbit_training
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainingArguments,
)
from transformers.integrations import is_deepspeed_zero3_enabled
from trl import ModelConfig, get_peft_config, get_quantization_config

from trl_ext.embedded import embedded_models
from trl_ext.tokenization import repair_chat_template

logger = logging.getLogger(__name__)


def torch_dtype(value: str | torch.dtype | None) -> torch.dtype | str | None:
    """``"bfloat16"`` -> ``torch.bfloat16``; ``None``, ``"auto"`` and dtypes pass through."""
    if value is None or value == "auto" or isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {value!r} (use bfloat16, float16, float32 or auto)")
    return dtype


def resolve_model_name(name: str) -> str:
    """A local folder for the project's embedded model ids (built and cached on first use); other names unchanged."""
    build = embedded_models().get(name)
    return str(build()) if build is not None else name


def model_path(model_args: ModelConfig) -> str:
    """Where to load the model from: `resolve_model_name(model_name_or_path)`."""
    if not model_args.model_name_or_path:
        raise ValueError("model_name_or_path is required (e.g. --model_name_or_path Qwen/Qwen2.5-7B-Instruct)")
    return resolve_model_name(model_args.model_name_or_path)


def trust_remote_code(training_args: TrainingArguments) -> bool:
    """The config's `trust_remote_code` (TRL configs have it, default False); False for configs without the field."""
    return bool(getattr(training_args, "trust_remote_code", False))


def tokenizer_from(path: str, *, revision: str | None = None, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:  # fmt: skip
    """`AutoTokenizer.from_pretrained(path)`, given a pad token (EOS) if it has none, as batched training needs one,
    and a chat template that adds the generation prompt only when asked (`tokenization.repair_chat_template`)."""
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if repair_chat_template(tokenizer):
        logger.warning(
            "%s: the chat template appends the assistant header even to a finished conversation (an early Llama-3 "
            "template), so every completion would end with it; it now does so only with add_generation_prompt "
            "(the saved tokenizer keeps the repaired template)",
            path,
        )
    return tokenizer


def load_tokenizer(model_args: ModelConfig, training_args: TrainingArguments) -> PreTrainedTokenizerBase:
    """The model's tokenizer (see `tokenizer_from`)."""
    return tokenizer_from(
        model_path(model_args), revision=model_args.model_revision, trust_remote_code=trust_remote_code(training_args)
    )


def causal_lm_from(name_or_path: str, **kwargs: Any) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained(resolve_model_name(name_or_path), **kwargs)`: what our trainers load when
    given a model name instead of a model (as TRL's trainers accept one, with `model_init_kwargs`)."""
    return AutoModelForCausalLM.from_pretrained(resolve_model_name(name_or_path), **kwargs)


def _is_sharded(training_args: TrainingArguments) -> bool:
    """True under FSDP or DeepSpeed ZeRO-3 (as set by `accelerate launch --config_file ...` or the arguments)."""
    fsdp = bool(getattr(training_args, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    return fsdp or is_deepspeed_zero3_enabled()


def _this_process_gpu() -> dict[str, int]:
    return {"": PartialState().local_process_index}


def load_model(
    model_args: ModelConfig,
    training_args: TrainingArguments,
    *,
    head: str = "causal-lm",
    num_labels: int = 1,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> PreTrainedModel:
    """Load the base model for training.

    - `head`: `"causal-lm"` (policies) or `"seq-cls"` (reward models, `num_labels` scores, pad token from `tokenizer`).
    - `load_in_4bit` / `load_in_8bit` (from `ModelConfig`): `BitsAndBytesConfig` from `trl.get_quantization_config`
      (NF4, double quantization with `use_bnb_nested_quant`, compute dtype = `dtype`), placed on this process's
      device, then `peft.prepare_model_for_kbit_training` (norms in fp32, input grads, gradient checkpointing).
    - `trust_remote_code` follows the training arguments (off unless turned on).
    """
    if head not in ("causal-lm", "seq-cls"):
        raise ValueError(f"head must be 'causal-lm' or 'seq-cls', got {head!r}")
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None and model_args.dtype in (None, "auto"):
        raise ValueError("load_in_4bit/8bit needs an explicit dtype (bfloat16 on a GPU, float32 on a CPU)")
    if quantization_config is not None:
        quantization_config.bnb_4bit_compute_dtype = torch_dtype(model_args.dtype)
    kwargs: dict[str, Any] = dict(
        revision=model_args.model_revision,
        dtype=torch_dtype(model_args.dtype),
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=trust_remote_code(training_args),
    )
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        if _is_sharded(training_args):
            # FSDP / ZeRO-3 shard the packed 4-bit weights, which needs them stored in the compute dtype; the engine
            # places the shards, so no device_map.
            if model_args.bnb_4bit_quant_storage is None:
                raise ValueError(
                    "QLoRA under FSDP or DeepSpeed ZeRO-3 needs the packed 4-bit weights stored in the compute dtype: "
                    f"bnb_4bit_quant_storage: {model_args.dtype}"
                )
        elif torch.cuda.is_available() and not training_args.use_cpu:
            # One full copy per process (single GPU, DDP), on this process's GPU.
            kwargs["device_map"] = _this_process_gpu()
    if head == "seq-cls":
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path(model_args), num_labels=num_labels, **kwargs
        )
        pad_id = tokenizer.pad_token_id if tokenizer is not None else None
        if pad_id is not None:
            model.config.pad_token_id = pad_id
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path(model_args), **kwargs)
    if quantization_config is not None:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=training_args.gradient_checkpointing,
            gradient_checkpointing_kwargs=training_args.gradient_checkpointing_kwargs,
        )
    return model


def lora_config(model_args: ModelConfig, *, head: str = "causal-lm") -> LoraConfig | None:
    """`trl.get_peft_config` with our defaults: LoRA on all linear layers; task `SEQ_CLS` for reward heads.

    None unless `use_peft` (or a 4/8-bit base, which can only be trained through an adapter).
    """
    if (model_args.load_in_4bit or model_args.load_in_8bit) and not model_args.use_peft:
        raise ValueError("a 4/8-bit base can only be trained with an adapter: set use_peft: true")
    config = get_peft_config(model_args)
    if config is None:
        return None
    if not model_args.lora_target_modules:
        config.target_modules = "all-linear"
    if head == "seq-cls":
        config.task_type = "SEQ_CLS"
    return config


def merge_dtype(model_args: ModelConfig) -> torch.dtype:
    """The 16-bit dtype a merged model is written in: float16 if the run computed in float16, else bfloat16."""
    return torch.float16 if model_args.dtype == "float16" else torch.bfloat16


def merge_adapter(
    adapter_dir: str | Path, model_args: ModelConfig, training_args: TrainingArguments, dtype=None
) -> Path:
    """Reload the base model in 16-bit (never 4-bit), merge the adapter saved in `adapter_dir`, and write the merged
    model (safetensors) and tokenizer to `adapter_dir/merged`. Returns that folder."""
    adapter_dir = Path(adapter_dir)
    dtype = dtype or torch.bfloat16
    peft_config = PeftConfig.from_pretrained(str(adapter_dir))
    auto = AutoModelForSequenceClassification if peft_config.task_type == "SEQ_CLS" else AutoModelForCausalLM
    kwargs: dict[str, Any] = dict(
        revision=model_args.model_revision, dtype=dtype, trust_remote_code=trust_remote_code(training_args)
    )
    if auto is AutoModelForSequenceClassification:
        kwargs["num_labels"] = 1  # a reward head, as `load_model(head="seq-cls")` builds it
    base = auto.from_pretrained(model_path(model_args), **kwargs)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    if auto is AutoModelForSequenceClassification and tokenizer.pad_token_id is not None:
        merged.config.pad_token_id = tokenizer.pad_token_id
    target = adapter_dir / "merged"
    merged.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    return target


# ------------------------------------------------------------------------------------------------------- inference
def _adapter_base(path: str, base_model_name_or_path: str | None) -> str | None:
    """The base of the LoRA adapter saved at `path` (the given base, else the adapter's own), or None if `path` holds
    a full model."""
    if not os.path.isfile(os.path.join(path, "adapter_config.json")):
        return None

    base = base_model_name_or_path or PeftConfig.from_pretrained(path).base_model_name_or_path
    if not base:
        raise ValueError(f"{path}: adapter without a base model; pass base_model_name_or_path")
    return resolve_model_name(base)


def inference_kwargs(
    *,
    dtype: str | torch.dtype | None = None,
    load_in_4bit: bool = False,
    quantization_config: Any | None = None,
    use_cpu: bool = False,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """`from_pretrained` keyword arguments for inference: dtype, and 4-bit NF4 (double quantization, compute in
    `dtype` or bfloat16) placed on this process's GPU when there is one. No k-bit training preparation."""
    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype), "trust_remote_code": trust_remote_code}
    if load_in_4bit and quantization_config is None:
        compute = torch_dtype(dtype) if dtype not in (None, "auto") else torch.bfloat16
        quantization_config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True,
        )
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        if torch.cuda.is_available() and not use_cpu:
            kwargs["device_map"] = _this_process_gpu()
    return kwargs


def load_policy(
    model_name_or_path: str,
    base_model_name_or_path: str | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    load_in_4bit: bool = False,
    device: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedModel | None, PreTrainedTokenizerBase]:
    """Load a policy for evaluation: ``(model, ref_model, tokenizer)``.

    - A LoRA adapter folder (`adapter_config.json`): the base (`base_model_name_or_path`, else the adapter's own
      `base_model_name_or_path`) with the adapter on top; the reference is that base with the adapter disabled, so
      `ref_model` is None (no second copy).
    - A full model: loaded as is; the reference is `base_model_name_or_path` loaded separately (None if not given: the
      metrics that need a reference are then left out).

    `load_in_4bit` quantizes the base(s) to NF4.
    """
    kwargs = inference_kwargs(dtype=dtype, load_in_4bit=load_in_4bit, trust_remote_code=trust_remote_code)
    path = resolve_model_name(model_name_or_path)
    base = _adapter_base(path, base_model_name_or_path)
    ref_model = None
    if base is not None:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, **kwargs), path)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if base_model_name_or_path:
            ref_model = AutoModelForCausalLM.from_pretrained(resolve_model_name(base_model_name_or_path), **kwargs)
    has_tokenizer = os.path.isfile(os.path.join(path, "tokenizer_config.json"))
    tokenizer = tokenizer_from(
        path if has_tokenizer else resolve_model_name(base_model_name_or_path or path),
        trust_remote_code=trust_remote_code,
    )
    if device is not None and not load_in_4bit:
        model.to(device)
        if ref_model is not None:
            ref_model.to(device)
    model.eval()
    if ref_model is not None:
        ref_model.eval()
    return model, ref_model, tokenizer


def load_reward_model(
    model_name_or_path: str,
    base_model_name_or_path: str | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    load_in_4bit: bool = False,
    quantization_config: Any | None = None,
    use_cpu: bool = False,
    device: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A one-score sequence-classification reward model for inference, and its tokenizer: a full or merged model, or a
    SEQ_CLS LoRA adapter (weights and trained score head) on its base. Frozen, in eval mode, with the pad id set (the
    score is read at the last non-pad token)."""
    path = resolve_model_name(model_name_or_path)
    kwargs = inference_kwargs(
        dtype=dtype,
        load_in_4bit=load_in_4bit,
        quantization_config=quantization_config,
        use_cpu=use_cpu,
        trust_remote_code=trust_remote_code,
    )
    if not os.path.isdir(path):
        try:
            tokenizer = tokenizer_from(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise FileNotFoundError(
                f"reward model {model_name_or_path!r}: no such local folder, and as a Hub id it did not load "
                f"({first_line}); train one with recipes/reward.py or pass its path"
            ) from error
    else:
        tokenizer = tokenizer_from(path, trust_remote_code=trust_remote_code)
    base = _adapter_base(path, base_model_name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(base or path, num_labels=1, **kwargs)
    model.config.pad_token_id = tokenizer.pad_token_id
    if base is not None:
        model = PeftModel.from_pretrained(model, path)
    if device is not None and "quantization_config" not in kwargs:
        model.to(device)
    return model.eval().requires_grad_(False), tokenizer


def load_reward_model_for_run(
    path: str, model_args: ModelConfig, training_args: TrainingArguments
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """`load_reward_model` in the policy's quantization and compute dtype (what PPO and online GRPO score with)."""
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:  # inference only: no k-bit training preparation (it upcasts to fp32)
        quantization_config.bnb_4bit_compute_dtype = torch_dtype(model_args.dtype)
    return load_reward_model(
        path,
        dtype=model_args.dtype,
        quantization_config=quantization_config,
        use_cpu=bool(getattr(training_args, "use_cpu", False)),
        trust_remote_code=trust_remote_code(training_args),
    )
