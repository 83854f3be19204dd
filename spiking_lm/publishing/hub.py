"""Sharing a saved model on the Hugging Face Hub (`spiking-lm push DIR REPO_ID`)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from ..evaluation.results import write_text_atomically
from .cards import render_card

PUBLISHED_PATTERNS = ["*.safetensors", "*.json", "*.py", "*.md", "*.txt", "*.model", "*.png", "tokenizer*"]
NEVER_PUBLISHED = ["checkpoint-*/**", "*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt", "*.joblib",
                   ".*", "__pycache__/**"]  # fmt: skip
CARD = "README.md"


def check_publishable(folder: Path) -> None:
    """A folder is published only if it holds a config and safetensors weights (never pickled ones)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    missing = [name for name in ("config.json",) if not (folder / name).is_file()]
    if not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors weights")
    if missing:
        raise ValueError(f"{folder} is not a saved model folder: missing {', '.join(missing)}")


def check_repo_id(repo_id: str) -> None:
    """``owner/name`` as the Hub spells it (no ``..``, no leading dots or dashes), else a ValueError."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or any(part.startswith((".", "-")) for part in parts):
        raise ValueError(f"repo_id must look like 'owner/name', got {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"repo_id {repo_id!r} is invalid: {' '.join(str(error).split())}") from None


def publishable_files(folder: Path) -> list[str]:
    """The files of ``folder`` that are uploaded, relative to it, sorted.

    Raises ValueError on a symlink that leads out of the folder (it would upload a file from elsewhere).
    """
    root = folder.resolve()
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_dir() or any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(path.name, p)
                                for p in NEVER_PUBLISHED):  # fmt: skip
            continue
        if not any(fnmatch.fnmatch(path.name, pattern) for pattern in PUBLISHED_PATTERNS):
            continue
        if not path.resolve().is_relative_to(root):
            raise ValueError(f"refusing to upload {relative}: it is a link to {path.resolve()}, outside {folder}")
        files.append(relative)
    return files


def push_folder(folder, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str | None = None, card: bool = True) -> str:  # fmt: skip
    """Upload weights (safetensors), config, model code, tokenizer, results and model card of ``folder`` to
    the model repo ``repo_id`` (created if needed); returns the commit URL.

    With ``card`` (default) the model card is regenerated so that its usage snippet loads ``repo_id``; it is
    uploaded from memory and written to ``folder/README.md`` only once the upload succeeded, so a failed push
    leaves the local card as it was. Checkpoints, pickles (``*.bin``, ``*.pt``, ``*.pkl``, ...), hidden files
    and links leading out of the folder are never uploaded.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    check_publishable(folder)
    check_repo_id(repo_id)
    files = publishable_files(folder)
    card_text = render_card(folder, repo_id=repo_id) if card else None
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    operations = [CommitOperationAdd(name, str(folder / name)) for name in files if not (card and name == CARD)]
    if card_text is not None:
        operations.append(CommitOperationAdd(CARD, card_text.encode()))
    commit = api.create_commit(
        repo_id=repo_id,
        operations=operations,
        repo_type="model",
        commit_message=commit_message or f"Upload {folder.name} with spiking_lm",
    )
    if card_text is not None:
        write_text_atomically(folder / CARD, card_text)
    return str(commit.commit_url if hasattr(commit, "commit_url") else commit)
