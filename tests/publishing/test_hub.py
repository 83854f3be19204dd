"""`spiking-lm push` against a local fake Hub, then `from_pretrained(REPO_ID, trust_remote_code=True)` back."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_hub import FakeHub
from transformers import AutoModelForCausalLM

from spiking_lm.publishing.hub import push_folder

REPO = Path(__file__).resolve().parents[2]
DOWNLOAD = """
import json, sys, torch
sys.modules["spiking_lm"] = None  # load through the repo's own code, as a user without spiking_lm would
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("someone/tiny-bispikclm", trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(torch.tensor([[5, 6, 7, 8, 9]])).logits
print(json.dumps(logits.flatten().tolist()))
"""


def hub_environment(hub, home):
    return {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_dummy",
            "HF_HOME": str(home), "HF_HUB_DISABLE_XET": "1"}  # fmt: skip


def test_push_uploads_the_model_and_from_pretrained_downloads_identical_logits(student_folder, tmp_path):
    folder = tmp_path / "model"
    subprocess.run(["cp", "-r", str(student_folder), str(folder)], check=True)
    (folder / "training_args.bin").write_bytes(b"pickle")  # must never be uploaded
    (folder / "checkpoint-5").mkdir()
    (folder / "checkpoint-5" / "model.safetensors").write_bytes(b"old")
    with FakeHub() as hub:
        env = hub_environment(hub, tmp_path / "home")
        push = [sys.executable, "-m", "spiking_lm.cli", "push", str(folder), "someone/tiny-bispikclm"]
        result = subprocess.run(push, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "pushed" in result.stdout
        files = hub.repos["someone/tiny-bispikclm"]["files"]
        assert {"config.json", "model.safetensors", "modeling_bispikclm.py", "neurons.py", "tokenizer.json",
                "README.md"} <= set(files)  # fmt: skip
        assert "training_args.bin" not in files and not any(name.startswith("checkpoint-") for name in files)
        assert b'from_pretrained("someone/tiny-bispikclm", trust_remote_code=True)' in files["README.md"]
        download = subprocess.run([sys.executable, "-c", DOWNLOAD], capture_output=True, text=True, env=env,
                                  timeout=300, cwd=tmp_path)  # fmt: skip
        assert download.returncode == 0, download.stderr[-3000:] + f"\nunanswered: {hub.unknown}"
    local = AutoModelForCausalLM.from_pretrained(student_folder).eval()
    with torch.no_grad():
        expected = local(torch.tensor([[5, 6, 7, 8, 9]])).logits.flatten()
    assert torch.equal(torch.tensor(json.loads(download.stdout.strip().splitlines()[-1])), expected)


def test_push_refuses_folders_that_are_not_models(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        push_folder(tmp_path / "missing", "someone/x")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="safetensors"):
        push_folder(tmp_path, "someone/x")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="owner/name"):
        push_folder(tmp_path, "no-owner", card=False)


def test_a_failed_push_leaves_the_local_card_as_it_was(student_folder, tmp_path, monkeypatch):
    from huggingface_hub import constants

    folder = tmp_path / "model"
    subprocess.run(["cp", "-r", str(student_folder), str(folder)], check=True)
    (folder / "README.md").write_text("my own card\n")
    with pytest.raises(ValueError, match="repo_id"):
        push_folder(folder, "../evil")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the Hub is unreachable
    with pytest.raises(Exception):  # noqa: B017 - the connection error, whatever huggingface_hub calls it
        push_folder(folder, "someone/model", token="hf_dummy")
    assert (folder / "README.md").read_text() == "my own card\n"


def test_pickles_hidden_files_and_links_out_of_the_folder_are_never_uploaded(student_folder, tmp_path):
    from spiking_lm.publishing.hub import publishable_files

    folder = tmp_path / "model"
    subprocess.run(["cp", "-r", str(student_folder), str(folder)], check=True)
    for name in ("optimizer.pt", "training_args.bin", "state.pkl", "rng.pickle", "model.ckpt", ".secret.json"):
        (folder / name).write_bytes(b"\x80\x04pickle")
    files = publishable_files(folder)
    assert "config.json" in files and "model.safetensors" in files
    assert not {"optimizer.pt", "training_args.bin", "state.pkl", "rng.pickle", "model.ckpt", ".secret.json"} & set(
        files
    )
    (tmp_path / "private.txt").write_text("ssh key")
    (folder / "notes.txt").symlink_to(tmp_path / "private.txt")
    with pytest.raises(ValueError, match="notes.txt: it is a link to .*outside"):
        publishable_files(folder)
    with pytest.raises(ValueError, match="outside"):
        push_folder(folder, "someone/model", card=False)
