"""Other projects' layouts (dataset_builders.formats): rows in each project's exact layout load right, are detected
(or named with format=), keep or report every field, and give back each source conversation exactly; bad rows are one
`DataError` line naming the row and the field."""

import json
import random

import pytest

import dataset_builders
from dataset_builders import DataError
from dataset_builders.__main__ import main as cli
from dataset_builders.formats import BY_NAME, FORMATS


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


# (format, a row in the project's own layout, the shape, the canonical row it must become, fields to be reported)
CASES = [
    ("trl_unpaired", {"prompt": [user("The sky is")], "completion": [assistant("blue.")], "label": True},
     "binary", {"prompt": [user("The sky is")], "response": [assistant("blue.")], "label": True}, []),
    ("openai_dpo",
     {"input": {"messages": [user("Hello, can you tell me how cold San Francisco is today?")], "tools": [], "parallel_tool_calls": True},
      "preferred_output": [assistant("Today in San Francisco, it is not quite cold as expected.")],
      "non_preferred_output": [assistant("It is not particularly cold in San Francisco today.")]},
     "pairs", {"prompt": [user("Hello, can you tell me how cold San Francisco is today?")],
               "chosen": [assistant("Today in San Francisco, it is not quite cold as expected.")],
               "rejected": [assistant("It is not particularly cold in San Francisco today.")]},
     ["input.parallel_tool_calls"]),
    ("ms_swift_rlhf",
     {"messages": [system("You are a useful and harmless assistant"), user("Tell me tomorrow's weather"),
                   assistant("Tomorrow's weather will be sunny")], "rejected_response": "I don't know"},
     "pairs", {"prompt": [system("You are a useful and harmless assistant"), user("Tell me tomorrow's weather")],
               "chosen": [assistant("Tomorrow's weather will be sunny")], "rejected": [assistant("I don't know")]}, []),
    ("ms_swift_rejected_messages",
     {"system": "Be brief.", "messages": [user("Tell me tomorrow's weather"), assistant("Sunny")],
      "rejected_messages": [user("Tell me tomorrow's weather"), assistant("I don't know")]},
     "pairs", {"prompt": [system("Be brief."), user("Tell me tomorrow's weather")],
               "chosen": [assistant("Sunny")], "rejected": [assistant("I don't know")]}, []),
    ("llamafactory_alpaca_kto_label", {"instruction": "2+2?", "input": "", "output": "5", "label": False},
     "binary", {"prompt": [user("2+2?")], "response": [assistant("5")], "label": False}, []),
    ("ms_swift_query_pairs",
     {"system": "You are a useful assistant", "query": "Tell me tomorrow's weather", "response": "Sunny",
      "rejected_response": "I don't know", "history": [["Hi", "Hello"]]},
     "pairs", {"prompt": [system("You are a useful assistant"), user("Hi"), assistant("Hello"), user("Tell me tomorrow's weather")],
               "chosen": [assistant("Sunny")], "rejected": [assistant("I don't know")]}, []),
    ("ms_swift_query_kto", {"query": "What is 1 + 1?", "response": "It equals 3", "label": 0},
     "binary", {"prompt": [user("What is 1 + 1?")], "response": [assistant("It equals 3")], "label": False}, []),
    ("ms_swift_query", {"query": "Hi", "response": "Hello!", "history": [], "system": ""},
     "messages", {"messages": [user("Hi"), assistant("Hello!")]}, []),
    ("ms_swift_sharegpt_pairs",
     {"system": "Be brief.", "conversation": [{"human": "Hi", "assistant": "Hello"}, {"human": "2+2?", "assistant": "4"}], "rejected_response": "5"},
     "pairs", {"prompt": [system("Be brief."), user("Hi"), assistant("Hello"), user("2+2?")], "chosen": [assistant("4")], "rejected": [assistant("5")]}, []),
    ("ms_swift_sharegpt", {"conversation": [{"human": "Hi", "assistant": "Hello"}]},
     "messages", {"messages": [user("Hi"), assistant("Hello")]}, []),
    ("ms_swift_alpaca_pairs", {"instruction": "Tell me", "input": "the weather", "output": "Sunny", "rejected_response": "No"},
     "pairs", {"prompt": [user("Tell me\nthe weather")], "chosen": [assistant("Sunny")], "rejected": [assistant("No")]}, []),
    ("ms_swift_kto", {"messages": [user("What is 1 + 1?"), assistant("It equals 2")], "label": False},
     "binary", {"prompt": [user("What is 1 + 1?")], "response": [assistant("It equals 2")], "label": False}, []),
    ("llamafactory_kto", {"messages": [user("Hi"), assistant("Go away")], "kto_tag": False},
     "binary", {"prompt": [user("Hi")], "response": [assistant("Go away")], "label": False}, []),
    ("llamafactory_sharegpt_pairs",
     {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Capital of France?"}],
      "chosen": {"from": "gpt", "value": "Paris."}, "rejected": {"from": "gpt", "value": "Lyon."}, "system": "Be brief."},
     "pairs", {"prompt": [system("Be brief."), user("Hi"), assistant("Hello"), user("Capital of France?")],
               "chosen": [assistant("Paris.")], "rejected": [assistant("Lyon.")]}, []),
    ("llamafactory_alpaca_pairs",
     {"instruction": "Translate to French", "input": "cat", "chosen": "chat", "rejected": "chien",
      "history": [["Hi", "Hello"]], "system": "You translate."},
     "pairs", {"prompt": [system("You translate."), user("Hi"), assistant("Hello"), user("Translate to French\ncat")],
               "chosen": [assistant("chat")], "rejected": [assistant("chien")]}, []),
    ("llamafactory_alpaca_ranking", {"instruction": "2+2?", "input": "", "output": ["4", "5", "22"], "history": []},
     "ranked", {"prompt": [user("2+2?")], "responses": [[assistant("4")], [assistant("5")], [assistant("22")]],
                "ranking": [1, 2, 3]}, []),
    ("llamafactory_alpaca", {"instruction": "Give three tips.", "input": "", "output": "Eat, sleep, move.", "source": "x"},
     "messages", {"messages": [user("Give three tips."), assistant("Eat, sleep, move.")]}, ["source"]),
    ("llamafactory_sharegpt",
     {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}], "system": "Be brief.", "tools": ""},
     "messages", {"messages": [system("Be brief."), user("Hi"), assistant("Hello!")]}, []),
    ("llamafactory_v1_pairs",
     {"chosen_messages": [{"role": "user", "content": [{"type": "text", "value": "2+2?"}], "loss_weight": 0.0},
                          {"role": "assistant", "content": [{"type": "text", "value": "4"}], "loss_weight": 1.0}],
      "rejected_messages": [{"role": "user", "content": [{"type": "text", "value": "2+2?"}], "loss_weight": 0.0},
                            {"role": "assistant", "content": [{"type": "text", "value": "5"}], "loss_weight": 1.0}]},
     "pairs", {"prompt": [user("2+2?")], "chosen": [assistant("4")], "rejected": [assistant("5")]}, []),
    ("axolotl_intel", {"system": "You are helpful.", "question": "2+2?", "chosen": "4", "rejected": "5"},
     "pairs", {"prompt": [system("You are helpful."), user("2+2?")], "chosen": [assistant("4")], "rejected": [assistant("5")]}, []),
    ("axolotl_argilla", {"instruction": "2+2?", "chosen_response": "4", "rejected_response": "5", "chosen-rating": 5},
     "pairs", {"prompt": [user("2+2?")], "chosen": [assistant("4")], "rejected": [assistant("5")]}, ["chosen-rating"]),
    ("axolotl_chat_template",
     {"messages": [system("Be brief."), user("2+2?")], "chosen": assistant("4"), "rejected": assistant("5")},
     "pairs", {"prompt": [system("Be brief."), user("2+2?")], "chosen": [assistant("4")], "rejected": [assistant("5")]}, []),
    ("nectar",
     {"prompt": "\n\nHuman: What is 2+2?\n\nAssistant:", "turns": 1, "num_responses": 3, "source": ["sharegpt"], "good_natured": True,
      "answers": [{"answer": "5", "model": "m1", "rank": 3.0}, {"answer": "4", "model": "m2", "rank": 1.0}, {"answer": "four", "model": "m3", "rank": 2.0}]},
     "ranked", {"prompt": [user("What is 2+2?")], "responses": [[assistant("5")], [assistant("4")], [assistant("four")]],
                "ranking": [3, 1, 2]}, ["good_natured", "num_responses", "source", "turns"]),
    ("pku_saferlhf",
     {"prompt": "How do I pick a lock?", "response_0": "I can't help with that.", "response_1": "Use a tension wrench.",
      "is_response_0_safe": True, "is_response_1_safe": False, "better_response_id": 1, "safer_response_id": 0},
     "pairs", {"prompt": "How do I pick a lock?", "chosen": "Use a tension wrench.", "rejected": "I can't help with that."},
     ["is_response_0_safe", "is_response_1_safe", "safer_response_id"]),
    ("shp",
     {"post_id": "p1", "domain": "askculinary_train", "upvote_ratio": 0.99, "history": "What makes good dough?",
      "c_root_id_A": "a", "c_root_id_B": "b", "created_at_utc_A": 1, "created_at_utc_B": 2, "score_A": 3, "score_B": 52,
      "human_ref_A": "Flour.", "human_ref_B": "Time: let it rise overnight.", "labels": 0, "seconds_difference": 1.0, "score_ratio": 17.3},
     "pairs", {"prompt": "What makes good dough?", "chosen": "Time: let it rise overnight.", "rejected": "Flour."},
     ["c_root_id_A", "c_root_id_B", "created_at_utc_A", "created_at_utc_B", "domain", "post_id", "score_A", "score_B",
      "score_ratio", "seconds_difference", "upvote_ratio"]),
    ("alpaca_prompts", {"instruction": "Write a haiku.", "input": "about autumn"},
     "prompts", {"prompt": [user("Write a haiku.\nabout autumn")]}, []),
]  # fmt: skip


@pytest.mark.parametrize("name,row,shape,expected,unused", CASES, ids=[c[0] for c in CASES])
def test_a_row_in_the_projects_layout_is_detected_and_loads_right(tmp_path, name, row, shape, expected, unused):
    ds, report = dataset_builders.load_with_report(write_jsonl(tmp_path / "d.jsonl", [row, row]))
    assert report.format == name and report.shape == shape
    assert ds[0] == expected and ds.num_rows == 2
    assert report.unused_fields == sorted(unused)  # every field the mapping leaves out is reported
    # named explicitly, the same rows; and inspect says which layout it recognised and what it leaves out
    assert dataset_builders.load(write_jsonl(tmp_path / "d.jsonl", [row]), format=name)[0] == expected
    info = dataset_builders.inspect(tmp_path / "d.jsonl")
    assert info["format"].startswith(name) and info["unused_fields"] == sorted(unused) and info["valid_rows"] == 1


def test_every_format_has_a_case_here_and_its_own_example_loads():
    assert {c[0] for c in CASES} | {"trl_stepwise", "oasst_tree"} == set(BY_NAME)
    for fmt in FORMATS:
        if fmt.refusal:
            continue
        ds, report = dataset_builders.load_with_report([fmt.example])
        assert report.format == fmt.name and ds.num_rows >= 1, fmt.name


OASST_TREE = {
    "message_tree_id": "t1", "tree_state": "ready_for_export",
    "prompt": {"message_id": "m0", "role": "prompter", "text": "Name a prime.", "lang": "en", "replies": [
        {"message_id": "m1", "role": "assistant", "text": "7", "rank": 1, "replies": [
            {"message_id": "m3", "role": "prompter", "text": "Another?", "rank": 0, "replies": [
                {"message_id": "m5", "role": "assistant", "text": "9", "rank": 1, "replies": []},
                {"message_id": "m6", "role": "assistant", "text": "11", "rank": 0, "replies": []}]}]},
        {"message_id": "m2", "role": "assistant", "text": "2", "rank": 0, "replies": []},
        {"message_id": "m4", "role": "assistant", "text": "4", "rank": None, "replies": []}]},
}  # fmt: skip


def test_an_openassistant_tree_gives_a_ranked_group_at_every_node_with_two_ranked_replies(tmp_path):
    ds, report = dataset_builders.load_with_report(write_jsonl(tmp_path / "trees.jsonl", [OASST_TREE]), method="grpo")
    assert report.format == "oasst_tree"
    rows = ds.to_list()
    assert rows[0]["prompt"] == [user("Name a prime.")]  # the unranked reply (rank null) is not in the group
    assert rows[0]["responses"] == [[assistant("7")], [assistant("2")]] and rows[0]["ranking"] == [2, 1]
    assert rows[1]["prompt"] == [user("Name a prime."), assistant("7"), user("Another?")]  # the conversation so far
    assert rows[1]["responses"] == [[assistant("9")], [assistant("11")]] and rows[1]["ranking"] == [2, 1]
    assert len(rows) == 2
    pairs = dataset_builders.load(write_jsonl(tmp_path / "trees.jsonl", [OASST_TREE]), method="dpo")
    assert pairs[0] == {"prompt": [user("Name a prime.")], "chosen": [assistant("2")], "rejected": [assistant("7")]}


def test_trl_stepwise_supervision_is_refused_naming_it(tmp_path):
    row = {
        "prompt": "Which is larger, 9.8 or 9.11?",
        "completions": ["0.8 > 0.11.", "So 9.8."],
        "labels": [True, True],
    }
    with pytest.raises(DataError, match="stepwise-supervision.*PRMTrainer"):
        dataset_builders.load(write_jsonl(tmp_path / "s.jsonl", [row]), method="dpo")


def test_pku_saferlhf_trains_on_the_preference_the_user_picks(tmp_path):
    row = dict(CASES[[c[0] for c in CASES].index("pku_saferlhf")][1])
    path = write_jsonl(tmp_path / "pku.jsonl", [row])
    safer = dataset_builders.load(path, method="dpo", prefer="safer")[0]
    assert safer["chosen"] == "I can't help with that." and safer["rejected"] == "Use a tension wrench."
    assert dataset_builders.load(path, method="dpo")[0]["chosen"] == "Use a tension wrench."  # default: better


# ------------------------------------------------------------------------------------- misleading refusals, gone
def test_instruction_rows_are_prompts_not_a_missing_prompt(tmp_path):
    path = write_jsonl(tmp_path / "i.jsonl", [{"instruction": "Say hi", "input": ""}])
    assert dataset_builders.load(path, method="ppo")[0]["prompt"] == [user("Say hi")]


def test_shape_ultrafeedback_on_nectar_rows_names_the_format_to_use(tmp_path):
    row = CASES[[c[0] for c in CASES].index("nectar")][1]
    with pytest.raises(DataError, match=r"field 'completions'.*format=nectar"):
        dataset_builders.load(write_jsonl(tmp_path / "n.jsonl", [row]), shape="ultrafeedback")


# --------------------------------------------------------------------------------------- bad rows, one line each
@pytest.mark.parametrize(
    "name,row,field,reason",
    [
        ("ms_swift_rlhf", {"messages": [user("Hi")], "rejected_response": "x"}, "messages", "must end with the assistant"),
        ("nectar", {"prompt": "Q", "answers": [{"answer": "a", "rank": "first"}, {"answer": "b", "rank": 2}]}, "answers", "shaped differently inside"),
        ("nectar", {"prompt": "Q", "answers": [{"answer": "a", "rank": None}, {"answer": "b", "rank": 2}]}, "answers", "'rank' must be a number"),
        ("llamafactory_sharegpt_pairs", {"conversations": [{"from": "bot", "value": "x"}], "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}}, "conversations", "unknown 'from'"),
        ("openai_dpo", {"input": "Hi", "preferred_output": [assistant("a")], "non_preferred_output": [assistant("b")]}, "input", "a string here but an object"),
        ("openai_dpo", {"input": {"prompt": "Hi"}, "preferred_output": [assistant("a")], "non_preferred_output": [assistant("b")]}, "input.messages", "expected a non-empty list"),
        ("pku_saferlhf", {"prompt": "Q", "response_0": "a", "response_1": "b", "better_response_id": 2}, "better_response_id", "expected 0 or 1"),
        ("llamafactory_v1_pairs", {"chosen_messages": [{"role": "user", "content": [{"type": "image", "value": "x.png"}]}], "rejected_messages": [user("q")]}, "rejected_messages", "shaped differently inside"),
        ("llamafactory_v1_pairs", {"chosen_messages": [{"role": "user", "content": [{"type": "image", "value": "x.png"}]}], "rejected_messages": [{"role": "user", "content": [{"type": "text", "value": "q"}]}]}, "chosen_messages", "only text parts"),
    ],
)  # fmt: skip
def test_a_bad_row_is_one_line_naming_the_line_and_field(tmp_path, name, row, field, reason):
    good = BY_NAME[name].example
    path = write_jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(DataError, match=rf"line 2, field '{field}': .*{reason}") as error:
        dataset_builders.load(path)
    assert "\n" not in str(error.value)
    ds, report = dataset_builders.load_with_report(path, on_error="drop")
    assert report.dropped == 1 and ds.num_rows >= 1


def test_a_string_prompt_beside_a_conversation_in_one_column_is_named_not_a_crash(tmp_path):
    rows = [{"prompt": "\n\nHuman: Q\n\nAssistant:", "answers": [{"answer": "a", "rank": 1}, {"answer": "b", "rank": 2}]},
            {"prompt": "plain question", "answers": [{"answer": "a", "rank": 1}, {"answer": "b", "rank": 2}]}]  # fmt: skip
    with pytest.raises(DataError, match=r"line 2, field 'prompt': is str here but list in the first row"):
        dataset_builders.load(write_jsonl(tmp_path / "mixed.jsonl", rows))


# ------------------------------------------------------------------------------------------------------ columns=
def test_columns_maps_your_fields_to_ours(tmp_path):
    rows = [{"Question": "2+2?", "Good": "4", "Bad": "5", "id": 7}]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    ds = dataset_builders.load(path, method="dpo", columns={"prompt": "Question", "chosen": "Good", "rejected": "Bad"})
    assert ds[0] == {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
    with pytest.raises(
        DataError, match=r"columns: no field 'Answer' to use as 'chosen' \(fields: Question, Good, Bad, id\)"
    ):
        dataset_builders.load(path, columns={"chosen": "Answer"})


def test_the_cli_takes_format_columns_and_prefer(tmp_path, capsys):
    row = CASES[[c[0] for c in CASES].index("pku_saferlhf")][1]
    path = write_jsonl(tmp_path / "pku.jsonl", [row])
    out = tmp_path / "out.jsonl"
    assert cli(["convert", str(path), "--method", "dpo", "--prefer", "safer", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["chosen"] == "I can't help with that."
    assert cli(["inspect", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "format:   pku_saferlhf (PKU-SafeRLHF) -> pairs" in printed and "unused:   is_response_0_safe" in printed
    mapped = write_jsonl(tmp_path / "m.jsonl", [{"Q": "2+2?", "A": "4", "B": "5"}])
    assert cli(["convert", str(mapped), "--method", "dpo", "--columns", "prompt=Q,chosen=A,rejected=B", "--output", str(out)]) == 0  # fmt: skip
    assert json.loads(out.read_text()) == {"prompt": "2+2?", "chosen": "4", "rejected": "5"}


def test_recipe_arguments_take_dataset_format_and_dataset_columns(tmp_path):
    from trl_ext.recipe import RecipeArguments, load_datasets

    path = write_jsonl(tmp_path / "m.jsonl", [{"Q": "2+2?", "A": "4", "B": "5"}] * 4)
    args = RecipeArguments(dataset_path=str(path), dataset_columns="prompt=Q,chosen=A,rejected=B")
    train, _ = load_datasets(args, method="dpo")
    assert train[0] == {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
    pku = write_jsonl(tmp_path / "pku.jsonl", [CASES[[c[0] for c in CASES].index("pku_saferlhf")][1]])
    args = RecipeArguments(dataset_path=str(pku), dataset_format="pku_saferlhf", dataset_options={"prefer": "safer"})
    train, _ = load_datasets(args, method="dpo")
    assert train[0]["chosen"] == "I can't help with that." and args.data_reports[0]["format"] == "pku_saferlhf"


# ---------------------------------------------------------------------------------- property: nothing is altered
ALPHABET = ["a", "Z", " ", "\n", "\t", "é", "😀", "漢", "\u200b", "{", '"', "\\", "Human:", "\n\nAssistant:"]


def text(rng):
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 12)))


def conversation(rng):
    """A random conversation ending with a user turn (a system message sometimes first)."""
    turns = [system(text(rng))] if rng.random() < 0.3 else []
    for _ in range(rng.randint(0, 2)):
        turns += [user(text(rng)), assistant(text(rng))]
    return [*turns, user(text(rng))]


def sharegpt(messages):
    tags = {"user": "human", "assistant": "gpt", "system": "system"}
    return [{"from": tags[m["role"]], "value": m["content"]} for m in messages]


def random_row(name, rng):
    """(a random row in `name`'s layout, the prompt conversation, the chosen answer, the rejected answer)."""
    convo, a, b = conversation(rng), text(rng), text(rng)
    if name == "openai_dpo":
        return {"input": {"messages": convo}, "preferred_output": [assistant(a)], "non_preferred_output": [assistant(b)]}, convo, a, b  # fmt: skip
    if name == "ms_swift_rlhf":
        return {"messages": [*convo, assistant(a)], "rejected_response": b}, convo, a, b
    if name == "ms_swift_rejected_messages":
        return {"messages": [*convo, assistant(a)], "rejected_messages": [*convo, assistant(b)]}, convo, a, b
    if name == "llamafactory_sharegpt_pairs":
        return {"conversations": sharegpt(convo), "chosen": {"from": "gpt", "value": a}, "rejected": {"from": "gpt", "value": b}}, convo, a, b  # fmt: skip
    if name == "axolotl_chat_template":
        return {"messages": convo, "chosen": assistant(a), "rejected": assistant(b)}, convo, a, b
    if name == "llamafactory_v1_pairs":
        parts = [{"role": m["role"], "content": [{"type": "text", "value": m["content"]}]} for m in convo]
        return {"chosen_messages": [*parts, {"role": "assistant", "content": [{"type": "text", "value": a}]}],
                "rejected_messages": [*parts, {"role": "assistant", "content": [{"type": "text", "value": b}]}]}, convo, a, b  # fmt: skip
    if name == "axolotl_intel":
        sys_text, q = text(rng), text(rng)
        return {"system": sys_text, "question": q, "chosen": a, "rejected": b}, [system(sys_text), user(q)], a, b
    raise AssertionError(name)


PAIR_FORMATS = ["openai_dpo", "ms_swift_rlhf", "ms_swift_rejected_messages", "llamafactory_sharegpt_pairs", "axolotl_chat_template",
                "llamafactory_v1_pairs", "axolotl_intel"]  # fmt: skip


def random_other(name, rng):
    """(a random row in `name`'s layout, [(prompt, answer), ...] the conversations it holds, the canonical field
    names of the prompt and answers) for the layouts that are not pairs."""
    convo, a = conversation(rng), text(rng)
    if name == "ms_swift_kto":
        return {"messages": [*convo, assistant(a)], "label": rng.random() < 0.5}, [(convo, [assistant(a)])]
    if name == "llamafactory_kto":
        return {"conversations": sharegpt([*convo, assistant(a)]), "kto_tag": rng.random() < 0.5}, [(convo, [assistant(a)])]  # fmt: skip
    if name == "llamafactory_sharegpt":
        return {"conversations": sharegpt([*convo, assistant(a)])}, [([], [*convo, assistant(a)])]
    if name in ("llamafactory_alpaca_ranking", "llamafactory_alpaca", "llamafactory_alpaca_pairs"):
        history = [[text(rng), text(rng)] for _ in range(rng.randint(0, 2))]
        instruction, extra = text(rng), rng.choice(["", text(rng)])
        head = [m for q, r in history for m in (user(q), assistant(r))]
        prompt = [*head, user(f"{instruction}\n{extra}" if extra else instruction)]
        row = {"instruction": instruction, "input": extra, "history": history}
        if name == "llamafactory_alpaca":
            return {**row, "output": a}, [([], [*prompt, assistant(a)])]
        outputs = [text(rng) for _ in range(rng.randint(2, 4))]
        if name == "llamafactory_alpaca_pairs":
            return {**row, "chosen": outputs[0], "rejected": outputs[1]}, [
                (prompt, [assistant(o)]) for o in outputs[:2]
            ]
        return {**row, "output": outputs}, [(prompt, [assistant(o)]) for o in outputs]
    if name in ("ms_swift_query", "ms_swift_query_pairs", "ms_swift_query_kto"):
        history = [[text(rng), text(rng)] for _ in range(rng.randint(0, 2))]
        q, b = text(rng), text(rng)
        prompt = [*(m for h in history for m in (user(h[0]), assistant(h[1]))), user(q)]
        row = {"query": q, "response": a, "history": history}
        if name == "ms_swift_query":
            return row, [([], [*prompt, assistant(a)])]
        if name == "ms_swift_query_kto":
            return {**row, "label": True}, [(prompt, [assistant(a)])]
        return {**row, "rejected_response": b}, [(prompt, [assistant(a)]), (prompt, [assistant(b)])]
    if name in ("ms_swift_sharegpt", "ms_swift_sharegpt_pairs"):
        turns = [{"human": text(rng), "assistant": text(rng)} for _ in range(rng.randint(1, 3))]
        messages = [m for t in turns for m in (user(t["human"]), assistant(t["assistant"]))]
        if name == "ms_swift_sharegpt":
            return {"conversation": turns}, [([], messages)]
        b = text(rng)
        return {"conversation": turns, "rejected_response": b}, [(messages[:-1], messages[-1:]), (messages[:-1], [assistant(b)])]  # fmt: skip
    if name == "axolotl_argilla":
        q, b = text(rng), text(rng)
        return {"instruction": q, "chosen_response": a, "rejected_response": b}, [
            ([user(q)], [assistant(x)]) for x in (a, b)
        ]
    raise AssertionError(name)


def held(row):
    """The (prompt, answer) conversations a canonical row holds, whatever its shape."""
    if "messages" in row:
        return [([], row["messages"])]
    if "responses" in row:
        return [(row["prompt"], r) for r in row["responses"]]
    if "response" in row:
        return [(row["prompt"], row["response"])]
    return [(row["prompt"], row[k]) for k in ("chosen", "rejected")]


OTHER_FORMATS = ["ms_swift_query", "ms_swift_query_pairs", "ms_swift_query_kto", "ms_swift_sharegpt",
                 "ms_swift_sharegpt_pairs", "ms_swift_kto", "llamafactory_kto", "llamafactory_sharegpt", "llamafactory_alpaca",
                 "llamafactory_alpaca_pairs", "llamafactory_alpaca_ranking", "axolotl_argilla"]  # fmt: skip


@pytest.mark.parametrize("name", OTHER_FORMATS)
def test_every_other_layout_gives_back_each_source_conversation_exactly(tmp_path, name):
    rng = random.Random(name)
    for trial in range(40):
        row, conversations = random_other(name, rng)
        got = dataset_builders.load(write_jsonl(tmp_path / f"{trial}.jsonl", [row]), format=name)[0]
        assert [p + r for p, r in held(got)] == [p + r for p, r in conversations], (name, row)


def random_tree(rng, depth=0):
    node = {"role": "prompter" if depth % 2 == 0 else "assistant", "text": text(rng), "replies": []}
    if depth < 3:
        for k in range(rng.randint(0, 3)):
            child = random_tree(rng, depth + 1)
            child["rank"] = rng.choice([k, k, None])
            node["replies"].append(child)
    return node


def paths(node, prefix=()):
    here = (*prefix, user(node["text"]) if node["role"] == "prompter" else assistant(node["text"]))
    yield list(here)
    for reply in node["replies"]:
        yield from paths(reply, here)


def test_openassistant_groups_are_conversations_of_the_tree(tmp_path):
    rng = random.Random("oasst")
    groups = 0
    for trial in range(60):
        root = random_tree(rng)
        expected = sum(1 for n in _nodes(root) if n["role"] == "prompter" and sum(isinstance(r.get("rank"), int) for r in n["replies"]) >= 2)  # fmt: skip
        path = write_jsonl(tmp_path / f"{trial}.jsonl", [{"message_tree_id": str(trial), "prompt": root}])
        if expected == 0:
            with pytest.raises(DataError, match="no ranked rows .* two or more ranked replies"):
                dataset_builders.load(path)
            continue
        rows = dataset_builders.load(path).to_list()
        assert len(rows) == expected
        tree_paths = list(paths(root))
        for row in rows:
            for prompt, response in held(row):
                assert prompt + response in tree_paths  # every group member is a conversation of the tree
        groups += len(rows)
    assert groups > 20


def _nodes(node):
    yield node
    for reply in node["replies"]:
        yield from _nodes(reply)


@pytest.mark.parametrize("name", PAIR_FORMATS)
def test_prompt_plus_answer_gives_back_each_source_conversation_exactly(tmp_path, name):
    rng = random.Random(name)
    for trial in range(40):
        row, convo, a, b = random_row(name, rng)
        if a == b:
            continue
        ds = dataset_builders.load(write_jsonl(tmp_path / f"{trial}.jsonl", [row]), method="dpo", format=name)
        got = ds[0]
        assert got["prompt"] + got["chosen"] == [*convo, assistant(a)], (name, row)
        assert got["prompt"] + got["rejected"] == [*convo, assistant(b)], (name, row)


def test_docs_list_every_layout_with_its_example():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    for fmt in FORMATS:
        assert f"| `{fmt.name}` | {fmt.project} |" in docs, fmt.name
        assert json.dumps(fmt.example, ensure_ascii=False) in docs, fmt.name


# ------------------------------------------------------------------------------- LLaMA-Factory dataset_info.json
DATASET_INFO = {
    "dpo_en_demo": {"file_name": "dpo_en_demo.json", "ranking": True, "formatting": "sharegpt",
                    "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
    "kto_en_demo": {"file_name": "kto_en_demo.json", "formatting": "sharegpt",
                    "columns": {"messages": "messages", "kto_tag": "label"},
                    "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}},
    "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
    "orca_pairs": {"file_name": "orca.jsonl", "ranking": True,
                   "columns": {"prompt": "question", "chosen": "chosen", "rejected": "rejected", "system": "system"}},
    "comparison": {"file_name": "comparison.json", "ranking": True},
}  # fmt: skip


def test_a_llamafactory_dataset_info_entry_reads_its_file_with_its_column_map(tmp_path, capsys):
    (tmp_path / "dataset_info.json").write_text(json.dumps(DATASET_INFO))
    (tmp_path / "dpo_en_demo.json").write_text(json.dumps([{
        "conversations": [{"from": "human", "value": "Capital of France?"}],
        "chosen": {"from": "gpt", "value": "Paris."}, "rejected": {"from": "gpt", "value": "Lyon."}}]))  # fmt: skip
    (tmp_path / "kto_en_demo.json").write_text(json.dumps([
        {"messages": [{"content": "Hi", "role": "user"}, {"content": "Go away", "role": "assistant"}], "label": False}]))  # fmt: skip
    (tmp_path / "alpaca_en_demo.json").write_text(
        json.dumps([{"instruction": "Say hi", "input": "", "output": "Hi!"}])
    )
    write_jsonl(tmp_path / "orca.jsonl", [{"system": "Be brief.", "question": "2+2?", "chosen": "4", "rejected": "5"}])
    (tmp_path / "comparison.json").write_text(json.dumps([{"instruction": "2+2?", "input": "", "output": ["4", "5"]}]))
    info = tmp_path / "dataset_info.json"
    assert dataset_builders.load(info, dataset_name="dpo_en_demo", method="dpo")[0] == {
        "prompt": [user("Capital of France?")], "chosen": [assistant("Paris.")], "rejected": [assistant("Lyon.")]}  # fmt: skip
    assert dataset_builders.load(info, dataset_name="kto_en_demo", method="kto")[0] == {
        "prompt": [user("Hi")], "completion": [assistant("Go away")], "label": False}  # fmt: skip
    assert dataset_builders.load(info, dataset_name="alpaca_en_demo", method="sft")[0] == {
        "messages": [user("Say hi"), assistant("Hi!")]}  # fmt: skip
    assert dataset_builders.load(info, dataset_name="orca_pairs", method="dpo")[0] == {
        "prompt": [system("Be brief."), user("2+2?")], "chosen": [assistant("4")], "rejected": [assistant("5")]}  # fmt: skip
    assert dataset_builders.load(info, dataset_name="comparison", method="dpo")[0] == {
        "prompt": [user("2+2?")], "chosen": [assistant("4")], "rejected": [assistant("5")]}  # fmt: skip
    with pytest.raises(DataError, match=r"no entry 'nope'; entries: dpo_en_demo, kto_en_demo"):
        dataset_builders.load(info, dataset_name="nope")
    with pytest.raises(DataError, match=r"name the entry with dataset_name="):
        dataset_builders.load(info)
    assert cli(["inspect", str(info), "--dataset-name", "orca_pairs"]) == 0
    assert "format:   llamafactory_alpaca_pairs" in capsys.readouterr().out


def test_a_shape_named_on_another_projects_rows_says_which_format_reads_them(tmp_path):
    row = CASES[[c[0] for c in CASES].index("pku_saferlhf")][1]
    with pytest.raises(DataError, match=r"field 'chosen': missing .* PKU-SafeRLHF: pass format=pku_saferlhf"):
        dataset_builders.load(write_jsonl(tmp_path / "pku.jsonl", [row]), shape="pairs", method="dpo")
    swift = BY_NAME["ms_swift_rlhf"].example
    with pytest.raises(DataError, match=r"pass format=ms_swift_rlhf"):
        dataset_builders.load(write_jsonl(tmp_path / "s.jsonl", [swift]), shape="pairs")


def test_fields_a_shape_does_not_read_are_reported_too(tmp_path):
    """HuggingFaceH4/ultrafeedback_binarized rows: our pairs shape reads prompt/chosen/rejected; the rest is named."""
    convo = [user("2+2?"), assistant("4")]
    row = {"prompt": "2+2?", "prompt_id": "abc", "chosen": convo, "rejected": [user("2+2?"), assistant("5")],
           "messages": convo, "score_chosen": 9.0, "score_rejected": 2.0, "empty": None}  # fmt: skip
    path = write_jsonl(tmp_path / "ufb.jsonl", [row])
    ds, report = dataset_builders.load_with_report(path, method="dpo")
    assert report.format is None and report.shape == "pairs"
    assert report.unused_fields == ["messages", "prompt_id", "score_chosen", "score_rejected"]
    assert dataset_builders.inspect(path)["unused_fields"] == report.unused_fields


# ------------------------------------------------------------------ what the source projects do with their fields
SYSTEM = "Answer in one word."


@pytest.mark.parametrize(
    "row",
    [
        {"system": SYSTEM, "messages": [user("2+2?"), assistant("4")], "rejected_response": "5"},  # ms-swift RLHF
        {"system": SYSTEM, "instruction": "2+2?", "chosen_response": "4", "rejected_response": "5"},  # chatml.argilla
        {"system": SYSTEM, "messages": [user("2+2?"), assistant("4")], "rejected_messages": [user("2+2?"), assistant("5")]},
        {"system": SYSTEM, "conversation": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}], "rejected_response": "5"},
        {"system": SYSTEM, "conversation": [{"user": "2+2?", "bot": "4"}], "rejected_response": "5"},
        # axolotl chatml.ultra with a system: a string prompt and full conversations
        {"system": SYSTEM, "prompt": "2+2?", "chosen": [user("2+2?"), assistant("4")], "rejected": [user("2+2?"), assistant("5")]},
        # TRL's implicit prompt (conversational), with a system column
        {"system": SYSTEM, "chosen": [user("2+2?"), assistant("4")], "rejected": [user("2+2?"), assistant("5")]},
    ],
    ids=["ms_swift_rlhf", "axolotl_argilla", "ms_swift_rejected_messages", "ms_swift_conversation_from_value",
         "ms_swift_conversation_user_bot", "chatml_ultra", "trl_implicit"],
)  # fmt: skip
def test_the_system_column_heads_the_prompt_once_in_every_layout(tmp_path, row):
    for method in (None, "dpo"):
        ds, report = dataset_builders.load_with_report(write_jsonl(tmp_path / "d.jsonl", [row]), method=method)
        got = ds[0]
        assert got["prompt"] == [system(SYSTEM), user("2+2?")]  # the user turn once, the system in front
        assert (got["chosen"], got["rejected"]) == ([assistant("4")], [assistant("5")])
        assert "system" not in report.unused_fields


def test_trls_implicit_prompt_text_pairs_are_split_as_trl_splits_them(tmp_path):
    from trl.data_utils import extract_prompt

    row = {"chosen": "The sky is blue.", "rejected": "The sky is green."}
    got = dataset_builders.load(write_jsonl(tmp_path / "d.jsonl", [row]), method="dpo")[0]
    assert got == {**extract_prompt(row), "prompt": "The sky is"}
    # answers that share no opening have no prompt to find: asked for
    with pytest.raises(DataError, match="prompt.*missing"):
        dataset_builders.load(
            write_jsonl(tmp_path / "e.jsonl", [{"chosen": "Blue.", "rejected": "Green."}]), method="dpo"
        )


def test_tool_calls_are_kept_as_tool_calls(tmp_path):
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "SF"}'}}
    row = {"input": {"messages": [user("Weather in SF?")]},
           "preferred_output": [{"role": "assistant", "content": None, "tool_calls": [call]}],
           "non_preferred_output": [assistant("No idea.")]}  # fmt: skip
    got = dataset_builders.load(write_jsonl(tmp_path / "d.jsonl", [row]), method="dpo")[0]
    assert got["chosen"][0]["tool_calls"] == [call] and got["chosen"][0]["content"] == ""
    # LLaMA-Factory: a function_call turn is the assistant's call, an observation the tool's answer
    turns = [{"from": "human", "value": "Weather in SF?"},
             {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "SF"}}'},
             {"from": "observation", "value": "12 C"}, {"from": "gpt", "value": "12 degrees."}]  # fmt: skip
    tools = '[{"name": "get_weather", "parameters": {"city": {"type": "string"}}}]'
    ds, report = dataset_builders.load_with_report(
        write_jsonl(tmp_path / "s.jsonl", [{"conversations": turns, "tools": tools}]), method="sft"
    )
    messages = ds[0]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1]["tool_calls"] == [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "SF"}}}
    ]
    assert ds[0]["tools"] == tools and report.unused_fields == []  # TRL hands a tools column to the chat template


def test_tool_definitions_travel_as_the_tools_column_where_the_trainer_reads_them(tmp_path):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    row = {"input": {"messages": [user("Weather?")], "tools": tools},
           "preferred_output": [assistant("Sunny.")], "non_preferred_output": [assistant("No idea.")]}  # fmt: skip
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    for method in ("dpo", "reward"):  # OpenAI's input.tools was reported as unused and dropped
        ds, report = dataset_builders.load_with_report(path, method=method)
        assert json.loads(ds[0]["tools"]) == tools and "input.tools" not in report.unused_fields
    for method in ("kto", "grpo"):  # pairs unpaired, or a trainer that does not read them: left out, reported
        ds, report = dataset_builders.load_with_report(path, method=method)
        assert "tools" not in ds.column_names and "tools" in report.unused_fields


def test_llamafactory_preference_rows_must_end_on_a_user_turn(tmp_path):
    row = {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}],
           "chosen": {"from": "gpt", "value": "yes"}, "rejected": {"from": "gpt", "value": "no"}}  # fmt: skip
    with pytest.raises(DataError, match="line 1, field 'conversations': .*must end on a user"):
        dataset_builders.load(write_jsonl(tmp_path / "d.jsonl", [row]))


def test_a_true_false_column_under_another_name_is_named_in_the_kto_refusal(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "2+2?", "output": "4", "good": True}])
    with pytest.raises(DataError, match="good hold true/false.*--columns label=good"):
        dataset_builders.load(path, method="kto")
    assert dataset_builders.load(path, method="kto", columns={"label": "good"})[0]["label"] is True


def _oasst_reply(text, rank, **extra):
    return {"role": "assistant", "text": text, "rank": rank, "replies": [], **extra}


def test_openassistant_trees_and_messages_its_export_leaves_out_are_left_out_and_counted(tmp_path):
    replies = [_oasst_reply("4", 0), _oasst_reply("deleted", 1, deleted=True), _oasst_reply("five", 2),
               _oasst_reply("rejected in review", 3, review_result=False)]  # fmt: skip
    trees = [
        {"message_tree_id": "a", "tree_state": "ready_for_export", "prompt": {"role": "prompter", "text": "2+2?", "replies": replies}},
        {"message_tree_id": "b", "tree_state": "aborted_low_grade", "prompt": {"role": "prompter", "text": "?", "replies": replies}},
    ]  # fmt: skip
    ds, report = dataset_builders.load_with_report(write_jsonl(tmp_path / "d.jsonl", trees), method="grpo")
    assert ds.num_rows == 1 and [r[0]["content"] for r in ds[0]["responses"]] == ["4", "five"]
    assert report.skipped == {
        "OpenAssistant replies deleted or failing review (with the replies under them)": 2,
        "OpenAssistant trees not ready_for_export": 1,
    }
    assert dataset_builders.inspect(tmp_path / "d.jsonl")["left_out"] == report.skipped


def test_shp_keeps_every_pair_unless_asked_for_its_authors_score_ratio(tmp_path, capsys):
    rows = [{"history": f"Q{i}", "human_ref_A": "a", "human_ref_B": "b", "labels": 1, "score_A": a, "score_B": b,
             "score_ratio": max(a, b) / min(a, b)} for i, (a, b) in enumerate([(10, 2), (3, 2), (8, 4)])]  # fmt: skip
    path = write_jsonl(tmp_path / "shp.jsonl", rows)
    assert dataset_builders.load(path, method="dpo").num_rows == 3
    ds, report = dataset_builders.load_with_report(path, method="dpo", min_score_ratio=2)
    assert ds["prompt"] == ["Q0", "Q2"] and report.skipped == {"SHP pairs with score_ratio below min_score_ratio=2": 1}
    assert "would keep 2 of 3 pairs" in dataset_builders.inspect(path)["notes"][0]
    with pytest.raises(ValueError, match="min_score_ratio"):
        dataset_builders.load(path, min_score_ratio=0.5)
