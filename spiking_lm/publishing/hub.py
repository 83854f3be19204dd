"""Sharing a saved model on the Hugging Face Hub (`spiking-lm push DIR REPO_ID`)."""

from __future__ import annotations

from pathlib import Path

from .cards import write_card

PUBLISHED_PATTERNS = ["*.safetensors", "*.json", "*.py", "*.md", "*.txt", "*.model", "*.png", "tokenizer*"]
NEVER_PUBLISHED = ["checkpoint-*/**", "*.bin", "*.pt", "*.pth", "*.pkl", ".results-*", "__pycache__/**"]


def check_publishable(folder: Path) -> None:
    """A folder is published only if it holds a config and safetensors weights (never pickled ones)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    missing = [name for name in ("config.json",) if not (folder / name).is_file()]
    if not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors weights")
    if missing:
        raise ValueError(f"{folder} is not a saved model folder: missing {', '.join(missing)}")


def push_folder(folder, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str | None = None, card: bool = True) -> str:  # fmt: skip
    """Upload weights (safetensors), config, model code, tokenizer, results and model card of ``folder`` to
    the model repo ``repo_id`` (created if needed); returns the commit URL.

    With ``card`` (default) the model card is regenerated first so that its usage snippet loads ``repo_id``.
    Checkpoints and pickled files (``*.bin``, ``*.pt``) are never uploaded.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    check_publishable(folder)
    if "/" not in repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id must look like 'owner/name', got {repo_id!r}")
    if card:
        write_card(folder, repo_id=repo_id)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type="model",
        allow_patterns=PUBLISHED_PATTERNS,
        ignore_patterns=NEVER_PUBLISHED,
        commit_message=commit_message or f"Upload {folder.name} with spiking_lm",
    )
    return str(commit.commit_url if hasattr(commit, "commit_url") else commit)
