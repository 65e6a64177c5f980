"""A listwise reward model for online GRPO: `PlackettLuceRewardTrainer`, a small subclass of TRL's `RewardTrainer`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase
from trl import RewardTrainer
from trl.trainer.utils import pad

from trl_ext.prefix_sharing import prefix_sharing_usable, shared_prefix_scores
from trl_ext.tokenization import encode_sequence, pad_token_id

from .ranked_grpo_loss import group_kendall_tau, group_sum, plackett_luce_loss

logger = logging.getLogger(__name__)


class PlackettLuceRewardTrainer(RewardTrainer):
    r"""
    A reward model trained on whole rankings: the negative log-likelihood of each group's ranking under a
    Plackett-Luce model of the reward model's scores (`ranked_grpo_loss.plackett_luce_loss` with the scores as
    utilities), instead of TRL's Bradley-Terry loss on pairs.

    The only changes w.r.t. `trl.RewardTrainer` (TRL 1.16): the data are `ranked` groups (`prompt`, `responses`,
    `ranking`), tokenized per response exactly as `RewardTrainer` tokenizes `chosen` (`trl_ext.tokenization.encode_sequence`), and `compute_loss` scores every response of a group in
    one batch (with `prefix_sharing=True`, one packed sequence per group: the common prompt once,
    `trl_ext.prefix_sharing`). With two responses per group the loss is `RewardTrainer`'s `-log sigmoid(r_chosen - r_rejected)`,
    `center_rewards_coefficient` term included (`mean((r_1 + r_2)^2)`; for larger groups, the squared group sum).
    Ties compete only against strictly worse responses (Bradley-Terry on all pairs also skips them).

    Compared with Bradley-Terry on all pairs of a group (`dataset_builders.load(..., method="reward",
    pair_strategy="all_pairs")`), every response is scored once per group instead of once per pair it is in, and a
    group of n counts as one example rather than n(n-1)/2 correlated pairs.

    Depends on TRL 1.16's private `RewardTrainer._prepare_dataset(dataset, processing_class, args, dataset_name)`
    hook, which `__init__` calls on the train and eval sets (`tests/test_trl_internals.py` fails if it changes).

    Example:
        >>> from trl import RewardConfig
        >>> trainer = PlackettLuceRewardTrainer(model, args=RewardConfig("rm"), train_dataset=ranked,
        ...                                     processing_class=tokenizer)
    """

    _tag_names = ["trl", "trl-ext", "reward-trainer", "plackett-luce"]

    def __init__(self, *args, data_collator=None, prefix_sharing: bool = False, **kwargs):
        tokenizer = kwargs.get("processing_class")
        collator = data_collator or DataCollatorForRankedRewards(
            pad_token_id(tokenizer) if tokenizer is not None else 0
        )
        super().__init__(*args, data_collator=collator, **kwargs)
        self.prefix_sharing = prefix_sharing_usable(prefix_sharing, self.model)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "responses_ids" in dataset.column_names:
            return dataset
        missing = {"prompt", "responses", "ranking"} - set(dataset.column_names)
        if missing:
            raise ValueError(f"{dataset_name} dataset lacks {sorted(missing)}: the `ranked` shape is needed")
        tokenized = dataset.map(
            tokenize_ranked_for_reward,
            fn_kwargs={"tokenizer": processing_class, "max_length": args.max_length},
            remove_columns=dataset.column_names,
            desc=f"Tokenizing {dataset_name} groups",
        )
        kept = tokenized.filter(lambda row: len(row["responses_ids"]) >= 2)
        if len(kept) < len(tokenized):
            logger.warning(
                "%s: %d group(s) left with fewer than 2 responses of at most max_length=%s tokens were dropped",
                dataset_name, len(tokenized) - len(kept), args.max_length,
            )  # fmt: skip
        return kept

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["responses_ids", "ranking"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        group_index, ranks = inputs["group_index"], inputs["ranking"]
        if self.prefix_sharing:
            scores = shared_prefix_scores(model, inputs, group_index).squeeze(-1)  # (N,)
            outputs = {"logits": scores.unsqueeze(-1)}  # what the unshared forward returns, for prediction_step
        else:
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            scores = outputs.logits.squeeze(-1)  # (N,)
        loss = plackett_luce_loss(scores, ranks, group_index).mean()
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * (group_sum(scores, group_index) ** 2).mean()

        with torch.no_grad():
            same = group_index[:, None] == group_index[None, :]
            pairs = same & (ranks[:, None] < ranks[None, :])
            accuracy = (scores[:, None] > scores[None, :])[pairs].float().mean()
            tau = torch.nanmean(group_kendall_tau(scores, ranks, group_index))
            for name, value in (("accuracy", accuracy), ("kendall_tau", tau), ("mean_reward", scores.mean())):
                self._metrics[mode][name].append(self.accelerator.gather_for_metrics(value.reshape(1)).mean().item())
        return (loss, outputs) if return_outputs else loss


def tokenize_ranked_for_reward(
    row: dict[str, Any], *, tokenizer: PreTrainedTokenizerBase, max_length: int | None = None
) -> dict[str, Any]:
    """One `ranked` row -> one token list per response (prompt + response, as `RewardTrainer` tokenizes `chosen`).
    Responses longer than `max_length` are left out (as `RewardTrainer` leaves out such pairs)."""
    ids = [encode_sequence(tokenizer, row["prompt"], response) for response in row["responses"]]
    keep = [i for i, x in enumerate(ids) if max_length is None or len(x) <= max_length]
    return {"responses_ids": [ids[i] for i in keep], "ranking": [int(row["ranking"][i]) for i in keep]}


@dataclass
class DataCollatorForRankedRewards:
    """Flattens ranked groups into `N` right-padded sequences: `input_ids`, `attention_mask` `(N, T)`,
    `group_index` and `ranking` `(N,)`."""

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences = [torch.tensor(ids) for ex in examples for ids in ex["responses_ids"]]
        group_index = [g for g, ex in enumerate(examples) for _ in ex["responses_ids"]]
        return {
            "input_ids": pad(sequences, self.pad_token_id, "right"),
            "attention_mask": pad([torch.ones_like(s) for s in sequences], 0, "right"),
            "group_index": torch.tensor(group_index, dtype=torch.long),
            "ranking": torch.tensor([r for ex in examples for r in ex["ranking"]], dtype=torch.long),
        }
