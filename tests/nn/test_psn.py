import pytest
import torch

from spiking_lm.nn import build_neuron
from spiking_lm.nn.functional import band_mask


def naive_parallel(x, weight, bias):
    """H[t] = sum_j W[t, j] X[j] + b[t], one element at a time."""
    steps = x.shape[0]
    flat = x.reshape(steps, -1)
    membrane = torch.empty_like(flat)
    for t in range(steps):
        for n in range(flat.shape[1]):
            membrane[t, n] = sum(weight[t, j] * flat[j, n] for j in range(steps)) + bias[t]
    return membrane.view(x.shape)


def test_psn_matches_naive_loop_and_gradients_flow():
    neuron = build_neuron("psn", time_steps=4).double()
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    out = neuron(x)
    expected = (naive_parallel(x.detach(), neuron.weight.detach(), neuron.bias.detach()) >= 0).double()
    assert torch.equal(out, expected)
    out.sum().backward()
    assert x.grad.abs().sum() > 0 and neuron.weight.grad.abs().sum() > 0 and neuron.bias.grad.abs().sum() > 0


def test_psn_initialization_follows_spec():
    neuron = build_neuron("psn", time_steps=4)
    assert torch.equal(neuron.bias.detach(), torch.full((4,), -1.0))
    assert neuron.weight.abs().max() <= 0.5  # kaiming-uniform a=sqrt(5): bound 1/sqrt(fan_in) = 1/2


def test_masked_psn_is_causal_with_memory_order():
    assert band_mask(4, 2).tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    neuron = build_neuron("masked_psn", time_steps=4, order=2).double()
    x = torch.randn(4, 2, 6, dtype=torch.float64)
    masked_weight = neuron.weight.detach() * band_mask(4, 2, dtype=torch.float64)
    expected = (naive_parallel(x, masked_weight, neuron.bias.detach()) >= 0).double()
    assert torch.equal(neuron(x), expected)
    perturbed = x.clone()
    perturbed[3] += 10  # a later step never changes earlier spikes
    assert torch.equal(neuron(perturbed)[:3], neuron(x)[:3])


def test_masked_psn_lambda_zero_is_the_full_psn():
    neuron = build_neuron("masked_psn", time_steps=3, order=1, mask_lambda=0.0).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    expected = (naive_parallel(x, neuron.weight.detach(), neuron.bias.detach()) >= 0).double()
    assert torch.equal(neuron(x), expected)
    with pytest.raises(ValueError, match="mask_lambda"):
        neuron.set_mask_lambda(1.5)


def test_sliding_psn_matches_causal_convolution_loop():
    neuron = build_neuron("sliding_psn", order=3).double()
    with torch.no_grad():
        neuron.weight.copy_(torch.tensor([0.2, -0.7, 1.1]))
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    out = neuron(x)
    w, b = neuron.weight.detach(), neuron.threshold.detach()
    for t in range(5):
        membrane = sum(w[i] * x.detach()[t - 2 + i] for i in range(3) if t - 2 + i >= 0)
        assert torch.equal(out[t], (membrane - b >= 0).double())
    out.sum().backward()
    assert neuron.weight.grad is not None and neuron.threshold.grad is not None


def test_parallel_neurons_reject_wrong_time_steps():
    with pytest.raises(ValueError, match="time_steps=4, got T=2"):
        build_neuron("psn", time_steps=4)(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="order must be <= time_steps=2"):
        build_neuron("masked_psn", time_steps=2, order=3)


def _membrane(name, neuron, x):
    """H as plain autograd ops, for each parallel neuron (the reference its fused kernel must match)."""
    steps = x.shape[0]
    if name == "sliding_psn":
        order = neuron.weight.shape[0]
        padded = torch.cat([x.new_zeros(order - 1, *x.shape[1:]), x])
        taps = sum(neuron.weight[i] * padded[i : i + steps] for i in range(order))
        return taps - neuron.threshold
    weight = neuron.weight
    if name == "masked_psn":
        mask = band_mask(steps, neuron.order, dtype=x.dtype)
        weight = weight * (neuron.mask_lambda * mask + (1 - neuron.mask_lambda))
    return torch.einsum("ij,j...->i...", weight, x) + neuron.bias.view(-1, *([1] * (x.dim() - 1)))


@pytest.mark.parametrize("backend", ["torch", "inductor"])
@pytest.mark.parametrize("name", ["psn", "masked_psn", "sliding_psn"])
def test_parallel_neuron_gradients_equal_autograd_through_the_surrogate(name, backend):
    """The fused kernel's dL/dX, dL/dW and dL/db (accumulated in one pass) against autograd of Θ(H) with the
    surrogate, on a tensor wide enough to exercise the compiled reductions."""
    kwargs = {"order": 3} if name == "sliding_psn" else {"time_steps": 4}
    if name == "masked_psn":
        kwargs.update(order=2, mask_lambda=0.7)
    neuron = build_neuron(name, backend=backend, **kwargs)
    x = (torch.randn(4, 64, 1000) * 2).requires_grad_()
    grad = torch.randn_like(x)
    out = neuron(x)
    params = list(neuron.parameters())
    fused = torch.autograd.grad(out, [x, *params], grad)
    membrane = _membrane(name, neuron, x)
    reference = neuron.surrogate(membrane)
    decided = membrane.detach().abs() > 1e-5  # the sums run in another order: ties at the threshold may differ
    assert decided.float().mean() > 0.99 and torch.equal(out[decided], reference[decided])
    expected = torch.autograd.grad(reference, [x, *params], grad)
    for got, want in zip(fused, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["masked_psn", "sliding_psn"])
def test_parallel_neuron_trains_after_a_first_call_under_inference_mode(name):
    """The masks these neurons cache must not be inference tensors, which autograd refuses to save."""
    neuron = build_neuron(name, **({"time_steps": 5, "order": 2} if name == "masked_psn" else {"order": 4}))
    x = torch.randn(5, 3, 8)
    with torch.inference_mode():
        expected = neuron(x)
    out = neuron(x.requires_grad_())
    out.sum().backward()
    assert torch.equal(out, expected) and neuron.weight.grad is not None
