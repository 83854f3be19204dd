"""Text corpora for training: local files or `datasets` names, a byte-level BPE tokenizer, fixed-size blocks."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

__all__ = [
    "SHAKESPEARE_HELD_OUT",
    "BlockDataset",
    "load_texts",
    "pack_blocks",
    "save_tokenizer",
    "shakespeare_files",
    "train_bpe_tokenizer",
]

SHAKESPEARE_DIR = Path(__file__).parent / "corpora" / "shakespeare"
SHAKESPEARE_HELD_OUT = "twelfth_night.txt"
TEXT_SUFFIXES = (".txt", ".text", ".md")
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def shakespeare_files() -> tuple[list[Path], list[Path]]:
    """The shipped plays as ``(train files, held-out files)``."""
    files = sorted(SHAKESPEARE_DIR.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"the shipped corpus is missing from {SHAKESPEARE_DIR}")
    return [f for f in files if f.name != SHAKESPEARE_HELD_OUT], [f for f in files if f.name == SHAKESPEARE_HELD_OUT]


def load_texts(source, split: str = "train", text_column: str = "text", streaming: bool = False):
    """Documents from local text files / a folder of ``.txt`` files, or from a `datasets` name.

    Returns a list of strings for local files, else the `datasets` dataset (streaming if asked).

    Raises:
        FileNotFoundError: a local path that does not exist.
        ValueError: no non-empty document, or a dataset without ``text_column``.
    """
    paths = [Path(p) for p in ([source] if isinstance(source, (str, Path)) else source)]
    if any(p.exists() or p.suffix in TEXT_SUFFIXES for p in paths):
        return _read_local(paths)
    from datasets import load_dataset

    dataset = load_dataset(str(source), split=split, streaming=streaming)
    if text_column not in (dataset.column_names or [text_column]):
        raise ValueError(f"dataset {source!r} has no column {text_column!r}; columns: {dataset.column_names}")
    return dataset


def _read_local(paths: list[Path]) -> list[str]:
    files = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"text file or folder not found: {path}")
        files += sorted(path.glob("*.txt")) if path.is_dir() else [path]
    texts = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot read {file} as UTF-8 text: {error}") from error
        if text.strip():
            texts.append(text)
    if not texts:
        raise ValueError(f"no text found in {[str(p) for p in paths]}: the dataset is empty")
    return texts


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (with ``<s>``, ``</s>``, ``<pad>``, ``<unk>``) on ``texts``."""
    if vocab_size < 300:
        raise ValueError(f"vocab_size={vocab_size} is invalid: byte-level BPE needs at least 300 (256 bytes + merges)")
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def pack_blocks(texts: Iterable[str], tokenizer, block_size: int) -> torch.Tensor:
    """Tokenize, join documents with EOS, and cut into ``(N, block_size)`` blocks (the remainder is dropped).

    Raises:
        ValueError: fewer tokens than one block.
    """
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    blocks = len(ids) // block_size
    if blocks == 0:
        raise ValueError(f"the texts give {len(ids)} tokens, fewer than one block of {block_size}")
    return torch.tensor(ids[: blocks * block_size], dtype=torch.long).view(blocks, block_size)


class BlockDataset(torch.utils.data.Dataset):
    """Fixed-size token blocks for causal-LM training: input ids, an all-ones mask and labels = input ids."""

    def __init__(self, blocks: torch.Tensor):
        if blocks.dim() != 2 or len(blocks) == 0:
            raise ValueError(f"blocks must be a non-empty (N, block_size) tensor, got shape {tuple(blocks.shape)}")
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        block = self.blocks[index]
        return {"input_ids": block, "attention_mask": torch.ones_like(block), "labels": block}


def save_tokenizer(tokenizer, folder, config) -> None:
    """Save ``tokenizer`` beside the model of ``config`` with ``model_max_length`` set to the model's positions,
    so that ``truncation=True`` cuts prompts to what the model can read (an unset length is ~1e30)."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None:
        tokenizer.model_max_length = positions
    tokenizer.save_pretrained(folder)
