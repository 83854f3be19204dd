"""Loading a model to evaluate, and the energy probe that accompanies every score."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from ..energy import estimate_energy

AUTO_CLASSES = {
    "causal-lm": AutoModelForCausalLM,
    "masked-lm": AutoModelForMaskedLM,
    "sequence-classification": AutoModelForSequenceClassification,
    "base": AutoModel,
}
ARCHITECTURE_SUFFIXES = {"ForCausalLM": "causal-lm", "ForMaskedLM": "masked-lm",
                         "ForSequenceClassification": "sequence-classification"}  # fmt: skip


def check_model_reference(name_or_path: str, role: str = "model") -> None:
    """Fail early, naming the path, when ``name_or_path`` looks like a local folder that does not exist, or
    like a Hub id while the Hub is switched off (``HF_HUB_OFFLINE``) and nothing of it is cached."""
    path = Path(name_or_path)
    looks_local = path.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ValueError(f"{role} {name_or_path!r} is not a saved model folder (no config.json in it)")
    elif looks_local:
        raise FileNotFoundError(f"{role} folder {name_or_path!r} does not exist")
    elif _offline() and not _cached(name_or_path):
        raise FileNotFoundError(f"{role} {name_or_path!r} is neither a local folder nor cached, and the Hub is "
                                "offline (HF_HUB_OFFLINE=1): give a saved model folder")  # fmt: skip


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id either
        return False


def load_model_and_tokenizer(name_or_path: str, kind: str = "causal-lm", trust_remote_code: bool = False):
    """A saved spiking_lm model (folder or Hub id) in eval mode, and its tokenizer.

    ``kind`` picks the Auto class; ``"auto"`` takes the head the model was saved with (``architectures``).
    """
    check_model_reference(name_or_path)
    if kind == "auto":
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        saved = (config.architectures or [""])[0]
        kind = next((k for suffix, k in ARCHITECTURE_SUFFIXES.items() if saved.endswith(suffix)), "base")
    if kind not in AUTO_CLASSES:
        raise ValueError(f"kind must be 'auto' or one of {sorted(AUTO_CLASSES)}, got {kind!r}")
    model = AUTO_CLASSES[kind].from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    return model.eval(), tokenizer


def energy_probe(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict | None:
    """The energy report of ``model`` on inputs the evaluation itself used (`None` for a non-spiking model)."""
    if not hasattr(model, "spiking_neurons"):
        return None
    return estimate_energy(model, input_ids, attention_mask).to_dict()
