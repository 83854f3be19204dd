"""The standard pipelines run on spiking models with a real tokenizer."""

import torch
from transformers import pipeline

import spiking_lm

from .conftest import tiny_model


def test_text_generation_pipeline(word_tokenizer):
    model = tiny_model(spiking_lm.WDSpikingformerForCausalLM)
    generator = pipeline("text-generation", model=model, tokenizer=word_tokenizer)
    text = generator("the spiking neuron", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("the spiking neuron") and len(text.split()) > 3


def test_fill_mask_pipeline(word_tokenizer):
    model = tiny_model(spiking_lm.WESpikingformerForMaskedLM)
    fill = pipeline("fill-mask", model=model, tokenizer=word_tokenizer)
    predictions = fill("the spiking [MASK] fires", top_k=3)
    assert len(predictions) == 3
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)


def test_text_classification_pipeline(word_tokenizer):
    model = tiny_model(spiking_lm.WESpikingformerForSequenceClassification, num_labels=2)
    classify = pipeline("text-classification", model=model, tokenizer=word_tokenizer)
    result = classify(["binary spikes make every product an accumulation", "the threshold"])
    assert len(result) == 2 and all(r["label"] in ("LABEL_0", "LABEL_1") for r in result)
    with torch.no_grad():
        encoded = word_tokenizer("the threshold", return_tensors="pt")
        expected = model(**encoded).logits.softmax(-1).max().item()
    assert abs(result[1]["score"] - expected) < 1e-6
