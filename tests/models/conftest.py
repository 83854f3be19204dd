"""Tiny configurations of every spiking model class (hidden 32, 2 layers, vocab 99), in the spirit of
transformers' ModelTester."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

import spiking_lm

TINY = {
    "vocab_size": 99,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "max_position_embeddings": 64,
    "pad_token_id": 0,
}

# (model class, head kind) for every class a user can load
MODEL_CLASSES = [
    (spiking_lm.BiSpikCLMForCausalLM, "causal_lm"),
    (spiking_lm.BiSpikCLMForSequenceClassification, "classification"),
    (spiking_lm.WDSpikingformerForCausalLM, "causal_lm"),
    (spiking_lm.WDSpikingformerForSequenceClassification, "classification"),
    (spiking_lm.WESpikingformerForMaskedLM, "masked_lm"),
    (spiking_lm.WESpikingformerForSequenceClassification, "classification"),
]
CAUSAL_LM_CLASSES = [cls for cls, kind in MODEL_CLASSES if kind == "causal_lm"]
INTEGER_NEURONS = ["ilif", "nilif", "asn", "nasn"]


def tiny_config(model_class, **overrides):
    options = {**TINY, **overrides}
    if model_class.config_class is spiking_lm.BiSpikCLMConfig:
        options.setdefault("time_steps", 2)  # keep the LIF model's T small in tests
    return model_class.config_class(**options)


def tiny_model(model_class, **overrides):
    torch.manual_seed(0)
    return model_class(tiny_config(model_class, **overrides)).eval()


def model_inputs(model_class, batch=2, length=7, seed=1):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, TINY["vocab_size"], (batch, length), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def labels_for(kind, inputs):
    if kind == "classification":
        return torch.arange(inputs["input_ids"].shape[0]) % 2
    return inputs["input_ids"].clone()


@pytest.fixture(scope="session")
def word_tokenizer():
    """A real WordLevel tokenizer trained by `tokenizers` on a small corpus, within the tiny vocabulary."""
    corpus = [
        "the spiking neuron fires when its membrane crosses the threshold",
        "a language model predicts the next token from the tokens before it",
        "winner take all attention keeps the strongest key for every query",
        "binary spikes make every matrix product an accumulation of weights",
    ] * 4
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(corpus, trainers.WordLevelTrainer(vocab_size=99, special_tokens=special))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
