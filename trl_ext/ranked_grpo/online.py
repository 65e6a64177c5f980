"""Online GRPO from rankings: a reward model learned from the rankings, as a reward function for `trl.GRPOTrainer`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl.trainer.utils import pad

from .plackett_luce_reward import reward_model_input_ids
from .ranked_grpo_loss import rank_rewards


def ranks_within_groups(scores: Tensor, group_index: Tensor) -> Tensor:
    """Replace scores by their rank inside each group, as rewards in [0, 1]: ``(n - rank) / (n - 1)`` with
    rank = 1 + the number of group members that scored strictly higher (equal scores share a rank).

    With group-normalized advantages this makes GRPO depend only on the order the reward model gives each group, not
    on its scale (nor on any monotone distortion of it). Shapes ``(N,)``.
    """
    same = group_index[:, None] == group_index[None, :]
    ranks = 1 + (same & (scores[None, :] > scores[:, None])).sum(-1)  # (N,)
    return rank_rewards(ranks, group_index, "linear")


def consecutive_groups(prompts: Sequence[Any]) -> Tensor:
    """Group index of each completion: runs of equal consecutive prompts (TRL's GRPO lists each prompt's
    `num_generations` completions next to each other when it calls the reward functions)."""
    index, current = [], -1
    for i, prompt in enumerate(prompts):
        if i == 0 or prompt != prompts[i - 1]:
            current += 1
        index.append(current)
    return torch.tensor(index, dtype=torch.long)


class RewardModelScorer:
    """A reward function for `trl.GRPOTrainer` from a sequence-classification reward model.

    Why not hand the model to `GRPOTrainer` directly (TRL accepts one as `reward_funcs`): TRL 1.16's `RewardTrainer`
    trains on prompt + completion *with EOS appended* to plain text and reads the score at that last token, while
    `GRPOTrainer` scores prompt + completion decoded without special tokens, so the score is read at a position the
    model was never trained on. This scorer builds the reward model's input exactly as `RewardTrainer` did
    (`reward_model_input_ids`), and can rank within groups.

    Args:
        model: a `num_labels=1` sequence-classification model (a `PeftModel` works), in eval mode.
        tokenizer: its tokenizer.
        rank_within_group: replace the scores by their rank within each generated group (see `ranks_within_groups`).
        batch_size: completions scored per forward pass.

    Example:
        >>> scorer = RewardModelScorer(reward_model, reward_tokenizer, rank_within_group=True)
        >>> trainer = GRPOTrainer(model, reward_funcs=[scorer], args=grpo_args, train_dataset=prompts)
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        rank_within_group: bool = False,
        batch_size: int = 32,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.rank_within_group = rank_within_group
        self.batch_size = batch_size
        self.__name__ = "reward_model_ranks" if rank_within_group else "reward_model"
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = pad_id
        model.config.pad_token_id = pad_id  # the score is read at the last non-pad token

    @torch.no_grad()
    def scores(self, prompts: Sequence[Any], completions: Sequence[Any]) -> Tensor:
        """The reward model's score of each prompt + completion, ``(N,)`` float32 on the CPU."""
        device = next(self.model.parameters()).device
        ids = [torch.tensor(reward_model_input_ids(self.tokenizer, p, c)) for p, c in zip(prompts, completions)]
        out = []
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start : start + self.batch_size]
            input_ids = pad(chunk, self.pad_token_id, "right").to(device)
            attention_mask = pad([torch.ones_like(x) for x in chunk], 0, "right").to(device)
            out.append(self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float().cpu())
        return torch.cat(out)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        scores = self.scores(prompts, completions)
        if self.rank_within_group:
            scores = ranks_within_groups(scores, consecutive_groups(prompts))
        return scores.tolist()


def load_reward_model(
    path: str,
    *,
    dtype: torch.dtype | str | None = None,
    quantization_config: Any | None = None,
    device_map: Any | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A reward model saved by `recipes/reward.py` or `recipes/grpo.py --mode online` (full model, merged model or LoRA
    adapter with its score head), and its tokenizer, for inference."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trl_ext.tiny import resolve_model_name

    path = resolve_model_name(path)
    is_adapter = os.path.exists(os.path.join(path, "adapter_config.json"))
    base = path
    if is_adapter:
        from peft import PeftConfig

        base = resolve_model_name(PeftConfig.from_pretrained(path).base_model_name_or_path)
    kwargs: dict[str, Any] = {"num_labels": 1, "trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = AutoModelForSequenceClassification.from_pretrained(base, **kwargs)
    if is_adapter:  # LoRA weights and the trained score head (saved as modules_to_save)
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path)
    return model.eval(), AutoTokenizer.from_pretrained(path)
