"""Data for spiking_lm: text loading, tokenizer training, packing into blocks."""

from .text import (
    SHAKESPEARE_HELD_OUT,
    BlockDataset,
    load_texts,
    pack_blocks,
    shakespeare_files,
    train_bpe_tokenizer,
)

__all__ = [
    "SHAKESPEARE_HELD_OUT",
    "BlockDataset",
    "load_texts",
    "pack_blocks",
    "shakespeare_files",
    "train_bpe_tokenizer",
]
