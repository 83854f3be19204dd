import pytest
import torch

from spiking_lm.data import BlockDataset, load_texts, pack_blocks, shakespeare_files, train_bpe_tokenizer


def test_shipped_corpus_has_a_held_out_play():
    train, held_out = shakespeare_files()
    assert len(train) == 15 and [f.name for f in held_out] == ["twelfth_night.txt"]


def test_local_text_loading_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("to be or not to be")
    (tmp_path / "empty.txt").write_text("  \n")
    assert load_texts(tmp_path) == ["to be or not to be"]
    assert load_texts([tmp_path / "a.txt"]) == ["to be or not to be"]
    with pytest.raises(FileNotFoundError, match="text file or folder not found"):
        load_texts(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="the dataset is empty"):
        load_texts(tmp_path / "empty.txt")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(ValueError, match="cannot read .*bad.txt as UTF-8"):
        load_texts(tmp_path / "bad.txt")


def test_bpe_tokenizer_round_trips_and_packing():
    texts = ["Now is the winter of our discontent"] * 20
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300)
    assert tokenizer.decode(tokenizer("winter of our")["input_ids"]) == "winter of our"
    assert {tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token} == {"<pad>", "</s>", "<s>"}
    packed = pack_blocks(texts, tokenizer, 16)
    assert packed.shape[1] == 16 and packed.dtype == torch.long
    assert (packed == tokenizer.eos_token_id).any()  # documents are separated by EOS
    item = BlockDataset(packed)[0]
    assert torch.equal(item["labels"], item["input_ids"])
    with pytest.raises(ValueError, match="fewer than one block of 4096"):
        pack_blocks(["short"], tokenizer, 4096)
    with pytest.raises(ValueError, match="vocab_size=100 is invalid"):
        train_bpe_tokenizer(texts, vocab_size=100)
