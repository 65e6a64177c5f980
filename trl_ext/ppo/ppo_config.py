"""Configuration of `trl_ext.PPOTrainer`."""

from __future__ import annotations

from dataclasses import dataclass, field

# Private in TRL 1.16 (`trl.trainer.base_config`), the base of every TRL config: TRL's defaults (logging_steps=10,
# gradient_checkpointing=True, bf16 unless fp16) so this config behaves like its siblings. tests/test_ppo_trainer.py
# fails if it moves.
from trl.trainer.base_config import _BaseConfig

from trl_ext.ops import KL_ESTIMATORS


@dataclass
class PPOConfig(_BaseConfig):
    r"""
    Configuration for [`trl_ext.PPOTrainer`]: PPO with a critic for RLHF (Ziegler et al. 2019; Ouyang et al. 2022;
    PPO: Schulman et al. 2017, https://arxiv.org/abs/1707.06347).

    Batch sizes. One *rollout* is ``per_device_train_batch_size * gradient_accumulation_steps * num_mini_batches``
    prompts per process. Each rollout is used for ``num_ppo_epochs`` passes, each split into ``num_mini_batches``
    optimizer steps (each of ``gradient_accumulation_steps`` micro-batches of ``per_device_train_batch_size``).
    So one rollout = ``num_ppo_epochs * num_mini_batches`` optimizer steps (``global_step`` counts these).

    Parameters:
        > Model

        model_init_kwargs (`dict`, *optional*):
            Keyword arguments for `AutoModelForCausalLM.from_pretrained` when the trainer gets a model name.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow model repositories to run their own code when loading (as in TRL's configs).
        disable_dropout (`bool`, *optional*, defaults to `True`):
            Turn dropout off (LoRA dropout included), so the policy that sampled a rollout and the one first updated
            on it give the same log-probabilities (the PPO ratio starts at exactly 1).

        > Rollouts

        max_prompt_length (`int` or `None`, *optional*, defaults to `512`):
            Prompts are cut to their last `max_prompt_length` tokens.
        max_completion_length (`int`, *optional*, defaults to `128`):
            Most tokens generated per completion.
        temperature (`float`, *optional*, defaults to `1.0`):
            Rollouts sample ``softmax(logits / temperature)``, and PPO's ratio and KL penalty use the same
            distribution. Nothing else shapes sampling (no top-k, top-p or penalty, and nothing from the
            checkpoint's `generation_config`): truncated sampling would draw the rollouts from a distribution the
            loss does not model.
        top_k (`int`, *optional*, defaults to `0`), top_p (`float`, *optional*, defaults to `1.0`):
            Kept at their neutral values; any other value is refused for the reason above.
        num_mini_batches (`int`, *optional*, defaults to `1`):
            Optimizer steps per pass over a rollout.
        num_ppo_epochs (`int`, *optional*, defaults to `4`):
            Passes over each rollout (K in Schulman et al. 2017).
        ds3_gather_for_generation (`bool`, *optional*, defaults to `True`):
            Under DeepSpeed ZeRO-3, gather the weights for generation (faster, more memory).

        > Reward

        reward_model_path (`str`, *optional*):
            A sequence-classification reward model (as `recipes/reward.py` writes: a full model or a LoRA adapter);
            read by `recipes/ppo.py`. The trainer itself takes a model or a callable.
        reward_functions (`list[str]`, *optional*):
            Rule-based rewards, beside or instead of the reward model: names from `trl_ext.rewards.REWARD_FUNCTIONS`
            (`instruction_following`: the fraction of the prompt's IFEval constraints followed) or dotted import
            paths of functions in TRL's reward-function form (e.g. `trl_ext.toy.synthetic.toy_quality`); read by
            `recipes/ppo.py`.
        reward_weights (`list[float]`, *optional*):
            One weight per reward, the reward model first (if any), then `reward_functions` in order (all 1.0 when
            unset): the score is their weighted sum, as in TRL's GRPO.
        missing_eos_penalty (`float`, *optional*):
            Subtracted from the score of a completion that never produced EOS (hit `max_completion_length`).
        whiten_rewards (`bool`, *optional*, defaults to `False`):
            Scale the per-token rewards of each rollout to unit variance (mean kept).

        > KL penalty (Ziegler et al. 2019, eq. 2)

        kl_coef (`float`, *optional*, defaults to `0.05`):
            beta: per-token reward ``-beta * KL_t``; the starting value when `kl_target` is set.
        kl_estimator (`str`, *optional*, defaults to `"k1"`):
            Per-token estimate of KL(pi || pi_ref) in the reward: `"k1"` (log-ratio, as the paper), `"k2"` or `"k3"`.
        kl_target (`float`, *optional*):
            Adaptive beta (Ziegler et al. 2019, sec. 2.2): the KL per sequence, in nats, to steer towards (the
            paper uses 6 for style tasks). Unset: beta stays fixed.
        kl_horizon (`int`, *optional*, defaults to `10000`):
            Horizon of the adaptive controller, in sequences.

        > PPO (Schulman et al. 2017)

        gamma (`float`, *optional*, defaults to `1.0`), lam (`float`, *optional*, defaults to `0.95`):
            GAE discount and lambda (Schulman et al. 2016).
        cliprange (`float`, *optional*, defaults to `0.2`):
            epsilon of the clipped surrogate.
        cliprange_value (`float`, *optional*, defaults to `0.2`):
            How far the critic may move from its rollout value in the clipped value loss.
        vf_coef (`float`, *optional*, defaults to `0.1`):
            Weight of the value loss (the critic shares the policy's trunk, see the trainer).
        whiten_advantages (`bool`, *optional*, defaults to `True`):
            Normalize the advantages of each rollout to mean 0, variance 1.
        early_stop_kl (`float`, *optional*):
            Bound on the approximate KL (k2, per token) between the policy being updated and the rollout policy;
            once a mini-batch passes it, that update is discarded and the rest of the rollout skipped (as in
            Spinning Up's PPO, which uses 1.5 x 0.01). Unset: no early stop.
    """

    _VALID_DICT_FIELDS = _BaseConfig._VALID_DICT_FIELDS + ["model_init_kwargs"]

    # Parameters whose default values are overridden from TrainingArguments
    learning_rate: float = field(default=1e-5, metadata={"help": "The initial learning rate for AdamW."})

    # Model
    model_init_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Keyword arguments for from_pretrained when the model is given by name."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow model repositories to run their own code (off unless you trust them)."}
    )
    disable_dropout: bool = field(
        default=True, metadata={"help": "Turn dropout off so the first PPO ratio of a rollout is exactly 1."}
    )

    # Rollouts
    max_prompt_length: int | None = field(
        default=512, metadata={"help": "Keep the last N tokens of each prompt (None: no limit)."}
    )
    max_completion_length: int = field(default=128, metadata={"help": "Most tokens generated per completion."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (also used in the PPO ratio)."})
    top_k: int = field(default=0, metadata={"help": "Must stay 0: PPO's loss models the full softmax."})
    top_p: float = field(default=1.0, metadata={"help": "Must stay 1.0: PPO's loss models the full softmax."})
    num_mini_batches: int = field(default=1, metadata={"help": "Optimizer steps per pass over a rollout."})
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout."})
    ds3_gather_for_generation: bool = field(
        default=True, metadata={"help": "DeepSpeed ZeRO-3: gather the weights for generation."}
    )

    # Reward
    reward_model_path: str | None = field(
        default=None, metadata={"help": "Sequence-classification reward model (full model or LoRA adapter folder)."}
    )
    reward_functions: list[str] | None = field(
        default=None,
        metadata={
            "help": "Rule-based rewards beside or instead of a reward model: instruction_following, or dotted paths."
        },
    )
    reward_weights: list[float] | None = field(
        default=None,
        metadata={"help": "One weight per reward (reward model first, then reward_functions); all 1.0 if unset."},
    )
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Subtracted from the score of a completion that never produced EOS."}
    )
    whiten_rewards: bool = field(default=False, metadata={"help": "Scale per-token rewards to unit variance."})

    # KL
    kl_coef: float = field(default=0.05, metadata={"help": "beta of the per-token KL penalty (initial if adaptive)."})
    kl_estimator: str = field(
        default="k1", metadata={"help": "Per-token KL estimate in the reward.", "choices": ["k1", "k2", "k3"]}
    )
    kl_target: float | None = field(
        default=None, metadata={"help": "Adaptive KL: target KL per sequence in nats (None: fixed kl_coef)."}
    )
    kl_horizon: int = field(default=10000, metadata={"help": "Adaptive KL controller horizon, in sequences."})

    # PPO
    gamma: float = field(default=1.0, metadata={"help": "GAE discount."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    cliprange: float = field(default=0.2, metadata={"help": "Clip range of the policy ratio."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value function."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    whiten_advantages: bool = field(default=True, metadata={"help": "Normalize advantages per rollout."})
    early_stop_kl: float | None = field(
        default=None,
        metadata={"help": "Skip the rest of a rollout once the approx KL to the rollout policy passes this bound."},
    )

    def __post_init__(self):
        # The value head is applied outside the model's forward (to its last hidden state). DDP's search for unused
        # parameters (transformers turns it on without gradient checkpointing) would mark the head unused at the end
        # of the forward and then fail when its gradient arrives; every trainable parameter (adapter and head) is
        # used at every step, so the search is not needed.
        if self.ddp_find_unused_parameters is None:
            self.ddp_find_unused_parameters = False
        super().__post_init__()
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
        if (self.top_k or 0) != 0 or self.top_p != 1.0:
            raise ValueError(
                f"top_k={self.top_k}, top_p={self.top_p}: PPO samples rollouts from the full softmax (at `temperature`), "
                "the distribution its ratio and KL penalty use; truncated sampling would train on samples the loss does "
                "not model. Leave top_k at 0 and top_p at 1.0 (lower `temperature` to sample more conservatively)."
            )
        if self.num_ppo_epochs < 1 or self.num_mini_batches < 1:
            raise ValueError("num_ppo_epochs and num_mini_batches must be at least 1")
        if self.kl_target is not None and self.kl_target <= 0:
            raise ValueError(f"kl_target must be positive, got {self.kl_target}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    @property
    def rollout_batch_size(self) -> int:
        """Prompts per rollout on each process."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_mini_batches
