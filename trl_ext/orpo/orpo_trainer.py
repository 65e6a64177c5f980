"""TRL 1.16's experimental `ORPOTrainer` with one hook replaced: `tokenize_row`.

TRL's version tokenizes text the chat template already rendered and then appends EOS to every answer that does not
end with it; a ChatML answer ends with ``<|im_end|>\\n``, so each one is trained as ``...<|im_end|>\\n<|im_end|>`` (an
end of turn the model never sees at inference, on every row). And it truncates only the answers: a prompt longer
than `max_length` leaves an empty answer, whose mean log-probability is 0/0, and the loss turns NaN.

Ours tokenizes with `trl_ext.tokenization.encode_rendered_group` (the answer ends where the template ends it, as in
TRL's DPOTrainer) and truncates as DPO's ``keep_end`` does for long prompts: the prompt keeps its last tokens, leaving
the answers room (at least half of `max_length`), and answers longer than that are cut at the end. The fields and
labels are those TRL's collator and loss read.
"""

from __future__ import annotations

from typing import Any

from trl.experimental.orpo import ORPOTrainer as TRLORPOTrainer

from trl_ext.tokenization import encode_rendered_group


def truncate_pair(
    prompt_ids: list[int], answers: list[list[int]], max_length: int | None
) -> tuple[list[int], list[list[int]]]:
    """Prompt and answers cut to fit `max_length` together: the prompt keeps its last tokens (at least
    ``max_length // 2`` of them, if it has that many), the answers their first."""
    if max_length is None:
        return prompt_ids, answers
    longest = max((len(a) for a in answers), default=0)
    if len(prompt_ids) + longest <= max_length:
        return prompt_ids, answers
    keep = min(len(prompt_ids), max(max_length - longest, max_length // 2))
    prompt_ids = prompt_ids[len(prompt_ids) - keep :]
    room = max_length - len(prompt_ids)
    return prompt_ids, [a[:room] for a in answers]


class ORPOTrainer(TRLORPOTrainer):
    """`trl.experimental.orpo.ORPOTrainer` tokenizing chat data as the rest of the project does (see the module)."""

    def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, list[int]]:
        if self.is_encoder_decoder:
            return super().tokenize_row(feature, model)
        prompt_ids, answers = encode_rendered_group(
            self.processing_class, feature["prompt"], [feature["chosen"], feature["rejected"]]
        )
        prompt_ids, (chosen_ids, rejected_ids) = truncate_pair(prompt_ids, answers, self.max_length)
        batch = {"prompt_input_ids": prompt_ids, "prompt_attention_mask": [1] * len(prompt_ids)}
        for name, answer in (("chosen", chosen_ids), ("rejected", rejected_ids)):
            sequence = prompt_ids + answer
            batch[f"{name}_input_ids"] = sequence
            batch[f"{name}_attention_mask"] = [1] * len(sequence)
            batch[f"{name}_labels"] = [-100] * len(prompt_ids) + answer
        return batch
