"""LengthAwareIPOTrainer on the tiny model: TRL's IPO in the limit case, every variant's plumbing, lengths through
TRL's data pipeline, clear errors, and (slow) a learning test on a length-confounded synthetic task."""

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from torch.testing import assert_close
from transformers import AutoModelForCausalLM
from trl import DPOConfig, DPOTrainer, TrlParser

from trl_ext import LengthAwareIPOConfig, LengthAwareIPOTrainer
from trl_ext.ipo import auto_length_penalty, length_aware_ipo_loss, relative_length_difference
from trl_ext.toy.synthetic import ToyTask, quality

BETA = 0.5


def _args(tmp_path, config_class=LengthAwareIPOConfig, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        beta=BETA,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        per_device_train_batch_size=4,
        save_strategy="no",
        seed=0,
    )
    return config_class(**{**kwargs, **overrides})


def _pairs(n=16, gamma=1.5, **task):
    return Dataset.from_list(ToyTask(gamma=gamma, **task).rows("pairs_with_lengths", n))


def _perturb_trainable(model, scale=0.05):
    """Move the policy away from the reference, the same way in every trainer, so log-ratios are not all zero."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
            p.add_(torch.randn(p.shape, generator=generator) * scale)


def _loss_and_grads(trainer, examples):
    trainer.model.train()
    trainer.model.zero_grad()
    inputs = trainer._prepare_inputs(trainer.data_collator(examples))
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.mark.parametrize("reference", ["ref_model", "peft", "precomputed"])
@pytest.mark.parametrize("length_source", ["declared", "tokens"])
def test_limit_case_equals_trl_ipo(tiny_model_path, tmp_path, reference, length_source):
    """mean normalization, no length penalty, no ld_alpha: same loss and gradients as DPOTrainer(loss_type=["ipo"])."""
    dataset = _pairs()
    extra = {"precompute_ref_log_probs": True} if reference == "precomputed" else {}
    peft = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if reference == "peft" else None
    trl_trainer = DPOTrainer(
        str(tiny_model_path),
        args=_args(tmp_path, DPOConfig, loss_type=["ipo"], **extra),
        train_dataset=dataset,
        peft_config=peft,
    )
    ours = LengthAwareIPOTrainer(
        str(tiny_model_path),
        args=_args(tmp_path, length_source=length_source, **extra),
        train_dataset=dataset,
        peft_config=peft,
    )
    assert (ours.ref_model is None) == (reference != "ref_model")
    for trainer in (trl_trainer, ours):
        _perturb_trainable(trainer.model)
    examples = [ours.train_dataset[i] for i in range(8)]  # carries the TRL columns too: the same batch for both
    trl_loss, trl_grads = _loss_and_grads(trl_trainer, examples)
    our_loss, our_grads = _loss_and_grads(ours, examples)

    assert trl_loss > 0
    assert_close(our_loss, trl_loss)
    assert trl_grads.keys() == our_grads.keys() and trl_grads
    for name in trl_grads:
        assert_close(our_grads[name], trl_grads[name], msg=name)
    # TRL's metrics are still logged, ours beside them
    metrics = ours._metrics["train"]
    assert_close(
        torch.tensor(metrics["rewards/margins"]), torch.tensor(trl_trainer._metrics["train"]["rewards/margins"])
    )
    assert metrics["ipo/target"] == [pytest.approx(1 / (2 * BETA))]


def _independent_expected_loss(trainer, reference_model, examples, raw_rows, **cfg):
    """The loss computed without TRL's machinery: plain forwards, per-pair loops, then the (hand-tested) pure loss."""
    batch = trainer.data_collator(examples)
    labels = batch["input_ids"][:, 1:]
    mask = batch["completion_mask"][:, 1:].bool()

    def per_token(model):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels[..., None])[..., 0]

    logratio = per_token(trainer.model) - per_token(reference_model)
    n_pairs = len(examples)
    sums, counts = torch.zeros(2 * n_pairs), torch.zeros(2 * n_pairs)
    for i in range(n_pairs):
        rows = (i, n_pairs + i)  # chosen row, rejected row
        shared = min(int(mask[r].sum()) for r in rows)
        for r in rows:
            tokens = logratio[r][mask[r]]
            weight = torch.ones(len(tokens))
            if cfg["ld_alpha"] is not None:
                weight[shared:] = cfg["ld_alpha"]  # LD-DPO: tokens past the shorter completion's length
            sums[r], counts[r] = (tokens * weight).sum(), weight.sum()
    s_w, s_l, n_w, n_l = sums[:n_pairs], sums[n_pairs:], counts[:n_pairs], counts[n_pairs:]
    if cfg["length_source"] == "tokens":
        lengths = mask.sum(dim=1).float()
        l_w, l_l = lengths[:n_pairs], lengths[n_pairs:]
    elif cfg["length_source"] == "chars":
        l_w = torch.tensor([float(len(r["chosen"])) for r in raw_rows])
        l_l = torch.tensor([float(len(r["rejected"])) for r in raw_rows])
    else:
        l_w = torch.tensor([float(r["chosen_length"]) for r in raw_rows])
        l_l = torch.tensor([float(r["rejected_length"]) for r in raw_rows])
    out = length_aware_ipo_loss(
        s_w,
        s_l,
        n_w,
        n_l,
        l_w,
        l_l,
        beta=BETA,
        length_penalty=trainer.length_penalty,
        normalization=cfg["length_normalization"],
    )
    return out.losses.mean()


VARIANTS = [
    dict(length_normalization="mean", length_penalty=0.7, length_source="declared", ld_alpha=None),
    dict(length_normalization="sum", length_penalty=0.3, length_source="tokens", ld_alpha=0.5),
    dict(length_normalization="pair_mean", length_penalty="auto", length_source="chars", ld_alpha=0.0),
    dict(length_normalization="mean", length_penalty=0.0, length_source="declared", ld_alpha=0.5),
]


@pytest.mark.parametrize("cfg", VARIANTS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_every_variant_matches_an_independent_computation(tiny_model_path, tmp_path, cfg):
    dataset = _pairs()
    trainer = LengthAwareIPOTrainer(str(tiny_model_path), args=_args(tmp_path, **cfg), train_dataset=dataset)
    _perturb_trainable(trainer.model)
    n = 6
    examples = [trainer.train_dataset[i] for i in range(n)]
    loss, _ = _loss_and_grads(trainer, examples)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    with torch.no_grad():
        expected = _independent_expected_loss(trainer, reference, examples, [dataset[i] for i in range(n)], **cfg)
    assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    if cfg["length_penalty"] == "auto":
        rows = dataset.to_list()
        d = relative_length_difference(
            torch.tensor([float(len(r["chosen"])) for r in rows]),
            torch.tensor([float(len(r["rejected"])) for r in rows]),
        )
        assert trainer.length_penalty == pytest.approx(float(d.mean() / (d**2).mean()) / (2 * BETA), rel=1e-5)
        assert trainer.length_penalty > 0  # winners are longer in the gamma=1.5 data


def test_lengths_survive_tokenization_and_collation(tiny_model_path, tmp_path):
    dataset = _pairs(8)
    trainer = LengthAwareIPOTrainer(str(tiny_model_path), args=_args(tmp_path), train_dataset=dataset)
    kept = trainer._remove_unused_columns(trainer.train_dataset)
    assert set(kept.column_names) == {"prompt_ids", "chosen_ids", "rejected_ids", "chosen_length", "rejected_length"}
    batch = trainer.data_collator([kept[i] for i in range(4)])
    assert_close(batch["chosen_length"], torch.tensor([float(r["chosen_length"]) for r in dataset.to_list()[:4]]))
    assert_close(batch["rejected_length"], torch.tensor([float(r["rejected_length"]) for r in dataset.to_list()[:4]]))
    assert batch["input_ids"].shape[0] == 8  # TRL's collation is untouched: chosen rows then rejected rows
    loader_batch = next(iter(trainer.get_train_dataloader()))
    assert loader_batch["chosen_length"].shape == (4,)


def test_missing_declared_lengths_is_a_clear_error(tiny_model_path, tmp_path):
    plain = Dataset.from_list(ToyTask(gamma=1.5).rows("pairs", 8))
    with pytest.raises(ValueError, match=r"length_source='declared' needs the columns .*length_source to 'tokens'"):
        LengthAwareIPOTrainer(str(tiny_model_path), args=_args(tmp_path), train_dataset=plain)
    # plain pairs work with lengths measured from the data
    trainer = LengthAwareIPOTrainer(
        str(tiny_model_path), args=_args(tmp_path, length_source="tokens"), train_dataset=plain
    )
    assert "chosen_length" not in trainer.train_dataset.column_names


def test_bad_declared_length_names_the_row(tiny_model_path, tmp_path):
    rows = ToyTask(gamma=1.5).rows("pairs_with_lengths", 5)
    rows[2]["rejected_length"] = -3
    with pytest.raises(ValueError, match=r"train dataset, row 3: `rejected_length` must be a non-negative number"):
        LengthAwareIPOTrainer(str(tiny_model_path), args=_args(tmp_path), train_dataset=Dataset.from_list(rows))


def test_chars_counts_completion_text_of_conversational_rows(tiny_model_path, tmp_path):
    rows = ToyTask(gamma=1.5, conversational=True).rows("pairs", 6)
    trainer = LengthAwareIPOTrainer(
        str(tiny_model_path), args=_args(tmp_path, length_source="chars"), train_dataset=Dataset.from_list(rows)
    )
    assert trainer.train_dataset["chosen_length"][:6] == [len(r["chosen"][0]["content"]) for r in rows]


def test_auto_length_penalty_is_about_zero_without_a_confound(tiny_model_path, tmp_path):
    args = _args(tmp_path, length_penalty="auto")
    confounded = LengthAwareIPOTrainer(str(tiny_model_path), args=args, train_dataset=_pairs(400, gamma=1.5))
    clean = LengthAwareIPOTrainer(str(tiny_model_path), args=args, train_dataset=_pairs(400, gamma=0.0))
    assert confounded.length_penalty > 0.3
    assert abs(clean.length_penalty) < 0.1


@pytest.mark.parametrize(("truncation_mode", "max_length"), [("keep_start", 40), ("keep_end", 12)])
def test_auto_length_penalty_uses_the_token_counts_the_loss_sees(
    tiny_model_path, tmp_path, truncation_mode, max_length
):
    # max_length cuts many completions: the per-batch term counts truncated tokens, so must `auto`
    args = _args(tmp_path, length_penalty="auto", length_source="tokens", max_length=max_length,
                 truncation_mode=truncation_mode)  # fmt: skip
    data = _pairs(64, gamma=1.5).remove_columns(["chosen_length", "rejected_length"])
    trainer = LengthAwareIPOTrainer(str(tiny_model_path), args=args, train_dataset=data)
    batch = trainer.data_collator(list(trainer.train_dataset))
    chosen, rejected = batch["completion_mask"][:, 1:].sum(dim=1).chunk(2)  # what _compute_loss uses per pair
    expected = auto_length_penalty(relative_length_difference(chosen, rejected), BETA)
    assert trainer.length_penalty == pytest.approx(expected)
    untruncated = relative_length_difference(
        torch.tensor([len(x) for x in trainer.train_dataset["chosen_ids"]]),
        torch.tensor([len(x) for x in trainer.train_dataset["rejected_ids"]]),
    )
    assert auto_length_penalty(untruncated, BETA) != pytest.approx(expected)  # truncation matters in this set-up


def test_training_logs_trl_and_length_metrics_and_evaluates(tiny_model_path, tmp_path):
    dataset = _pairs(16)
    args = _args(tmp_path, length_penalty=0.5, max_steps=3, logging_steps=1, learning_rate=1e-3)
    trainer = LengthAwareIPOTrainer(str(tiny_model_path), args=args, train_dataset=dataset, eval_dataset=_pairs(8))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = trainer.state.log_history[0]
    for key in ("loss", "rewards/margins", "logps/chosen", "length/chosen_minus_rejected", "ipo/target", "ipo/margin"):
        assert key in logs, key
    # 1/(2*0.5) - 0.5 * mean(d) with d > 0 on average in the length-confounded data
    assert logs["ipo/target"] == pytest.approx(1.0 - 0.5 * logs["length/relative_difference"], abs=1e-6)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    metrics = trainer.evaluate()
    assert "eval_ipo/target" in metrics and "eval_rewards/margins" in metrics


def test_precomputed_reference_and_evaluate_on_a_new_dataset(tiny_model_path, tmp_path):
    args = _args(tmp_path, precompute_ref_log_probs=True, length_penalty=0.2, max_steps=1)
    peft = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])  # TRL recomputes a PEFT reference only
    trainer = LengthAwareIPOTrainer(str(tiny_model_path), args=args, train_dataset=_pairs(8), peft_config=peft)
    trainer.train()
    # evaluate() tokenizes and precomputes the reference through our collator; the lengths must not reach the model
    metrics = trainer.evaluate(_pairs(8, seed=5))
    assert "eval_length/relative_difference" in metrics


def test_config_parses_length_penalty_from_the_command_line_and_validates():
    def parse(*argv):
        argv = ["--output_dir", "o", "--use_cpu", "--bf16", "false", *argv]
        return TrlParser(LengthAwareIPOConfig).parse_args_into_dataclasses(argv)[0]

    assert parse("--length_penalty", "auto").length_penalty == "auto"
    assert parse("--length_penalty", "0.25").length_penalty == 0.25
    cfg = parse("--length_normalization", "pair_mean", "--length_source", "tokens")
    assert (cfg.length_normalization, cfg.length_source, cfg.loss_type, cfg.length_penalty) == (
        "pair_mean",
        "tokens",
        ["ipo"],
        0.0,
    )
    for argv, message in [
        (("--length_penalty", "long"), "number or 'auto'"),
        (("--length_normalization", "median"), "length_normalization"),
        (("--length_source", "words"), "length_source"),
        (("--loss_type", "sigmoid"), "must be \\['ipo'\\]"),
        (("--ld_alpha", "2"), "ld_alpha"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse(*argv)


def test_trainer_refuses_a_plain_dpo_config(tiny_model_path, tmp_path):
    with pytest.raises(TypeError, match="LengthAwareIPOConfig"):
        LengthAwareIPOTrainer(str(tiny_model_path), args=_args(tmp_path, DPOConfig), train_dataset=_pairs(4))


# --- learning test -----------------------------------------------------------------------------------------------


@torch.no_grad()
def _implicit_rewards(model, reference, tokenizer, prompts, completions):
    """Mean per-token log-ratio (what IPO with "mean" trains) of each completion; EOS appended as TRL does."""
    out = []
    for prompt, completion in zip(prompts, completions):
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = torch.tensor([tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]])
        logps = [
            torch.log_softmax(m(ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[len(prompt_ids) - 1 :, 0]
            for m in (model, reference)
        ]
        out.append(float((logps[0] - logps[1]).mean()))
    return torch.tensor(out)


def _length_and_content_effects(model, reference, tokenizer, pairs):
    """Regress each held-out response's implicit reward on its quality and standardized length; pairwise accuracy
    against the true quality, on all pairs and on pairs where the better answer is the shorter one."""
    task = ToyTask()
    completions = [c for r in pairs for c in (r["chosen"], r["rejected"])]
    prompts = [r["prompt"] for r in pairs for _ in range(2)]
    reward = _implicit_rewards(model, reference, tokenizer, prompts, completions)
    q = torch.tensor([quality(c) for c in completions])
    z = torch.tensor([task.z_length(c) for c in completions])
    design = torch.stack([torch.ones_like(q), q, z], dim=1)
    _, content, length = torch.linalg.lstsq(design, reward[:, None]).solution[:, 0].tolist()
    first_better = q[0::2] > q[1::2]
    differ = q[0::2] != q[1::2]
    right = (reward[0::2] > reward[1::2]) == first_better
    better_is_shorter = torch.where(first_better, z[0::2] < z[1::2], z[1::2] < z[0::2]) & differ
    return {
        "length_effect": length,
        "content_effect": content,
        "accuracy": right[differ].float().mean().item(),
        "accuracy_shorter_better": right[better_is_shorter].float().mean().item(),
    }


@pytest.mark.slow
def test_length_aware_ipo_keeps_content_and_cuts_the_length_effect(tiny_model_path, tmp_path):
    """Train on length-confounded pairs (gamma=1.5: winners are better *and* longer); read out on held-out prompts
    (test split) with a clean annotator (gamma=0), where length carries no signal."""
    train = _pairs(512, gamma=1.5, seed=0)
    held_out = ToyTask(gamma=0.0, seed=1).rows("pairs", 300, split="test")
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    results = {}
    for name, penalty in (("plain IPO", 0.0), ("length-aware IPO", "auto")):
        args = _args(
            tmp_path,
            length_penalty=penalty,
            learning_rate=1e-3,
            lr_scheduler_type="constant",
            num_train_epochs=2,
            per_device_train_batch_size=16,
            logging_steps=1000,
        )
        trainer = LengthAwareIPOTrainer(str(tiny_model_path), args=args, train_dataset=train)
        trainer.train()
        results[name] = _length_and_content_effects(
            trainer.model.eval(), reference, trainer.processing_class, held_out
        )
        results[name]["alpha"] = trainer.length_penalty
    print("\n" + "\n".join(f"{k}: {v}" for k, v in results.items()))
    plain, aware = results["plain IPO"], results["length-aware IPO"]
    # Plain IPO learns the content rule but also raises the implicit reward of longer answers...
    assert plain["content_effect"] > 0.3 and plain["length_effect"] > 0.1
    # ...the length-aware variant keeps the content preference while cutting most of that length effect
    assert abs(aware["length_effect"]) < 0.35 * plain["length_effect"]
    assert aware["content_effect"] > 0.5 * plain["content_effect"]
    assert aware["accuracy"] >= plain["accuracy"] - 0.02 and aware["accuracy"] > 0.85
    assert aware["accuracy_shorter_better"] > plain["accuracy_shorter_better"] + 0.15


# --- recipe ------------------------------------------------------------------------------------------------------


@pytest.fixture
def ipo_recipe(monkeypatch):
    """recipes/ipo.py, run in-process from the repository root, with a ParamSnapshot among its callbacks."""
    from _recipe_utils import REPO_ROOT, ParamSnapshot, load_recipe

    from trl_ext import recipe

    snapshot = ParamSnapshot()
    default = recipe.callbacks
    monkeypatch.setattr(recipe, "callbacks", lambda: [*default(), snapshot])
    monkeypatch.chdir(REPO_ROOT)
    return load_recipe("ipo"), snapshot


def _tiny_recipe_args(data, out, *flags):
    from _recipe_utils import tiny_args

    return tiny_args("ipo", data, out, "--max_steps", "3", "--eval_fraction", "0.25", *flags)


def test_recipe_tiny_config_on_pairs_with_lengths(ipo_recipe, tmp_path, tiny_model_path):
    module, snapshot = ipo_recipe
    out = module.main(_tiny_recipe_args("recipes/data/pairs_with_lengths.jsonl", tmp_path / "out"))
    assert (out / "adapter_model.safetensors").exists()
    assert snapshot.before and snapshot.changed() == list(snapshot.before)
    train_logs = [log for log in snapshot.logs if "loss" in log]
    assert len(train_logs) == 3 and all("ipo/target" in log and "rewards/margins" in log for log in train_logs)
    card = (out / "README.md").read_text()
    assert "2310.12036" in card and "| beta | 0.5 |" in card and "length_penalty_used" in card
    assert "eval_length/relative_difference" in card  # the eval split went through the length pipeline too


def test_recipe_runs_on_plain_pairs_with_token_lengths(ipo_recipe, tmp_path, tiny_model_path):
    module, snapshot = ipo_recipe
    flags = ("--length_source", "tokens", "--length_penalty", "0.3", "--length_normalization", "pair_mean")
    out = module.main(_tiny_recipe_args("recipes/data/pairs.jsonl", tmp_path / "out", *flags))
    assert (out / "adapter_model.safetensors").exists() and snapshot.changed()
    log = next(log for log in snapshot.logs if "loss" in log)
    # tokens: lengths differ from the word counts; the target moved by 0.3 * d
    assert log["ipo/target"] == pytest.approx(1.0 - 0.3 * log["length/relative_difference"], abs=1e-6)
    # the default length_source (declared) on plain pairs: a clear error, before any training
    with pytest.raises(ValueError, match="chosen_length"):
        module.main(_tiny_recipe_args("recipes/data/pairs.jsonl", tmp_path / "out2"))
