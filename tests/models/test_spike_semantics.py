"""Binary spike inference all the way into attention: every spike × spike product an integer-neuron model
computes equals the same product over its binary virtual steps with all cross pairs, and the energy report's
`measured` count is the number of those binary pairs that fire together."""

import pytest
import torch

from spiking_lm.energy import OperationCounter
from spiking_lm.nn.recording import OperationRecorder, recording
from spiking_lm.nn.spike_coding import integer_to_binary

from .conftest import MODEL_CLASSES, model_inputs, tiny_model

IDS = [cls.__name__ for cls, _ in MODEL_CLASSES]


class AttentionCapture(OperationRecorder):
    def __init__(self):
        self.calls = []

    def spiking_attention(self, attention, query, key, value, weights, allowed):
        self.calls.append((attention, query, key, value, weights, allowed))


def virtual_steps(values, neuron):
    """``(T, …)`` spike values as binary virtual steps ``(T, D, …)`` and the value of one spike."""
    coding = neuron.coding
    counts = ((values - coding.offset) / coding.scale).round()
    train = integer_to_binary(counts, coding.max)
    return train.view(values.shape[0], coding.max, *values.shape[1:]), coding.scale


@pytest.mark.parametrize(("model_class", "kind"), MODEL_CLASSES, ids=IDS)
def test_attention_products_equal_all_cross_pairs_of_binary_virtual_steps(model_class, kind):
    model = tiny_model(model_class, neuron_type="nilif", spike_max=4)
    inputs = model_inputs(model_class)
    with torch.no_grad(), recording(AttentionCapture()) as capture:
        model(**inputs)
    assert capture.calls
    counted_pairs = 0
    for attention, query, key, value, weights, allowed in capture.calls:
        q_bits, q_unit = virtual_steps(query, attention.q_neuron)
        k_bits, k_unit = virtual_steps(key, attention.k_neuron)
        # Q·Kᵀ over every (query step j, key step j') pair of binary spikes, (T, D, D, B, H, Lq, Lk)
        cross = torch.einsum("tjbhqc,tkbhlc->tjkbhql", q_bits, k_bits)
        torch.testing.assert_close(cross.sum((1, 2)) * q_unit * k_unit, query @ key.transpose(-1, -2))
        counted_pairs += int((cross.sum((1, 2)) * allowed).sum())
        v_bits, v_unit = virtual_steps(value, attention.v_neuron)
        selections = torch.einsum("tbhql,tjbhlc->tbhqc", weights * allowed, v_bits)  # A·V over V's binary steps
        if attention.kind in ("wssa", "cwssa"):  # each selected binary spike adds its unit
            torch.testing.assert_close(selections * v_unit, weights @ value)
        counted_pairs += int(selections.sum())
    # the energy report's `measured` attention count is exactly the number of binary pairs that fire together
    counter = OperationCounter(model)
    for call in capture.calls:
        counter.spiking_attention(*call)
    assert sum(layer.acs for layer in counter.layers.values()) == counted_pairs > 0


def test_binary_mode_runs_the_attention_on_the_folded_binary_steps():
    """In binary mode the neurons emit the 0/1 virtual steps themselves; the attention folds them into the counts
    the products above are taken over, so the products (and logits) are those of integer mode."""
    model_class = MODEL_CLASSES[1][0]
    model = tiny_model(model_class, neuron_type="nilif", spike_max=4)
    inputs = model_inputs(model_class)
    captured = {}
    for mode in ("integer", "binary"):
        with torch.no_grad(), recording(AttentionCapture()) as capture:
            model.set_spike_mode(mode)(**inputs)
        captured[mode] = capture.calls
    for integer, binary in zip(captured["integer"], captured["binary"], strict=True):
        for a, b in zip(integer[1:5], binary[1:5], strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize(("model_class", "kind"), MODEL_CLASSES, ids=[cls.__name__ for cls, _ in MODEL_CLASSES])
@pytest.mark.parametrize("neuron_type", ["lif", "nilif", "asn"])
def test_forward_values_do_not_depend_on_autograd(model_class, kind, neuron_type):
    """With gradients on, straight-through estimators must leave the forward values exactly as without: a
    winner-take-all written (hard + soft) - soft rounded its 0/1 weights and flipped spikes downstream."""
    model = tiny_model(model_class, neuron_type=neuron_type)
    inputs = model_inputs(model_class)
    with_grad = model(**inputs).logits
    with torch.no_grad():
        without = model(**inputs).logits
    assert torch.equal(with_grad.detach(), without)
