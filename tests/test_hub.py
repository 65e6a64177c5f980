"""Hub push up to the network boundary: which repo, which files, only after success, and the token never written.

The Hub cannot be reached here. `HfApi.create_repo` / `HfApi.upload_folder` are replaced by recorders that list
exactly what `upload_folder` would send (huggingface_hub's own pattern filter), then fail as an unreachable network
does: nothing pretends the upload worked, and the recipe must surface the failure. One test leaves the API alone and
shows the real offline error reaches the user after the weights and card are saved locally.
"""

import os
from pathlib import Path

import huggingface_hub
import pytest
import torch
from _recipe_utils import load_recipe, tiny_args, write_data
from huggingface_hub.utils import filter_repo_objects

from trl_ext import recipe

pytestmark = pytest.mark.slow  # trains the tiny model (a few steps per test)

SECRET = "hf_NotARealTokenButSecret1234567890"


class NetworkUnreachable(ConnectionError):
    pass


@pytest.fixture
def hub(monkeypatch):
    """Record create_repo/upload_folder calls (with the files that would be uploaded); uploads fail like no network."""
    calls = []

    def create_repo(self, repo_id, *, private=None, exist_ok=False, repo_type=None, **kwargs):
        calls.append({"op": "create_repo", "repo_id": repo_id, "private": private, "exist_ok": exist_ok})
        full_id = repo_id if "/" in repo_id else f"token-user/{repo_id}"  # the Hub puts a bare name under the user
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{full_id}")

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **kwargs):
        root = Path(folder_path)
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        sent = sorted(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        calls.append({"op": "upload_folder", "repo_id": repo_id, "folder": root, "files": sent, **kwargs})
        raise NetworkUnreachable("recorded at the network boundary; the Hub is not reachable from the tests")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    return calls


def _run(tmp_path, *flags):
    data = write_data("dpo", tmp_path, 40)
    return load_recipe("dpo").main(tiny_args("dpo", data, tmp_path / "out", "--eval_fraction", "0", *flags))


def _assert_no_secret(folder: Path, *texts: str):
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    for text in texts:
        assert SECRET not in text


def test_push_sends_the_adapter_and_card_once_after_training(tmp_path, hub, capsys, caplog):
    with pytest.raises(NetworkUnreachable):  # the failure reaches the user; nothing claims the push worked
        _run(tmp_path, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
             "--push_to_hub", "true", "--hub_model_id", "someone/tiny-dpo", "--hub_private_repo", "true")  # fmt: skip

    out = tmp_path / "out"
    assert [c["op"] for c in hub] == ["create_repo", "upload_folder"]  # not at start-up, not per checkpoint
    assert hub[0] == {"op": "create_repo", "repo_id": "someone/tiny-dpo", "private": True, "exist_ok": True}
    upload = hub[1]
    assert upload["repo_id"] == "someone/tiny-dpo" and upload["folder"] == out
    assert (out / "checkpoint-2").is_dir()  # present locally, but not uploaded
    assert upload["files"] == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja",
        "tokenizer.json", "tokenizer_config.json", "training_args.bin",
    ]  # fmt: skip
    # the card was written before the upload, and the token is in no file, log or output
    card = (out / "README.md").read_text()
    assert "Direct Preference Optimization" in card and "--push_to_hub true" in card
    _assert_no_secret(out, capsys.readouterr().out, capsys.readouterr().err, caplog.text)


def test_merged_model_is_what_is_pushed_with_merge_adapter(tmp_path, hub):
    with pytest.raises(NetworkUnreachable):
        _run(tmp_path, "--max_steps", "2", "--merge_adapter", "true", "--push_to_hub", "true")
    upload = hub[-1]
    assert upload["folder"] == tmp_path / "out" / "merged"
    assert hub[0]["repo_id"] == "out"  # no hub_model_id: the output folder's name, under the token's user
    assert {"model.safetensors", "config.json", "README.md", "tokenizer.json"} <= set(upload["files"])
    assert not any("adapter" in f for f in upload["files"])


def test_hub_token_flag_is_redacted_and_never_saved(tmp_path, hub, capsys):
    with pytest.raises(NetworkUnreachable):
        _run(tmp_path, "--max_steps", "2", "--push_to_hub", "true", "--hub_token", SECRET)
    out = tmp_path / "out"
    assert "--hub_token REDACTED" in (out / "README.md").read_text()
    args = torch.load(out / "training_args.bin", weights_only=False)  # what the Trainer saved (and would upload)
    assert args.hub_token is None and args.push_to_hub is False
    _assert_no_secret(out, capsys.readouterr().out)


def test_nothing_is_pushed_when_training_fails(tmp_path, hub):
    with pytest.raises(recipe.NonFiniteLossError):
        _run(tmp_path, "--max_steps", "20", "--learning_rate", "1e38", "--push_to_hub", "true")
    assert hub == []
    assert not (tmp_path / "out" / "README.md").exists()


def test_without_a_network_the_real_hub_client_fails_after_saving_locally(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(Exception, match="(?i)offline") as err:
        _run(tmp_path, "--max_steps", "2", "--push_to_hub", "true", "--hub_model_id", "someone/tiny-dpo")
    assert not isinstance(err.value, NetworkUnreachable)
    assert (tmp_path / "out" / "adapter_model.safetensors").exists() and (tmp_path / "out" / "README.md").exists()
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
