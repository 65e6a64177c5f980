"""Configuration of :class:`~trl_ext.ranked_grpo.RankedGRPOTrainer` (offline) that also serves `trl.GRPOTrainer`
(online): one config class, one YAML, for both modes of `recipes/grpo.py`."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from .ranked_grpo_loss import LOSS_AGGREGATIONS, RANK_REWARDS, SCALE_REWARDS

OFFLINE_LOSS_TYPES: tuple[str, ...] = (*LOSS_AGGREGATIONS, "plackett_luce")
MODES: tuple[str, ...] = ("offline", "online")
RATIO_AGAINST: tuple[str, ...] = ("old", "reference")


@dataclass
class RankedGRPOConfig(GRPOConfig):
    r"""
    Configuration for [`RankedGRPOTrainer`]: TRL's [`~trl.GRPOConfig`] with the group taken from human rankings.

    GRPO is Shao et al., "DeepSeekMath" (arXiv:2402.03300). Offline, the group of a prompt is the row's ranked
    responses (`ranked` shape: `prompt`, `responses`, `ranking`, 1 = best); nothing is generated. Every GRPO field
    that shapes the loss keeps its TRL meaning: `beta` (k3 KL to the reference), `epsilon` / `epsilon_high` / `delta`
    (clipping), `importance_sampling_level`, `num_iterations` (reuse of a batch for several optimizer steps),
    `scale_rewards` (`group`, `batch`, `none`), `loss_type` (`grpo`, `bnpo`, `dr_grpo`, `dapo`),
    `max_completion_length` (completions are truncated to it; `dr_grpo`'s constant), `use_bias_correction_kl`,
    `disable_dropout`. The generation fields (`num_generations`, `temperature`, vLLM, ...) are only read when the
    same config is handed to `trl.GRPOTrainer` for online training (`recipes/grpo.py --mode online`).

    Parameters:
        rank_reward (`str`, *optional*, defaults to `"linear"`):
            How ranks become rewards: `"linear"` (`(n - rank) / (n - 1)`), `"exponential"` (the normalized DCG gain
            `(2^(n - rank) - 1) / (2^(n - 1) - 1)`, which spreads the top of a ranking), or the name of a dataset
            column holding one score per response (higher = better), e.g. UltraFeedback ratings.
        advantage_epsilon (`float`, *optional*, defaults to `1e-4`):
            Added to the standard deviation in `A = (r - mean) / (std + eps)` (TRL's constant; HALOs uses `1e-2`).
        ratio_against (`str`, *optional*, defaults to `"old"`):
            What the importance ratio of the clipped surrogate is taken against: `"old"`, the policy that started the
            optimizer step (GRPO; the ratio is 1 on the first of `num_iterations` passes), or `"reference"`, the
            reference model (ContextualAI/HALOs' offline GRPO: clipping then keeps a trust region around the
            reference; HALOs uses `epsilon=0.01`, `beta=0.01`, `advantage_epsilon=1e-2`).
        max_prompt_length (`int` or `None`, *optional*, defaults to `512`):
            Prompts are truncated to their last `max_prompt_length` tokens.
        loss_type (`str`, *optional*, defaults to `"dapo"`):
            `grpo`, `bnpo`, `dr_grpo`, `dapo` (TRL's aggregations of the clipped surrogate) or `plackett_luce`: the
            listwise DPO of the DPO paper's Appendix A.3 on the same groups, with `beta` as DPO's temperature (no
            clipping, no separate KL term); with two responses it is TRL's sigmoid DPO loss.
        beta (`float`, *optional*, defaults to `0.04`):
            KL coefficient (DeepSeekMath's 0.04; TRL's GRPO default is 0). Offline, responses are not sampled from
            the policy, so the KL to the reference is what keeps the policy near the data it learns from; for
            `plackett_luce` it is DPO's beta and must be positive.
        mode (`str`, *optional*, defaults to `"offline"`):
            `"offline"`: this config trains `RankedGRPOTrainer` on the ranked responses. `"online"`: it goes to
            `trl.GRPOTrainer` (every `GRPOConfig` check runs; `num_generations` is required).
        prefix_sharing (`bool`, *optional*, defaults to `False`):
            Offline, and for the Plackett-Luce reward model online: run each group as one packed sequence, the
            prompt once and every response after it (each sees the prompt, not the others; `trl_ext.prefix_sharing`).
            Same loss and gradients up to float summation order; faster when prompts are long against the responses
            (docs/grpo.md has the measurements). Needs `attn_implementation` `sdpa` or `eager`; other models run
            unshared, with a warning.
        num_generations (`int` or `None`, *optional*, defaults to `None`):
            Online only: completions sampled per prompt by `trl.GRPOTrainer`. Offline (where the group is the row's
            responses) setting it is an error.

    Example:
        >>> from trl_ext import RankedGRPOConfig
        >>> args = RankedGRPOConfig("out", rank_reward="linear", beta=0.04, loss_type="dapo", num_iterations=2)
    """

    rank_reward: str = field(
        default="linear",
        metadata={
            "help": "Ranks -> rewards: `linear` ((n - rank)/(n - 1)), `exponential` (normalized DCG gain "
            "(2^(n-rank) - 1)/(2^(n-1) - 1)), or the name of a dataset column with one score per response."
        },
    )
    advantage_epsilon: float = field(
        default=1e-4,
        metadata={"help": "Added to the std in A = (r - mean)/(std + eps): TRL's 1e-4; HALOs uses 1e-2."},
    )
    ratio_against: str = field(
        default="old",
        metadata={
            "help": "Importance ratio of the clipped surrogate against `old` (the policy that started the step, GRPO) "
            "or `reference` (HALOs' offline GRPO: a trust region around the reference)."
        },
    )
    max_prompt_length: int | None = field(
        default=512,
        metadata={"help": "Prompts are truncated to their last max_prompt_length tokens (offline)."},
    )
    loss_type: str = field(
        default="dapo",
        metadata={
            "help": "`grpo`, `bnpo`, `dr_grpo`, `dapo` (TRL's aggregations of the clipped surrogate) or "
            "`plackett_luce` (listwise DPO, DPO paper Appendix A.3; beta is DPO's temperature)."
        },
    )
    beta: float = field(
        default=0.04,
        metadata={
            "help": "KL coefficient (DeepSeekMath: 0.04; TRL's GRPO default is 0). Offline it keeps the policy near the "
            "fixed responses' support; for `plackett_luce` it is DPO's beta (> 0)."
        },
    )
    mode: str = field(
        default="offline",
        metadata={
            "help": "`offline` (RankedGRPOTrainer on the ranked responses) or `online` (trl.GRPOTrainer samples "
            "num_generations completions per prompt, rewarded by a reward model learned from the rankings)."
        },
    )
    prefix_sharing: bool = field(
        default=False,
        metadata={
            "help": "Offline (and the Plackett-Luce reward model online): compute each group's prompt once, its "
            "responses packed after it with a 4D attention mask. Same loss; faster with long prompts."
        },
    )
    num_generations: int | None = field(
        default=None,
        metadata={
            "help": "Online only (trl.GRPOTrainer): completions per prompt. Leave unset offline, where the group is "
            "the row's ranked responses."
        },
    )

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "online":
            if self.num_generations is None:
                raise ValueError("mode online samples num_generations completions per prompt: set num_generations")
            if self.loss_type == "plackett_luce":
                raise ValueError(
                    "loss_type plackett_luce is offline only; online, use TRL's (dapo, grpo, dr_grpo, ...)"
                )
            # Online: the config goes to trl.GRPOTrainer, so run every check GRPOConfig makes.
            super().__post_init__()
        else:
            if self.num_generations is not None:
                raise ValueError(
                    "num_generations is for mode online (completions sampled per prompt); offline, each group is "
                    "the row's ranked responses: leave it unset, or set mode: online"
                )
            # Offline: skip GRPOConfig's generation-batch checks (they need num_generations), keep the rest.
            # Relies on GRPOConfig's parent running the TrainingArguments/TRL checks (TRL 1.16; tested).
            super(GRPOConfig, self).__post_init__()
            # The offline losses' own checks, here (not in the trainer) so that every reader of a config (the
            # planner, a recipe before it loads a model) refuses what the trainer would
            if self.loss_type not in OFFLINE_LOSS_TYPES:
                raise ValueError(f"loss_type must be one of {OFFLINE_LOSS_TYPES} offline, got {self.loss_type!r}")
            if self.loss_type == "plackett_luce" and self.beta <= 0:
                raise ValueError("loss_type='plackett_luce' uses beta as DPO's temperature: set beta > 0 (e.g. 0.1)")
            if self.loss_type == "dr_grpo" and not self.max_completion_length:
                raise ValueError("loss_type='dr_grpo' needs max_completion_length (its constant normalizer)")
            self.scale_rewards = {True: "group", False: "none"}.get(self.scale_rewards, self.scale_rewards)
            if isinstance(self.pad_to_multiple_of, str):
                value = self.pad_to_multiple_of.lower()
                self.pad_to_multiple_of = None if value in ("auto", "none", "null") else int(value)
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {self.scale_rewards!r}")
        if self.ratio_against not in RATIO_AGAINST:
            raise ValueError(f"ratio_against must be one of {RATIO_AGAINST}, got {self.ratio_against!r}")
        if self.num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {self.num_iterations}")
        if not self.rank_reward:
            raise ValueError(f"rank_reward must be one of {RANK_REWARDS} or a score column name")
        # Online, loss_type is trl.GRPOTrainer's (its own longer list, checked by GRPOConfig above).
