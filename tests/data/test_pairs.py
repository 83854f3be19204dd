"""Single-sentence and sentence-pair classification examples."""

import pytest
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from spiking_lm.data import encode_examples


@pytest.fixture(scope="module")
def tokenizer():
    words = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    words.train_from_iterator(["a cat sat on the mat", "the dog ran"], trainer)
    words.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]")  # fmt: skip


def test_a_pair_becomes_two_segments_with_its_label(tokenizer):
    pairs = Dataset.from_dict({"premise": ["a cat sat"], "hypothesis": ["the dog ran"], "label": [2]})
    example = encode_examples(pairs, tokenizer, ("premise", "hypothesis"), token_type_ids=True)[0]
    tokens = tokenizer.convert_ids_to_tokens(example["input_ids"])
    assert tokens == ["[CLS]", "a", "cat", "sat", "[SEP]", "the", "dog", "ran", "[SEP]"]
    assert example["token_type_ids"] == [0] * 5 + [1] * 4
    assert example["labels"] == 2 and "premise" not in example


def test_single_sentences_truncate_and_regression_labels_are_floats(tokenizer):
    sentences = Dataset.from_dict({"sentence": ["a cat sat on the mat"], "label": [3]})
    example = encode_examples(sentences, tokenizer, ("sentence",), max_length=4, regression=True)[0]
    assert len(example["input_ids"]) == 4 and example["labels"] == 3.0


def test_missing_columns_and_empty_data_are_named(tokenizer):
    with pytest.raises(ValueError, match=r"lack the columns \['hypothesis'\]"):
        encode_examples(Dataset.from_dict({"premise": ["x"], "label": [0]}), tokenizer, ("premise", "hypothesis"))
    with pytest.raises(ValueError, match="empty"):
        encode_examples(Dataset.from_dict({"sentence": [], "label": []}), tokenizer, ("sentence",))
    with pytest.raises(ValueError, match="one sentence or a pair"):
        encode_examples(Dataset.from_dict({"a": ["x"], "label": [0]}), tokenizer, ())
