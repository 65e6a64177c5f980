"""Ranked groups as data: one `ranked` row -> token ids (as TRL tokenizes a pair), a batch of groups -> flat padded
sequences, and the implicit reward of each response of a group under a policy and its reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl.trainer.utils import pad, selective_log_softmax, use_adapter

from trl_ext.tokenization import encode_group, pad_token_id
from trl_ext.trainer_utils import reference_adapter

from .ranked_grpo_loss import RANK_REWARDS, rank_rewards

# Columns the tokenized dataset carries (what `RankedGRPOTrainer._prepare_dataset` writes and the collator reads).
TOKENIZED_COLUMNS = ("prompt_ids", "completion_ids", "ranks", "scores")


@torch.no_grad()
def group_implicit_rewards(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset | list[dict[str, Any]],
    *,
    ref_model: PreTrainedModel | None = None,
    batch_size: int = 4,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
) -> list[list[float]]:
    """For each `ranked` row, `log pi(y|x) - log pi_ref(y|x)` (summed over tokens) of each of its responses, in order.

    The reference is `ref_model`, else (a `PeftModel`) the model with its adapters disabled, or its frozen `"ref"`
    adapter when it has one. This is DPO's implicit reward (up to beta); on held-out ranked data, how well it orders
    each group (e.g. Kendall's tau against the true ranking) measures what the policy learned, offline or online.
    `batch_size` counts groups; each forward pass holds their responses' full logits.
    """
    if ref_model is None and not is_peft_model(model):
        raise ValueError("implicit rewards need a reference: pass ref_model, or a PeftModel (base = reference)")
    rows = dataset if isinstance(dataset, Dataset) else Dataset.from_list(list(dataset))
    collator = DataCollatorForRankedGroups(pad_token_id(tokenizer))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    def sequence_logps(m, batch):
        logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        logps = selective_log_softmax(logits[:, :-1].float(), batch["input_ids"][:, 1:])  # (N, T-1)
        return (logps * batch["completion_mask"][:, 1:]).sum(-1)

    out: list[list[float]] = []
    try:
        for start in range(0, len(rows), batch_size):
            examples = [
                tokenize_ranked_row(
                    rows[i],
                    i,
                    tokenizer=tokenizer,
                    max_prompt_length=max_prompt_length,
                    max_completion_length=max_completion_length,
                    name="scored",
                )  # fmt: skip
                for i in range(start, min(start + batch_size, len(rows)))
            ]
            batch = {k: v.to(device) for k, v in collator(examples).items()}
            logps = sequence_logps(model, batch)
            if ref_model is not None:
                ref_logps = sequence_logps(ref_model, batch)
            else:
                with use_adapter(model, adapter_name=reference_adapter(model)):
                    ref_logps = sequence_logps(model, batch)
            values = (logps - ref_logps).cpu()
            group_index = batch["group_index"].cpu()
            out.extend(values[group_index == g].tolist() for g in range(len(examples)))
    finally:
        model.train(was_training)
    return out


def tokenize_ranked_row(
    row: dict[str, Any],
    index: int,
    *,
    tokenizer: PreTrainedTokenizerBase,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    score_column: str | None = None,
    name: str = "train",
) -> dict[str, Any]:
    """One `ranked` row -> `prompt_ids` and one `completion_ids` list per response, as TRL's DPOTrainer tokenizes a
    pair: chat messages through the chat template (prompt with the generation prompt), plain text with EOS appended to
    each response; the completion starts where prompt and prompt+response diverge. Prompts keep their last
    `max_prompt_length` tokens, completions their first `max_completion_length`."""
    responses, ranking = row["responses"], row["ranking"]
    if not isinstance(responses, list) or len(responses) < 2:
        raise ValueError(f"{name} row {index + 1}: `responses` must be a list of at least 2 responses")
    if not isinstance(ranking, list) or len(ranking) != len(responses):
        raise ValueError(f"{name} row {index + 1}: `ranking` must hold one rank per response ({len(responses)})")
    if any(not isinstance(r, (int, float)) or r < 1 or r != int(r) for r in ranking):
        raise ValueError(f"{name} row {index + 1}: `ranking` must hold integer ranks >= 1 (1 = best), got {ranking}")
    prompt_ids, completions = encode_group(tokenizer, row["prompt"], responses)
    if max_prompt_length is not None:
        prompt_ids = prompt_ids[-max_prompt_length:]
    if max_completion_length is not None:
        completions = [ids[:max_completion_length] for ids in completions]
    scores = [float(s) for s in row[score_column]] if score_column else [float("nan")] * len(responses)
    if len(scores) != len(responses):
        raise ValueError(f"{name} row {index + 1}: `{score_column}` must hold one score per response")
    return {"prompt_ids": prompt_ids, "completion_ids": completions, "ranks": [int(r) for r in ranking],
            "scores": scores}  # fmt: skip


@dataclass
class DataCollatorForRankedGroups:
    """Flattens the groups of a batch into `N` right-padded sequences (prompt + response).

    Returns `input_ids`, `attention_mask`, `completion_mask` (`(N, T)`), `group_index` (`(N,)`, the row each
    sequence came from), `ranks` and `rewards` (`(N,)`; from the ranks via `rank_reward`, or the row's scores).

    Example:
        >>> collator = DataCollatorForRankedGroups(pad_token_id=0)
        >>> batch = collator([{"prompt_ids": [1, 2], "completion_ids": [[3], [4, 5]], "ranks": [2, 1]}])
        >>> batch["input_ids"].tolist(), batch["rewards"].tolist()
        ([[1, 2, 3, 0], [1, 2, 4, 5]], [0.0, 1.0])
    """

    pad_token_id: int
    rank_reward: str = "linear"
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences, completion_masks, group_index, ranks, scores = [], [], [], [], []
        for g, example in enumerate(examples):
            prompt = example["prompt_ids"]
            for completion in example["completion_ids"]:
                sequences.append(torch.tensor(prompt + completion, dtype=torch.long))
                completion_masks.append(torch.tensor([0] * len(prompt) + [1] * len(completion), dtype=torch.long))
                group_index.append(g)
            ranks.extend(example["ranks"])
            scores.extend(example.get("scores") or [float("nan")] * len(example["ranks"]))
        group_index = torch.tensor(group_index, dtype=torch.long)
        ranks = torch.tensor(ranks, dtype=torch.long)
        if self.rank_reward in RANK_REWARDS:
            rewards = rank_rewards(ranks, group_index, self.rank_reward)
        else:
            rewards = torch.tensor(scores, dtype=torch.float32)
            if torch.isnan(rewards).any():
                raise ValueError(f"rank_reward={self.rank_reward!r}: a response has no score")
        return {
            "input_ids": pad(sequences, self.pad_token_id, "right", self.pad_to_multiple_of),
            "attention_mask": pad([torch.ones_like(s) for s in sequences], 0, "right", self.pad_to_multiple_of),
            "completion_mask": pad(completion_masks, 0, "right", self.pad_to_multiple_of),
            "group_index": group_index,
            "ranks": ranks,
            "rewards": rewards,
        }
