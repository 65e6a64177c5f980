"""The engines on two CPU processes (gloo), each against DDP on the same data and seed: FSDP2
(`fsdp_cpu_2proc.yaml`) and DeepSpeed ZeRO-3 (`zero3_cpu_2proc.yaml`) shard the parameters, log what each rank holds,
train to the same losses and weights as DDP (`cpu_2proc.yaml`), and save once. Also what `trl_ext.engines` refuses.

What a GPU adds (NCCL, bf16 mixed precision, CPU offload) cannot run here; docs/recipes.md says what was seen where.
"""

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from _recipe_utils import RECIPES, REPO_ROOT, write_data
from safetensors.torch import load_file

from trl_ext import engines

DDP, FSDP, ZERO3 = "cpu_2proc", "fsdp_cpu_2proc", "zero3_cpu_2proc"
# Not anchored to line starts: the two ranks share one pipe, and a rank's block-buffered output can end mid-line
# where the other's report lands (CI once saw neither report at a line start).
HOLDS = re.compile(r"(FSDP|DeepSpeed ZeRO-3): rank (\d+) holds ([\d,]+) of ([\d,]+) parameters")


@dataclass
class Run:
    output: str
    output_dir: Path
    saves: list[str]  # "<rank> <folder>" for every PeftModel.save_pretrained call

    @property
    def losses(self) -> list[float]:
        return [float(v) for v in re.findall(r"'loss': '([^']+)'", self.output)]

    def holds(self) -> dict[int, tuple[str, int, int]]:
        """rank -> (engine, parameters held, parameters in all), from the lines each rank logs."""
        return {
            int(r): (e, int(n.replace(",", "")), int(m.replace(",", ""))) for e, r, n, m in HOLDS.findall(self.output)
        }

    def weights(self, name: str = "adapter_model.safetensors") -> dict:
        return load_file(self.output_dir / name)


def launch(engine: str, script: str, flags: list[str], tmp_path: Path) -> Run:
    """`accelerate launch --config_file recipes/accelerate_configs/<engine>.yaml recipes/<script>.py <flags>`."""
    folder = tmp_path / engine
    folder.mkdir(parents=True)
    site = folder / "site"
    site.mkdir()
    saves = folder / "saves.txt"
    (site / "sitecustomize.py").write_text(
        textwrap.dedent(f"""
        import os, peft
        _orig = peft.PeftModel.save_pretrained
        def _record(self, *args, **kwargs):
            with open({str(saves)!r}, "a") as f:
                f.write(os.environ.get("RANK", "?") + " " + str(args[0] if args else "") + "\\n")
            return _orig(self, *args, **kwargs)
        peft.PeftModel.save_pretrained = _record
    """)
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"  # each print reaches the shared pipe whole, not in 8 KB blocks cut mid-line
    env.pop("CUDA_VISIBLE_DEVICES", None)
    use_cpu = "false" if engine == ZERO3 else "true"  # DeepSpeed picks its CPU accelerator itself
    out = folder / "out"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", f"recipes/accelerate_configs/{engine}.yaml",
        f"recipes/{script}.py", *flags, "--output_dir", str(out), "--use_cpu", use_cpu, "--logging_steps", "1",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return Run(output, out, saves.read_text().split("\n")[:-1] if saves.exists() else [])


def assert_sharded(run: Run, engine: str) -> None:
    """Both ranks logged once; each holds part of the parameters, the two parts make the whole."""
    lines = HOLDS.findall(run.output)
    assert len(lines) == 2, (
        "\n".join(line for line in run.output.splitlines() if "holds" in line) or run.output[-3000:]
    )
    holds = run.holds()
    assert sorted(holds) == [0, 1]
    assert {e for e, _, _ in holds.values()} == {engine}
    total = holds[0][2]
    assert holds[1][2] == total and holds[0][1] + holds[1][1] == total
    assert 0 < holds[0][1] < total and 0 < holds[1][1] < total


def test_rank_reports_are_found_where_the_other_rank_s_output_ends_mid_line():
    output = (
        "{'loss': '0.69', 'grad_norm': '1.2'}\n{'loss': '0.6DeepSpeed ZeRO-3: rank 0 holds 1,000 of 3,000 parameters\n"
        "8'}\nwarning: deprecated DeepSpeed ZeRO-3: rank 1 holds 2,000 of 3,000 parameters\n"
    )
    assert Run(output, Path("."), []).holds() == {
        0: ("DeepSpeed ZeRO-3", 1000, 3000),
        1: ("DeepSpeed ZeRO-3", 2000, 3000),
    }


def assert_same_training(run: Run, ddp: Run, weights: str = "adapter_model.safetensors") -> None:
    assert len(run.losses) == len(ddp.losses) >= 3
    assert run.losses == pytest.approx(ddp.losses, rel=1e-3, abs=1e-4)
    got, want = run.weights(weights), ddp.weights(weights)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        assert (got[name] - want[name]).abs().max().item() < 1e-5, name
    assert any(w.abs().max().item() > 0 for n, w in want.items() if "lora_B" in n)  # trained (LoRA B starts at 0)


def dpo_flags(tmp_path: Path, *extra: str) -> list[str]:
    data = write_data("dpo", tmp_path, 64)
    return ["--config", str(RECIPES / "configs/dpo/tiny-cpu.yaml"), "--dataset_path", str(data),
            "--max_steps", "4", "--eval_fraction", "0", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def ddp_dpo(tmp_path_factory) -> Run:
    tmp = tmp_path_factory.mktemp("ddp_dpo")
    return launch(DDP, "dpo", dpo_flags(tmp), tmp)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_dpo_under_fsdp2_on_cpu_shards_trains_as_ddp_and_saves_once(tmp_path, ddp_dpo):
    run = launch(FSDP, "dpo", dpo_flags(tmp_path), tmp_path)
    assert_sharded(run, "FSDP")
    assert "reducer" not in run.output  # DDP's reducer: the silent fallback accelerate takes on its own
    assert not HOLDS.search(ddp_dpo.output)
    assert_same_training(run, ddp_dpo)
    assert run.saves == [f"0 {run.output_dir}"]
    assert "| num_processes | 2 |" in (run.output_dir / "README.md").read_text()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_dpo_under_deepspeed_zero3_on_cpu_shards_and_trains_as_ddp(tmp_path, ddp_dpo):
    pytest.importorskip("deepspeed", reason="DeepSpeed is in the test extra; this install lacks it")
    run = launch(ZERO3, "dpo", dpo_flags(tmp_path), tmp_path)
    assert_sharded(run, "DeepSpeed ZeRO-3")
    assert_same_training(run, ddp_dpo)
    assert run.saves == [f"0 {run.output_dir}"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ranked_grpo_under_fsdp2_on_cpu_trains_as_ddp(tmp_path):
    flags = ["--config", str(RECIPES / "configs/grpo/tiny-cpu.yaml"), "--max_steps", "3", "--eval_fraction", "0"]
    ddp, fsdp = (launch(engine, "grpo", flags, tmp_path) for engine in (DDP, FSDP))
    assert_sharded(fsdp, "FSDP")
    assert_same_training(fsdp, ddp)
    assert fsdp.saves == [f"0 {fsdp.output_dir}"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ppo_under_fsdp2_on_cpu_trains_as_ddp_and_saves_the_whole_value_head(tmp_path):
    # The critic's head is sharded too; saving it from rank 0's shard failed ("invalid python storage").
    flags = ["--config", str(RECIPES / "configs/ppo/tiny-cpu.yaml"), "--max_steps", "3"]
    ddp, fsdp = (launch(engine, "ppo", flags, tmp_path) for engine in (DDP, FSDP))
    assert_sharded(fsdp, "FSDP")
    assert_same_training(fsdp, ddp)
    head, want = fsdp.weights("value_head.safetensors"), ddp.weights("value_head.safetensors")
    assert {k: v.shape for k, v in head.items()} == {k: v.shape for k, v in want.items()}
    assert all((head[k] - want[k]).abs().max().item() < 1e-6 for k in want)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_qlora_under_fsdp2_on_cpu_shards_the_4bit_weights_and_trains_as_ddp(tmp_path):
    # FSDP shards the packed 4-bit weights when they are stored in the compute dtype (bnb_4bit_quant_storage).
    flags = dpo_flags(tmp_path, "--load_in_4bit", "true", "--bnb_4bit_quant_storage", "float32")
    ddp, fsdp = (launch(engine, "dpo", flags, tmp_path) for engine in (DDP, FSDP))
    assert_sharded(fsdp, "FSDP")
    assert "Params4bit" not in fsdp.output  # accelerate's warning when 4-bit weights are left out of sharding
    assert_same_training(fsdp, ddp)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_online_grpo_with_a_reward_model_under_deepspeed_zero3_on_cpu_scores_as_ddp(tmp_path, tiny_model_path):
    # Under ZeRO-3 the reward model is partitioned at load time: unprepared, its first forward failed
    # ("'weight' must be 2-D"). The scorer now places it as TRL places reward models.
    pytest.importorskip("deepspeed", reason="DeepSpeed is in the test extra; this install lacks it")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    reward = tmp_path / "reward"
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(reward)
    tok.save_pretrained(reward)
    flags = ["--config", str(RECIPES / "configs/grpo/tiny-cpu-online.yaml"), "--max_steps", "3",
             "--eval_fraction", "0", "--reward_model_path", str(reward)]  # fmt: skip
    ddp, zero3 = (launch(engine, "grpo", flags, tmp_path) for engine in (DDP, ZERO3))
    assert_sharded(zero3, "DeepSpeed ZeRO-3")
    rewards = [re.findall(r"'reward': '([^']+)'", run.output) for run in (ddp, zero3)]
    assert len(rewards[0]) == 3 and rewards[0] == rewards[1]
    assert_same_training(zero3, ddp)


# --------------------------------------------------------------------------------- refusals (fast, one process)
def test_configure_is_a_no_op_in_a_plain_process(monkeypatch):
    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert engines.configure(SimpleNamespace(bf16=False, fp16=False)) is None


def test_configure_refuses_processes_that_would_each_train_alone(monkeypatch):
    # `accelerate launch` of 2 processes with use_cpu false and no GPU: accelerate starts no process group.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    with pytest.raises(ValueError, match=r"started 2 processes .* On CPUs set use_cpu: true"):
        engines.configure(SimpleNamespace(bf16=False, fp16=False))


def test_configure_refuses_deepspeed_on_use_cpu_processes(monkeypatch):
    import accelerate
    from accelerate.utils import DistributedType

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    fake = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, num_processes=2, backend="gloo")
    monkeypatch.setattr(accelerate, "PartialState", lambda: fake)
    with pytest.raises(ValueError, match="DeepSpeed on CPU processes needs use_cpu: false"):
        engines.configure(SimpleNamespace(bf16=False, fp16=False))


def test_online_grpo_refuses_to_train_its_reward_model_under_deepspeed(monkeypatch, tmp_path):
    from trl_ext.ranked_grpo.reward_model import reward_model_for

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    args = SimpleNamespace(output_dir=str(tmp_path), resume_from_checkpoint=None)
    with pytest.raises(ValueError, match="train it first .* reward_model_path"):
        reward_model_for(None, args, None, SimpleNamespace(reward_model_path=None), None)


def test_qlora_under_fsdp_without_quant_storage_is_refused_naming_the_compute_dtype(monkeypatch):
    from trl import ModelConfig

    from trl_ext import models

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    model_args = ModelConfig(
        model_name_or_path="trl-ext/tiny-llama", load_in_4bit=True, use_peft=True, dtype="float32"
    )
    with pytest.raises(ValueError, match="bnb_4bit_quant_storage: float32"):
        models.load_model(model_args, SimpleNamespace(fsdp=None, use_cpu=True, trust_remote_code=False))
