"""`return_dict=False` (argument or config) returns a plain tuple, as `transformers` models do: `loss, logits =
model(..., return_dict=False)` unpacks values, not field names."""

import pytest
import torch

from .conftest import MODEL_CLASSES, labels_for, model_inputs, tiny_model

IDS = [cls.__name__ for cls, _ in MODEL_CLASSES]


@pytest.mark.parametrize(("model_class", "kind"), MODEL_CLASSES, ids=IDS)
def test_return_dict_false_returns_a_tuple_of_the_same_values(model_class, kind):
    model = tiny_model(model_class)
    inputs = model_inputs(model_class)
    labels = labels_for(kind, inputs)
    with torch.no_grad():
        expected = model(**inputs, labels=labels)
        loss, logits, *_ = model(**inputs, labels=labels, return_dict=False)
        assert torch.equal(loss, expected.loss) and torch.equal(logits, expected.logits)
        model.config.return_dict = False
        configured = model(**inputs)
        assert isinstance(configured, tuple) and torch.equal(configured[0], expected.logits)
        assert torch.equal(model(**inputs, return_dict=True).logits, expected.logits)  # the argument wins
        base = model.base_model(**inputs)  # the bare model honours the config too
        assert isinstance(base, tuple) and base[0].shape[-1] == model.config.hidden_size
