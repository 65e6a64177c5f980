"""Online GRPO from rankings: a reward model learned from the rankings, as a reward function for `trl.GRPOTrainer`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer
from trl.trainer.utils import pad

from trl_ext.tokenization import encode_sequence, pad_token_id

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


def layout_group_index(total: int, group_size: int) -> Tensor:
    """Group of each completion in TRL's GRPO layout: the gathered batch (all processes, in process order) holds each
    prompt's `group_size` completions next to each other, so completion ``i`` belongs to group ``i // group_size``.
    Two groups of the same prompt stay two groups. ``(total,)``."""
    if group_size < 1 or total % group_size:
        raise ValueError(f"{total} completions do not split into groups of num_generations={group_size}")
    return torch.arange(total) // group_size


def ranks_across_processes(
    local_scores: Tensor,
    group_size: int,
    *,
    gather: Callable[[Tensor], Tensor] = lambda t: t,
    process_index: int = 0,
) -> Tensor:
    """`ranks_within_groups` of this process's scores, with each group whole: TRL calls a reward function on each
    process's slice of the generation batch, and a group of `group_size` may straddle processes, so the scores are
    gathered (`gather`, every process's tensor concatenated in process order, as `accelerate`'s `gather` does),
    ranked in their groups, and this process's slice is returned. ``(n_local,)``."""
    everything = gather(local_scores)
    ranks = ranks_within_groups(everything, layout_group_index(everything.numel(), group_size))
    start = process_index * local_scores.numel()
    return ranks[start : start + local_scores.numel()]


class RewardModelScorer:
    """A reward function for `trl.GRPOTrainer` from a sequence-classification reward model.

    Why not hand the model to `GRPOTrainer` directly (TRL accepts one as `reward_funcs`): TRL 1.16's `RewardTrainer`
    trains on prompt + completion *with EOS appended* to plain text and reads the score at that last token, while
    `GRPOTrainer` scores prompt + completion decoded without special tokens, so the score is read at a position the
    model was never trained on. This scorer builds the reward model's input exactly as `RewardTrainer` did
    (`trl_ext.tokenization.encode_sequence`), and can rank within groups.

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
        num_generations: int | None = None,
        batch_size: int = 32,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.rank_within_group = rank_within_group
        self.num_generations = num_generations
        self.batch_size = batch_size
        self.trainer: Trainer | None = None
        self.__name__ = "reward_model_ranks" if rank_within_group else "reward_model"
        self.pad_token_id = pad_token_id(tokenizer)
        model.config.pad_token_id = self.pad_token_id  # the score is read at the last non-pad token

    def attach(self, trainer: Trainer) -> RewardModelScorer:
        """Read the group size (`num_generations`, or `num_generations_eval` while evaluating) and the processes from
        the `trl.GRPOTrainer` this scorer rewards (needed with `rank_within_group`: groups span processes), and place
        the reward model for the trainer's engine as TRL places its own reward models (under ZeRO-3 its weights are
        partitioned at load time and only a DeepSpeed engine can run it)."""
        from trl_ext.trainer_utils import prepare_reference_model

        self.trainer = trainer
        self.model = prepare_reference_model(trainer, self.model)
        return self

    def _group_size(self) -> int:
        trainer = self.trainer
        if trainer is not None:
            evaluating = not trainer.model.training
            size = getattr(trainer, "num_generations_eval", None) if evaluating else None
            return int(size or trainer.num_generations)
        if self.num_generations is None:
            raise ValueError("rank_within_group needs the group size: pass num_generations, or call attach(trainer)")
        return self.num_generations

    @torch.no_grad()
    def scores(self, prompts: Sequence[Any], completions: Sequence[Any]) -> Tensor:
        """The reward model's score of each prompt + completion, ``(N,)`` float32 on the CPU."""
        device = next(self.model.parameters()).device
        ids = [torch.tensor(encode_sequence(self.tokenizer, p, c)) for p, c in zip(prompts, completions)]
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
            if self.trainer is not None and self.trainer.accelerator.num_processes > 1:
                accelerator = self.trainer.accelerator
                device = accelerator.device
                scores = ranks_across_processes(
                    scores.to(device),
                    self._group_size(),
                    gather=accelerator.gather,
                    process_index=accelerator.process_index,
                ).cpu()
            else:
                scores = ranks_across_processes(scores, self._group_size())
        return scores.tolist()
