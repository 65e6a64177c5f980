"""The engines `accelerate launch` picks (DDP, FSDP2, DeepSpeed ZeRO-3), as the recipes meet them on CPU processes.

accelerate 1.16 gets three things wrong when the processes have no GPU; `configure` (called by `recipe.parse`) puts
them right or refuses, and does nothing on GPUs, where accelerate handles these itself:

- FSDP: `accelerate launch` with `distributed_type: FSDP` sets `ACCELERATE_USE_FSDP=true`, but a `use_cpu` run is
  `MULTI_CPU` and accelerate only switches the GPU-like types (MULTI_GPU, MULTI_XPU, ...) to FSDP: the run silently
  trains with DDP. `configure` sets the shared accelerator state to FSDP before the trainer builds its `Accelerator`
  (which keeps a configured state), so accelerate's own FSDP2 path (`fully_shard` on a gloo CPU mesh) runs unchanged.
- DeepSpeed: with `use_cpu: false`, DeepSpeed starts its CPU accelerator and a gloo process group, but accelerate finds
  no device backend and counts one process, so each rank's batch arithmetic is wrong (DeepSpeed's "train_batch_size
  is not equal to micro_batch_per_gpu * gradient_acc_step * world_size"). `configure` copies the process group's size
  and ranks into the state. With `use_cpu: true` accelerate skips DeepSpeed altogether (DDP): refused.
- Several processes launched, each alone: with `use_cpu: false` and no GPU (and no DeepSpeed) accelerate starts no
  process group, so every process trains on all the data and writes the output. Refused.

`EngineReportCallback` says what the engine did: under FSDP or ZeRO-3, each rank logs once, as training starts,
`FSDP: rank R holds N of M parameters` (or `DeepSpeed ZeRO-3: ...`).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def fsdp_requested() -> bool:
    """True when the launcher asked for FSDP (`accelerate launch` with an FSDP config sets `ACCELERATE_USE_FSDP`)."""
    return _env_flag("ACCELERATE_USE_FSDP")


def deepspeed_requested() -> bool:
    """True when the launcher asked for DeepSpeed (`ACCELERATE_USE_DEEPSPEED`)."""
    return _env_flag("ACCELERATE_USE_DEEPSPEED")


def configure(training_args: Any) -> str | None:
    """Make a launch of CPU processes use the engine its accelerate config names (see the module docstring).

    Call after the training arguments are parsed (their device set-up resets accelerate's state) and again after
    building any other training arguments in the same run. Returns ``"fsdp"`` or ``"deepspeed"`` when it changed the
    state, else None. Raises `ValueError` for the launches that would silently train otherwise than asked.
    """
    import torch.distributed as dist
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    state = PartialState()
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if deepspeed_requested():
        if state.distributed_type == DistributedType.MULTI_CPU:
            raise ValueError(
                "DeepSpeed on CPU processes needs use_cpu: false (DeepSpeed picks its CPU accelerator itself); with "
                "use_cpu: true accelerate skips DeepSpeed and trains with plain DDP"
            )
        if state.distributed_type == DistributedType.DEEPSPEED and state.backend is None and dist.is_initialized():
            # DeepSpeed's CPU accelerator started the process group; accelerate did not count it.
            state.backend = dist.get_backend()
            state.num_processes = dist.get_world_size()
            state.process_index = dist.get_rank()
            state.local_process_index = int(os.environ.get("LOCAL_RANK", state.process_index))
            logger.info("DeepSpeed on %d CPU processes (%s)", state.num_processes, state.backend)
            return "deepspeed"
    elif fsdp_requested() and state.distributed_type == DistributedType.MULTI_CPU:
        return _fsdp_on_cpu(training_args)
    if launched > 1 and state.num_processes == 1:
        raise ValueError(
            f"accelerate launch started {launched} processes but accelerate sees no process group (no GPU is visible "
            "and use_cpu is false): each would train alone on all the data. On CPUs set use_cpu: true"
        )
    return None


def _fsdp_on_cpu(training_args: Any) -> str:
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(**(getattr(training_args, "fsdp_plugin_args", None) or {}))
    if plugin.fsdp_version != 2:
        raise ValueError("FSDP on CPU processes needs FSDP2: set fsdp_version: 2 in the accelerate config")
    mixed_precision = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "no"
    state = Accelerator(cpu=True, mixed_precision=mixed_precision, fsdp_plugin=plugin).state
    # The trainer's Accelerator keeps this (already initialized) state and so prepares the model with FSDP2. The
    # accelerator state copies the process state's type on every construction, so both say FSDP (as accelerate's
    # own GPU path leaves them).
    state.distributed_type = PartialState().distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    logger.info("FSDP2 on %d CPU processes (gloo)", state.num_processes)
    return "fsdp"


def parameter_share(model: Any) -> tuple[int, int]:
    """(parameter elements this rank holds, elements of the whole model). A sharded parameter counts its local shard:
    a DTensor under FSDP2, a partitioned parameter (`ds_tensor`, `ds_numel`) under ZeRO-3; anything else counts whole
    on every rank. Packed 4-bit weights count their storage elements."""
    from torch.distributed.tensor import DTensor

    held = total = 0
    for param in model.parameters():
        if isinstance(param, DTensor):
            held, total = held + param.to_local().numel(), total + param.numel()
        elif hasattr(param, "ds_tensor"):
            held, total = held + param.ds_tensor.numel(), total + param.ds_numel
        else:
            held, total = held + param.numel(), total + param.numel()
    return held, total


class EngineReportCallback(TrainerCallback):
    """Under FSDP or ZeRO-3, each rank logs once, as training starts (the model is wrapped by then), what it holds."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from accelerate import PartialState
        from accelerate.state import AcceleratorState
        from accelerate.utils import DistributedType

        engine = AcceleratorState().distributed_type
        if model is None or engine not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            return
        if engine == DistributedType.DEEPSPEED and AcceleratorState().deepspeed_plugin.zero_stage != 3:
            return
        held, total = parameter_share(model)
        name = "FSDP" if engine == DistributedType.FSDP else "DeepSpeed ZeRO-3"
        # Every rank prints (the replicas' log level hides INFO), so the line is a plain print, written in one call so
        # that the ranks' lines cannot interleave within it.
        sys.stdout.write(f"{name}: rank {PartialState().process_index} holds {held:,} of {total:,} parameters\n")
        sys.stdout.flush()
