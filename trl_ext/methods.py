"""The one table of methods: every place that lists the methods (the CLI's commands, the data mappings, the model
card's titles and papers, the memory planner and its benchmark) reads it here.

A method's `name` is at once its `trl-ext` command, its recipe `recipes/<name>.py`, its config folder
`recipes/configs/<name>/` and the `method=` of `dataset_builders.load` that shapes its rows;
`tests/test_methods.py` checks that each of those exists for every entry, and that nothing else is listed.

This module imports nothing: `dataset_builders` and the CLI read it without loading torch or TRL.
"""

from __future__ import annotations

from dataclasses import dataclass

RLHF_PAPER = "Ouyang et al. 2022, Training language models to follow instructions with human feedback, https://arxiv.org/abs/2203.02155"  # fmt: skip


@dataclass(frozen=True)
class Method:
    """One training method.

    Parameters:
        name: the command, the recipe, the config folder and the data mapping's name.
        title: what it is, in words (the model card's heading).
        paper: the paper the method comes from (the model card cites it).
        trainers: names of the trainer classes its recipe builds (how the planner's start-up check knows a built
            trainer's method; a subclass is found through its bases).
        fused_lm_head: TRL computes its log-probabilities with the fused LM-head kernel (fixed tiles, not the whole
            vocabulary per token): the planner's head term.
        generates: it samples during training (a rollout): the planner counts the KV cache and the memory benchmark
            measures one micro-batch per step.
    """

    name: str
    title: str
    paper: str
    trainers: tuple[str, ...]
    fused_lm_head: bool
    generates: bool = False


_TABLE = (
    Method("sft", "Supervised fine-tuning (step 1 of RLHF)", RLHF_PAPER, ("SFTTrainer",), fused_lm_head=True),
    Method("reward", "Reward model (Bradley-Terry, step 2 of RLHF)", RLHF_PAPER,
           ("RewardTrainer", "PlackettLuceRewardTrainer"), fused_lm_head=False),
    Method("ppo", "Proximal Policy Optimization (RLHF)",
           "Schulman et al. 2017, Proximal Policy Optimization Algorithms, https://arxiv.org/abs/1707.06347; "
           "Ouyang et al. 2022, https://arxiv.org/abs/2203.02155", ("PPOTrainer",), fused_lm_head=False,
           generates=True),
    Method("dpo", "Direct Preference Optimization",
           "Rafailov et al. 2023, Direct Preference Optimization: Your Language Model is Secretly a Reward Model, "
           "https://arxiv.org/abs/2305.18290", ("DPOTrainer",), fused_lm_head=True),
    Method("ipo", "Identity Preference Optimization",
           "Azar et al. 2023, A General Theoretical Paradigm to Understand Learning from Human Preferences, "
           "https://arxiv.org/abs/2310.12036", ("LengthAwareIPOTrainer",), fused_lm_head=True),
    Method("kto", "Kahneman-Tversky Optimization",
           "Ethayarajh et al. 2024, KTO: Model Alignment as Prospect Theoretic Optimization, "
           "https://arxiv.org/abs/2402.01306", ("KTOTrainer",), fused_lm_head=True),
    Method("orpo", "Odds Ratio Preference Optimization",
           "Hong et al. 2024, ORPO: Monolithic Preference Optimization without Reference Model, "
           "https://arxiv.org/abs/2403.07691", ("ORPOTrainer",), fused_lm_head=False),
    Method("grpo", "Group Relative Policy Optimization",
           "Shao et al. 2024, DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models, "
           "https://arxiv.org/abs/2402.03300", ("RankedGRPOTrainer",), fused_lm_head=True),
)  # fmt: skip

METHODS: dict[str, Method] = {m.name: m for m in _TABLE}
NAMES: tuple[str, ...] = tuple(METHODS)

# GRPO's online mode (`mode: online`: TRL's GRPOTrainer samples during training) needs memory of its own, so the
# planner and the memory benchmark model it as a variant of `grpo` with its own entry.
GRPO_ONLINE = Method(
    "grpo-online", METHODS["grpo"].title + " (online)", METHODS["grpo"].paper, ("GRPOTrainer",),
    fused_lm_head=True, generates=True,
)  # fmt: skip
PLANNED: dict[str, Method] = {**METHODS, GRPO_ONLINE.name: GRPO_ONLINE}


def method_of_trainer(trainer_class: type) -> str | None:
    """The planned method whose trainer `trainer_class` is or derives from (the first match along its MRO)."""
    by_trainer = {t: m.name for m in PLANNED.values() for t in m.trainers}
    return next((by_trainer[c.__name__] for c in trainer_class.__mro__ if c.__name__ in by_trainer), None)
