import pytest
import torch

from spiking_lm.nn import build_neuron
from spiking_lm.nn.functional import ceil_ste

INTEGER = ["ilif", "nilif", "asn", "nasn"]


def reference_integer(x, lower, spike_max=4, scale=1.0, beta=0.5, detach_reset=False):
    """Autograd loop with the straight-through rule written out: dq/dU = 1 on [lo, lo + D], dq/dlo = 1 outside."""
    membrane = torch.zeros_like(x[0])
    spikes = []
    for t in range(x.shape[0]):
        potential = membrane + x[t]
        hard = torch.clamp(torch.round(potential), lower.detach(), lower.detach() + spike_max)
        inside = (potential >= lower.detach()) & (potential <= lower.detach() + spike_max)
        count = hard + torch.where(inside, potential - potential.detach(), lower - lower.detach())
        membrane = beta * (potential - (count.detach() if detach_reset else count))
        spikes.append(count * scale)
    return torch.stack(spikes)


def test_hand_computed_ilif_trace():
    x = torch.tensor([2.3, 0.4, 5.0, -1.0]).view(4, 1)
    # U: 2.3 -> q 2, H 0.15; U 0.55 -> q 1, H -0.225; U 4.775 -> q 4 (clipped), H 0.3875; U -0.6125 -> q 0
    assert build_neuron("ilif")(x).flatten().tolist() == [2, 1, 4, 0]
    assert build_neuron("nilif")(x).flatten().tolist() == [0.5, 0.25, 1.0, 0.0]


@pytest.mark.parametrize("name,scale", [("ilif", 1.0), ("nilif", 0.25)])
def test_straight_through_window_is_zero_to_spike_max(name, scale):
    x = torch.tensor([[-0.5, -0.01, 0.0, 2.2, 4.0, 4.01, 4.5]], requires_grad=True)
    build_neuron(name)(x).sum().backward()
    assert x.grad.flatten().tolist() == [0, 0, scale, scale, scale, 0, 0]


def test_asn_gradient_with_respect_to_alpha():
    neuron = build_neuron("asn", alpha=1.3)  # window [ceil(1.3), ceil(1.3) + 4] = [2, 6]
    x = torch.tensor([[0.7, 2.5, 6.8, 7.0]], requires_grad=True)
    out = neuron(x)
    assert out.flatten().tolist() == [2, 2, 6, 6]
    out.backward(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert x.grad.flatten().tolist() == [0, 2, 0, 0]  # dS/dU = 1 inside the window only
    assert neuron.alpha.grad.item() == 1 + 3 + 4  # dS/dalpha = 1 outside it


def test_nasn_gradient_with_respect_to_alpha_is_scaled():
    neuron = build_neuron("nasn", alpha=-0.5, spike_max=2)  # window [0, 2], values / 2
    x = torch.tensor([[-1.0, 1.0, 3.0]], requires_grad=True)
    out = neuron(x)
    assert out.flatten().tolist() == [0.0, 0.5, 1.0]
    out.sum().backward()
    assert x.grad.flatten().tolist() == [0, 0.5, 0]
    assert neuron.alpha.grad.item() == pytest.approx(1.0)


@pytest.mark.parametrize("name", INTEGER)
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
def test_fused_backward_matches_autograd_reference(name, detach_reset, steps):
    neuron = build_neuron(name, detach_reset=detach_reset, backend="torch").double()
    if name in ("asn", "nasn"):
        neuron.alpha.data.fill_(-1.4)
    x = (torch.randn(steps, 4, 9, dtype=torch.float64) * 3).requires_grad_()
    grad = torch.randn_like(x)
    out = neuron(x)
    params = [x] + ([neuron.alpha] if name in ("asn", "nasn") else [])
    fused = torch.autograd.grad(out, params, grad)

    lower = ceil_ste(neuron.alpha) if name in ("asn", "nasn") else torch.zeros((), dtype=torch.float64)
    expected = reference_integer(x, lower, scale=neuron.spike_scale, detach_reset=detach_reset)
    reference = torch.autograd.grad(expected, params, grad)
    assert torch.equal(out, expected)
    for got, want in zip(fused, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", INTEGER)
def test_firing_rate_counts_virtual_steps(name):
    neuron = build_neuron(name, record_firing_rate=True)
    x = torch.randn(2, 3, 50) * 3
    spikes = neuron(x)
    counts = spikes / neuron.spike_scale - neuron.spike_offset / neuron.spike_scale
    assert neuron.firing_rate == pytest.approx((counts.mean() / 4).item(), rel=1e-6)
    integer_rate = neuron.firing_rate
    neuron.reset_firing_stats()
    neuron.set_spike_mode("binary")
    neuron(x)
    assert neuron.firing_rate == pytest.approx(integer_rate, rel=1e-6)


def test_tlif_is_ternary_with_scale_initialized_from_the_membrane():
    neuron = build_neuron("tlif", time_steps=2)
    x = torch.randn(2, 8, 16)
    out = neuron(x)
    expected_first_scale = 2 * x[0].abs().mean()
    torch.testing.assert_close(neuron.scale[0].detach(), expected_first_scale)
    for t in range(2):
        assert set(out[t].unique().tolist()) <= {-neuron.scale[t].item(), 0.0, neuron.scale[t].item()}
    assert torch.equal(neuron(x), out)  # initialized once; no state across calls


def test_tlif_straight_through_window():
    neuron = build_neuron("tlif")
    neuron.scale.data.fill_(2.0)
    neuron.scale_initialized.fill_(True)
    x = torch.tensor([[-3.0, -1.0, 0.5, 2.0, 2.5]], requires_grad=True)
    out = neuron(x)
    assert out.flatten().tolist() == [-2.0, -0.0, 0.0, 2.0, 2.0]
    out.sum().backward()
    assert x.grad.flatten().tolist() == [0, 1, 1, 1, 0]  # |U / a| <= 1


@pytest.mark.slow
@pytest.mark.parametrize("name,steps", [("nilif", 1), ("asn", 1), ("ilif", 4)])
def test_compiled_kernel_matches_eager_reference(name, steps):
    x = (torch.randn(steps, 512, 512) * 3).requires_grad_()
    grad = torch.randn_like(x)
    results = []
    for backend in ("torch", "inductor"):
        neuron = build_neuron(name, backend=backend)
        params = [x] + ([neuron.alpha] if name == "asn" else [])
        out = neuron(x)
        results.append((out, torch.autograd.grad(out, params, grad)))
    assert torch.equal(results[0][0], results[1][0])
    for eager, compiled in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(eager, compiled, rtol=1e-5, atol=1e-4)


def _tlif_autograd(x, scale, beta, detach_reset):
    """The ternary LIF written with autograd ops (round_ste), the reference for the fused kernel's gradients."""
    from spiking_lm.nn.functional import round_ste

    membrane, spikes = torch.zeros_like(x[0]), []
    for t in range(x.shape[0]):
        a = scale[t if scale.shape[0] > 1 else 0]
        potential = membrane + x[t]
        spike = a * round_ste(torch.clamp(potential / a, -1.0, 1.0))
        membrane = beta * (potential - (spike.detach() if detach_reset else spike))
        spikes.append(spike)
    return torch.stack(spikes)


@pytest.mark.parametrize("backend", ["torch", "inductor"])
@pytest.mark.parametrize("shared,detach_reset", [(False, False), (True, False), (False, True)])
def test_tlif_gradients_equal_autograd_of_the_straight_through_recurrence(backend, shared, detach_reset):
    from spiking_lm.nn.functional import tlif

    x = (torch.randn(4, 64, 1000) * 1.5).requires_grad_()
    scale = (torch.tensor([1.1]) if shared else torch.tensor([0.9, 1.3, 0.7, 1.6])).requires_grad_()
    grad = torch.randn_like(x)
    out = tlif(x, scale, 0.6, detach_reset, backend)
    reference = _tlif_autograd(x, scale, 0.6, detach_reset)
    assert torch.equal(out, reference)
    fused, expected = torch.autograd.grad(out, [x, scale], grad), torch.autograd.grad(reference, [x, scale], grad)
    for got, want in zip(fused, expected, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
