"""Classification inputs: one sentence or a GLUE-style sentence pair per example, with its label."""

from __future__ import annotations

from collections.abc import Sequence


def encode_examples(dataset, tokenizer, text_keys: Sequence[str], max_length: int = 128, label_key: str = "label",
                    regression: bool = False, token_type_ids: bool | None = None):  # fmt: skip
    """Tokenize a `datasets.Dataset` of one-sentence (``text_keys = ("sentence",)``) or sentence-pair
    (``("premise", "hypothesis")``) examples for a sequence classifier.

    Pairs are encoded the tokenizer's way for two segments (e.g. ``[CLS] a [SEP] b [SEP]`` with token types 0/1),
    truncated to ``max_length``; the label column becomes ``labels`` (floats for regression). ``token_type_ids``
    asks for segment ids (encoders with token-type embeddings want them); `None` follows the tokenizer. Padding
    is left to a collator (`transformers.DataCollatorWithPadding`).

    Raises:
        ValueError: one or two text keys are not given, or a column is missing, or the dataset is empty.
    """
    if len(text_keys) not in (1, 2):
        raise ValueError(f"text_keys must name one sentence or a pair, got {list(text_keys)}")
    missing = [key for key in (*text_keys, label_key) if key not in dataset.column_names]
    if missing:
        raise ValueError(f"the examples lack the columns {missing} (they have {dataset.column_names})")
    if len(dataset) == 0:
        raise ValueError("there are no examples: the dataset is empty")

    def tokenize(batch):
        texts = [batch[key] for key in text_keys]
        encoded = tokenizer(*texts, truncation=True, max_length=max_length, return_token_type_ids=token_type_ids)
        encoded["labels"] = [float(x) for x in batch[label_key]] if regression else batch[label_key]
        return encoded

    return dataset.map(tokenize, batched=True, remove_columns=dataset.column_names)
