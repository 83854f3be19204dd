"""Data for spiking_lm: text loading, tokenizer training, packing into blocks, classification examples."""

from .pairs import encode_examples
from .text import (
    SHAKESPEARE_HELD_OUT,
    BlockDataset,
    load_texts,
    pack_blocks,
    save_tokenizer,
    shakespeare_files,
    train_bpe_tokenizer,
)

__all__ = [
    "SHAKESPEARE_HELD_OUT",
    "BlockDataset",
    "encode_examples",
    "load_texts",
    "pack_blocks",
    "save_tokenizer",
    "shakespeare_files",
    "train_bpe_tokenizer",
]
