"""Configuration of :class:`~trl_ext.ipo.LengthAwareIPOTrainer`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import DPOConfig

from .ipo_loss import NORMALIZATIONS

LENGTH_SOURCES = ("declared", "tokens", "chars")


@dataclass
class LengthAwareIPOConfig(DPOConfig):
    r"""
    Configuration for [`LengthAwareIPOTrainer`]: TRL's [`~trl.DPOConfig`] with IPO's loss and three length options.

    IPO is Azar et al., "A General Theoretical Paradigm to Understand Learning from Human Preferences"
    (arXiv:2310.12036). `beta` is IPO's tau: the loss regresses the margin `h` onto `1/(2*beta)`. With the default
    `length_normalization="mean"` that target is a margin *per token* (`beta=0.1` asks for 5 nats per token, `0.5`
    for 1), so pick IPO's beta for IPO: a DPO beta carried over is usually far too small.

    Parameters:
        length_normalization (`str`, *optional*, defaults to `"mean"`):
            How the summed log-ratios become the margin `h`: `"mean"` (each side averaged over its tokens, TRL's
            `loss_type="ipo"`), `"sum"` (the paper's sequence-level `h`; the target is then per sequence) or
            `"pair_mean"` (both sides divided by the pair's mean token count, so they share one scale). With
            `ld_alpha`, the token counts are the effective, down-weighted ones.
        length_penalty (`float` or `"auto"`, *optional*, defaults to `0.0`):
            `alpha`: each pair's target becomes `1/(2*beta) - alpha * d`, with `d = (l_w - l_l) / mean(l_w, l_l)` the
            pair's relative length difference (unit-free), the IPO counterpart of R-DPO (arXiv:2403.19159): a longer
            winner is asked for less margin, so length stops earning margin. `alpha` is in the units of `h`. `"auto"`
            uses the least-squares slope `(1/(2*beta)) * mean(d) / mean(d^2)` over the training set, which removes
            the part of the target that length explains (about 0 on data without a length confound), limited so
            that every pair's target keeps at least a tenth of `1/(2*beta)`: no pair is ever asked to prefer its
            rejected answer. With `length_source="tokens"` the lengths are the ones the loss sees (after
            `max_length` truncation).
        length_source (`str`, *optional*, defaults to `"declared"`):
            Where `l_w, l_l` come from: `"declared"` (the dataset's `chosen_length` / `rejected_length` columns, the
            `pairs_with_lengths` shape; an error if they are missing), `"tokens"` (completion tokens, EOS included)
            or `"chars"` (characters of the completion text).
        prefix_sharing (`bool`, *optional*, defaults to `False`):
            Run each pair as one packed sequence, the prompt once, chosen and rejected after it
            (`trl_ext.prefix_sharing`): same loss up to float summation order, faster with long prompts. Needs
            `attn_implementation` `sdpa` or `eager`; other models run unshared, with a warning.

    `loss_type` is fixed to `["ipo"]`; `ld_alpha` (LD-DPO, arXiv:2409.06411) works with every variant.

    Example:
        >>> from trl_ext import LengthAwareIPOConfig
        >>> args = LengthAwareIPOConfig("out", beta=0.5, length_penalty="auto", length_source="declared")
    """

    loss_type: list[str] = field(
        default_factory=lambda: ["ipo"],
        metadata={"help": "Fixed to `['ipo']`; the length options below shape the IPO loss."},
    )
    length_normalization: str = field(
        default="mean",
        metadata={
            "help": "How summed log-ratios become IPO's margin h: `mean` (per token on each side, TRL's IPO), `sum` "
            "(sequence level, the paper's h) or `pair_mean` (both sides divided by the pair's mean token count)."
        },
    )
    # `float | str | None` follows TRL's `pad_to_multiple_of`: the argument parser then passes the CLI value as a
    # string ("auto" or a number), and `__post_init__` turns it back into a float.
    length_penalty: float | str | None = field(
        default=0.0,
        metadata={
            "help": "alpha: the target becomes 1/(2*beta) - alpha * (l_w - l_l)/mean(l_w, l_l) (IPO's counterpart of "
            "R-DPO; a longer winner is asked for less margin). A float, or `auto` for the least-squares slope "
            "(1/(2*beta)) * mean(d)/mean(d^2) over the training set. 0 (or None) turns the length term off."
        },
    )
    length_source: str = field(
        default="declared",
        metadata={
            "help": "Lengths for the length term: `declared` (the dataset's `chosen_length`/`rejected_length`), "
            "`tokens` (completion tokens) or `chars` (characters of the completion text)."
        },
    )
    prefix_sharing: bool = field(
        default=False,
        metadata={"help": "Compute each pair's prompt once (packed chosen + rejected with a 4D attention mask)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.loss_type != ["ipo"]:
            raise ValueError(
                f"LengthAwareIPOConfig trains IPO only, so `loss_type` must be ['ipo'], got {self.loss_type}. For other "
                "losses use trl.DPOConfig with trl.DPOTrainer."
            )
        if self.loss_weights not in (None, [1.0]):
            raise ValueError(f"`loss_weights` has no meaning with a single IPO loss; got {self.loss_weights}.")
        if self.f_divergence_type != "reverse_kl":
            raise ValueError(
                f"LengthAwareIPOTrainer supports `f_divergence_type='reverse_kl'` only, got {self.f_divergence_type!r}."
            )
        if self.use_weighting:
            raise ValueError("LengthAwareIPOTrainer does not support WPO weighting (`use_weighting=True`).")
        if self.length_normalization not in NORMALIZATIONS:
            raise ValueError(
                f"`length_normalization` must be one of {NORMALIZATIONS}, got {self.length_normalization!r}."
            )
        if self.length_source not in LENGTH_SOURCES:
            raise ValueError(f"`length_source` must be one of {LENGTH_SOURCES}, got {self.length_source!r}.")
        self.length_penalty = _parse_length_penalty(self.length_penalty)
        if self.ld_alpha is not None and not 0.0 <= self.ld_alpha <= 1.0:
            raise ValueError(f"`ld_alpha` must be in [0, 1], got {self.ld_alpha}.")


def _parse_length_penalty(value: float | str | None) -> float | str:
    """A float, or the string "auto". Numbers may arrive as strings from the command line."""
    if value is None:
        return 0.0
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if text in ("none", "null"):
            return 0.0
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"`length_penalty` must be a number or 'auto', got {value!r}.") from None
    if isinstance(value, bool) or not math.isfinite(float(value)):
        raise ValueError(f"`length_penalty` must be a finite number or 'auto', got {value!r}.")
    return float(value)
