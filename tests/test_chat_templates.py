"""Chat templates right wherever we tokenize, for three real template families (SmolLM2, Qwen3, Llama-3).

For each: prompt + completion tokens are the template's rendering of the whole conversation; one BOS where the
template writes one; a completion ends with the template's end-of-turn token (only the template's whitespace after
it); system prompts, given or the template's default, as the template renders them; TRL's DPOTrainer and
RewardTrainer and our own entry points (ranked groups, evaluation, PPO prompts) produce the same ids; sampling stops
at the end of turn that the model's generation config lists.
"""

import pytest
from _chat_tokenizers import END_OF_TURN, tiny_model_for, tokenizer_dir

from trl_ext import evaluation as ev
from trl_ext.models import tokenizer_from
from trl_ext.tokenization import (
    encode_completion,
    encode_group,
    encode_prompt,
    encode_sequence,
    generation_prompt_always_added,
    stop_token_ids,
)

FAMILIES = ["smollm2", "qwen3", "llama3"]

SYSTEM = {"role": "system", "content": "You answer in one short sentence."}
Q1 = {"role": "user", "content": "What is the capital of France?"}
A1 = {"role": "assistant", "content": "Paris."}
Q2 = {"role": "user", "content": "And of Italy?"}
PROMPTS = {"single turn": [Q1], "with a system prompt": [SYSTEM, Q1], "multi-turn": [SYSTEM, Q1, A1, Q2]}
CHOSEN, REJECTED = "Rome is the capital of Italy.", "I'm not sure, maybe Milan?"


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def tokenizer(family):
    return tokenizer_from(str(tokenizer_dir(family)))  # what every recipe loads (repairs the early Llama-3 template)


def rendered(tokenizer, messages, **kwargs):
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"])


def assistant(text):
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize("prompt_name", PROMPTS)
def test_prompt_plus_completion_is_the_templates_rendering_of_the_conversation(tokenizer, prompt_name):
    prompt = PROMPTS[prompt_name]
    prompt_ids, completion_ids = encode_completion(tokenizer, prompt, CHOSEN)
    assert prompt_ids + completion_ids == rendered(tokenizer, prompt + assistant(CHOSEN))
    # the context the model is trained on is the one it is sampled from
    assert prompt_ids == encode_prompt(tokenizer, prompt) == rendered(tokenizer, prompt, add_generation_prompt=True)
    assert CHOSEN in tokenizer.decode(completion_ids)


def test_a_completion_ends_with_the_end_of_turn_token(tokenizer, family):
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN[family])
    for prompt in PROMPTS.values():
        _, completions = encode_group(tokenizer, prompt, [CHOSEN, REJECTED])
        for ids in completions:
            last = max(i for i, t in enumerate(ids) if tokenizer.decode([t]).strip())
            assert ids[last] == end_of_turn, tokenizer.decode(ids)
            assert all(not tokenizer.decode([t]).strip() for t in ids[last + 1 :])  # only the template's newline
            assert ids.count(end_of_turn) == 1


def test_one_bos_where_the_template_writes_one(tokenizer, family):
    writes_bos = "bos_token" in tokenizer.chat_template
    assert writes_bos == (family == "llama3")
    if not writes_bos:
        return
    bos = tokenizer.bos_token_id
    for prompt in PROMPTS.values():
        assert encode_sequence(tokenizer, prompt, CHOSEN).count(bos) == 1
        assert encode_prompt(tokenizer, prompt).count(bos) == 1
    # plain text has no template: at most the tokenizer's own BOS (this tokenizer.json adds none), never two
    assert encode_sequence(tokenizer, "Question: why?", " Because.").count(bos) <= 1


def test_system_prompts_as_the_template_renders_them(tokenizer, family):
    given = tokenizer.decode(encode_prompt(tokenizer, [SYSTEM, Q1]))
    assert given.count(SYSTEM["content"]) == 1 and given.index(SYSTEM["content"]) < given.index(Q1["content"])
    default = tokenizer.decode(encode_prompt(tokenizer, [Q1]))
    if family == "smollm2":  # its template adds a default system turn when the conversation has none
        assert default.count("You are a helpful AI assistant named SmolLM") == 1
        assert "SmolLM" not in given
    else:
        assert "system" not in default


def test_the_early_llama3_template_is_repaired_at_load():
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(tokenizer_dir("llama3"))
    header = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert generation_prompt_always_added(raw) == header
    finished = raw.apply_chat_template([Q1, A1], tokenize=False)
    assert finished.endswith("<|eot_id|>" + header)  # the bug: a finished conversation asks for another answer
    repaired = tokenizer_from(str(tokenizer_dir("llama3")))
    assert generation_prompt_always_added(repaired) is None
    assert repaired.apply_chat_template([Q1, A1], tokenize=False) == finished[: -len(header)]
    assert repaired.apply_chat_template([Q1], tokenize=False, add_generation_prompt=True).endswith(header)


def test_templates_that_honour_the_flag_are_left_alone(tokenizer, family):
    if family != "llama3":
        assert generation_prompt_always_added(tokenizer) is None


def test_trl_trainers_tokenize_as_we_do(tokenizer, family, tmp_path):
    """TRL's DPOTrainer (pairs) and RewardTrainer (chosen sequences) give the ids our trainers and evaluation use."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    rows = [{"prompt": p, "chosen": assistant(CHOSEN), "rejected": assistant(REJECTED)} for p in PROMPTS.values()]
    model = tiny_model_for(family, tokenizer)
    common = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_length=None)
    dpo = DPOTrainer(model=model, ref_model=tiny_model_for(family, tokenizer), args=DPOConfig(**common),
                     train_dataset=Dataset.from_list(rows), processing_class=tokenizer)  # fmt: skip
    for row, tokenized in zip(rows, dpo.train_dataset):
        prompt_ids, (chosen_ids, rejected_ids) = encode_group(tokenizer, row["prompt"], [CHOSEN, REJECTED])
        assert tokenized["prompt_ids"] == prompt_ids
        assert tokenized["chosen_ids"] == chosen_ids and tokenized["rejected_ids"] == rejected_ids

    from transformers import AutoModelForSequenceClassification

    config = model.config.__class__(**model.config.to_dict())
    config.num_labels = 1
    rm = AutoModelForSequenceClassification.from_config(config)
    rm.config.pad_token_id = tokenizer.pad_token_id
    reward = RewardTrainer(model=rm, args=RewardConfig(**common), train_dataset=Dataset.from_list(rows),
                           processing_class=tokenizer)  # fmt: skip
    for row, tokenized in zip(rows, reward.train_dataset):
        assert tokenized["chosen_ids"] == encode_sequence(tokenizer, row["prompt"], CHOSEN)
        assert tokenized["rejected_ids"] == encode_sequence(tokenizer, row["prompt"], REJECTED)


def test_orpo_tokenizes_as_dpo_does(tokenizer, family, tmp_path):
    """Our ORPOTrainer: one end of turn per answer (TRL's appends EOS after ChatML's ``<|im_end|>\\n``), one BOS."""
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig
    from trl.experimental.orpo import ORPOTrainer as TRLORPOTrainer

    from trl_ext.orpo import ORPOTrainer

    rows = [{"prompt": p, "chosen": assistant(CHOSEN), "rejected": assistant(REJECTED)} for p in PROMPTS.values()]
    args = ORPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_length=512)
    model = tiny_model_for(family, tokenizer)
    orpo = ORPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    for row, tokenized in zip(rows, orpo.train_dataset):
        prompt_ids, (chosen_ids, rejected_ids) = encode_group(tokenizer, row["prompt"], [CHOSEN, REJECTED])
        assert tokenized["prompt_input_ids"] == prompt_ids
        assert tokenized["chosen_input_ids"] == prompt_ids + chosen_ids
        assert tokenized["rejected_labels"] == [-100] * len(prompt_ids) + rejected_ids
    if family != "llama3":  # TRL's own tokenization ends each ChatML answer with two ends of turn: the bug we fix
        trl_orpo = TRLORPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows[:1]),
                                  processing_class=tokenizer)  # fmt: skip
        end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN[family])
        assert trl_orpo.train_dataset[0]["chosen_input_ids"][-3:] == [
            end_of_turn,
            tokenizer.encode("\n")[0],
            end_of_turn,
        ]


def test_orpo_truncates_long_prompts_from_the_start():
    from trl_ext.orpo.orpo_trainer import truncate_pair

    assert truncate_pair([1, 2, 3, 4, 5, 6], [[7, 8], [9]], 6) == ([3, 4, 5, 6], [[7, 8], [9]])
    # answers longer than half the room: the prompt keeps half, the answers are cut at the end
    assert truncate_pair([1, 2, 3, 4], [[5, 6, 7, 8, 9, 10], [11]], 6) == ([2, 3, 4], [[5, 6, 7], [11]])
    assert truncate_pair([1, 2], [[3]], None) == ([1, 2], [[3]])


def test_our_entry_points_use_the_same_ids(tokenizer):
    from trl_ext.ranked_grpo.groups import tokenize_ranked_row

    prompt = PROMPTS["multi-turn"]
    row = tokenize_ranked_row({"prompt": prompt, "responses": [CHOSEN, REJECTED], "ranking": [1, 2]}, 0,
                              tokenizer=tokenizer)  # fmt: skip
    assert (row["prompt_ids"], row["completion_ids"]) == encode_group(tokenizer, prompt, [CHOSEN, REJECTED])
    assert row["prompt_ids"] + row["completion_ids"][0] == rendered(tokenizer, prompt + assistant(CHOSEN))


def test_sampling_stops_at_the_end_of_turn_of_the_generation_config(tokenizer, family):
    import torch

    model = tiny_model_for(family, tokenizer)
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN[family])
    assert end_of_turn in stop_token_ids(model, tokenizer)
    prompt = [PROMPTS["single turn"]]
    free = ev.generate(model, tokenizer, prompt, max_new_tokens=4, do_sample=False, progress=False)
    first = free.completion_ids[0][0]
    with torch.no_grad():  # make the end of turn the greedy first token: twice the winner's logit
        model.lm_head.weight[end_of_turn] = 2 * model.lm_head.weight[first]
    stopped = ev.generate(model, tokenizer, prompt, max_new_tokens=4, do_sample=False, progress=False)
    assert stopped.completion_ids == [[end_of_turn]] and stopped.finished == [True]
