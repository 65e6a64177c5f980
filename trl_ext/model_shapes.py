"""The shapes a memory figure depends on, without torch: published model architectures, a model's `config.json`,
and the allowance a CUDA run adds to the tensors counted. Read by the planner (`trl_ext.plan`, which must answer in
milliseconds) and by the measurer (`benchmarks/memory_harness.py`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GIB = 2**30

# What a CUDA run adds to the tensor memory counted here: the CUDA context (cuBLAS/cuDNN handles and loaded kernels:
# 781 MiB in nvidia-smi before any tensor, pytorch/pytorch#34323; `torch.cuda.memory_allocated`'s documentation notes
# it), the caching allocator's rounding and fragmentation, and kernels' workspaces. A fixed allowance, not measured
# here: benchmarks/gpu_memory.py measures reserved vs allocated on a GPU.
CUDA_OVERHEAD_BYTES = int(1.5 * GIB)

# Published architectures (config.json of each Hub repository; the Instruct models share their base's shapes).
_QWEN25 = dict(model_type="qwen2", hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1_000_000.0)
MODEL_SHAPES: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-0.5B": dict(_QWEN25, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                              num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                              tie_word_embeddings=True),
    "Qwen/Qwen2.5-1.5B": dict(_QWEN25, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                              num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                              tie_word_embeddings=True),
    "Qwen/Qwen2.5-3B": dict(_QWEN25, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                            num_attention_heads=16, num_key_value_heads=2, vocab_size=151936,
                            tie_word_embeddings=True),
    "Qwen/Qwen2.5-7B": dict(_QWEN25, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                            num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                            tie_word_embeddings=False),
    "Qwen/Qwen2.5-14B": dict(_QWEN25, hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
                             num_attention_heads=40, num_key_value_heads=8, vocab_size=152064,
                             tie_word_embeddings=False),
    "Qwen/Qwen2.5-32B": dict(_QWEN25, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
                             num_attention_heads=40, num_key_value_heads=8, vocab_size=152064,
                             tie_word_embeddings=False),
}  # fmt: skip


def model_shapes(name_or_path: str) -> dict[str, Any]:
    """The architecture fields of a model: its `config.json` when `name_or_path` is a folder or a file, else the
    published shapes of a known name (an `-Instruct` suffix shares its base's). Raises ValueError naming the known
    ones otherwise."""
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        return json.loads(path.read_text())
    base = name_or_path.removesuffix("-Instruct")
    if base in MODEL_SHAPES:
        return dict(MODEL_SHAPES[base])
    known = ", ".join(sorted(MODEL_SHAPES))
    raise ValueError(
        f"{name_or_path}: unknown model shapes; give a folder or config.json with its architecture, or one of {known}"
    )
