"""`PrefixSharingDPOTrainer`: TRL's `DPOTrainer` (TRL 1.16) whose forward passes compute each pair's prompt once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trl import DPOConfig, DPOTrainer

from trl_ext.prefix_sharing import enable_pair_prefix_sharing


@dataclass
class PrefixSharingDPOConfig(DPOConfig):
    r"""
    TRL's [`~trl.DPOConfig`] with one more field.

    Parameters:
        prefix_sharing (`bool`, *optional*, defaults to `False`):
            Run each pair as one packed sequence, prompt once, chosen and rejected after it (each seeing the prompt,
            not the other; `trl_ext.prefix_sharing`). Same loss and gradients as TRL's `DPOTrainer` up to float
            summation order; faster when prompts are long against the responses. Needs `attn_implementation`
            `sdpa` or `eager`; other models run unshared, with a warning. Off by default, so that without it the
            trainer is TRL's exactly; the GPU recipe configs turn it on.
    """

    prefix_sharing: bool = field(
        default=False,
        metadata={"help": "Compute each pair's prompt once (packed chosen + rejected with a 4D attention mask)."},
    )


class PrefixSharingDPOTrainer(DPOTrainer):
    """TRL's `DPOTrainer`, every loss and metric its own, with the policy and reference forward passes of each
    `[chosen; rejected]` batch run prefix-shared when `args.prefix_sharing`.

    How: forward hooks on the policy and the reference model (`trl_ext.prefix_sharing.PairPrefixSharing`) repack
    the `2B` sequences TRL's `_compute_loss` passes into `B` rows and gather the per-token log-probabilities back to
    the layout TRL expects; no TRL method is overridden.

    Example:
        >>> from trl_ext.dpo import PrefixSharingDPOConfig, PrefixSharingDPOTrainer
        >>> args = PrefixSharingDPOConfig("dpo-out", beta=0.1, prefix_sharing=True)
        >>> trainer = PrefixSharingDPOTrainer(model, args=args, train_dataset=pairs, processing_class=tokenizer)
    """

    _tag_names = ["trl", "trl-ext", "dpo", "prefix-sharing"]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.prefix_sharing = enable_pair_prefix_sharing(self)
