"""Masked statistics and the one KL estimator, shared by every trainer and by evaluation.

Shapes: ``(B, T)`` per-token tensors with a ``(B, T)`` mask that is 1 on the tokens that count (completion tokens,
EOS included) and 0 on padding.

KL: Schulman 2020, "Approximating KL Divergence" (blog): the k1 / k2 / k3 estimators of KL(q || p) from tokens
sampled from q. PPO's per-token penalty (Ziegler et al. 2019 eq. 2), GRPO's k3 term (DeepSeekMath Eq. 4), PPO's
early-stop approx-KL (k2) and evaluation's KL to the reference all call `kl_estimate`.
"""

from __future__ import annotations

from typing import Literal

import torch

KLEstimator = Literal["k1", "k2", "k3"]
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")


# --- masked statistics ---------------------------------------------------------------------------------------------
def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is 1 (over all elements, or along `dim`)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `values` where `mask` is 1; with `unbiased`, Bessel's correction n / (n - 1)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            raise ValueError(f"unbiased variance needs at least 2 unmasked values, got {int(n)}")
        var = var * n / (n - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """``(x - mean) / sqrt(var + 1e-8)`` over the masked entries; padding comes out as 0.

    With ``shift_mean=False`` the mean is added back (used for rewards: scale them but keep their sign).
    """
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


# --- KL -------------------------------------------------------------------------------------------------------------
def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: KLEstimator = "k1") -> torch.Tensor:
    """Per-token estimate of KL(q || p) from tokens sampled from q (Schulman 2020).

    `logprobs` = log q(y_t) of the sampled tokens (the sampling policy), `ref_logprobs` = log p(y_t). With
    ``log_r = log p - log q``:

    - ``k1 = -log_r``: unbiased, high variance, can be negative per token (Ziegler et al. 2019 use this one);
    - ``k2 = log_r**2 / 2``: biased, low variance, >= 0;
    - ``k3 = (exp(log_r) - 1) - log_r``: unbiased and >= 0.

    Shapes: any; the output has the input's shape (``(B, T)`` in practice).
    """
    log_r = ref_logprobs - logprobs
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r.square()
    if kind == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"KL estimator must be one of {KL_ESTIMATORS}, got {kind!r}")
