import pytest
import torch

from spiking_lm.nn import build_neuron, build_surrogate
from spiking_lm.nn.kernels import lif_scan


def reference_lif(x, beta=0.5, v_threshold=1.0, v_reset=None, surrogate="atan", detach_reset=False):
    """Textbook autograd loop: the fused kernel must give the same spikes and gradients."""
    fire = build_surrogate(surrogate)
    membrane = torch.zeros_like(x[0])
    spikes = []
    for t in range(x.shape[0]):
        potential = membrane + x[t]
        spike = fire(potential - v_threshold)
        reset = spike.detach() if detach_reset else spike
        if v_reset is None:
            membrane = beta * (potential - reset * v_threshold)
        else:
            membrane = beta * (potential * (1 - reset) + reset * v_reset)
        spikes.append(spike)
    return torch.stack(spikes)


TRACE_INPUT = torch.tensor([1.5, 0.8, 0.1, 2.5], dtype=torch.float64).view(4, 1)


@pytest.mark.parametrize(
    "v_reset,potentials,spikes",
    [
        (None, [1.5, 1.05, 0.125, 2.5625], [1, 1, 0, 1]),  # soft reset subtracts the threshold
        (0.0, [1.5, 0.8, 0.5, 2.75], [1, 0, 0, 1]),  # hard reset to 0
        (-0.5, [1.5, 0.55, 0.375, 2.6875], [1, 0, 0, 1]),  # hard reset below 0
    ],
)
def test_hand_computed_trace(v_reset, potentials, spikes):
    out, membrane = lif_scan(TRACE_INPUT, 0.5, 1.0, v_reset)
    torch.testing.assert_close(torch.cat(membrane), torch.tensor(potentials, dtype=torch.float64))
    assert torch.cat(out).tolist() == spikes
    assert build_neuron("lif", v_reset=v_reset)(TRACE_INPUT).flatten().tolist() == spikes


@pytest.mark.parametrize("v_reset", [None, 0.0, -0.3])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("surrogate", ["atan", "sigmoid", "rectangle"])
def test_fused_backward_matches_autograd_reference(v_reset, detach_reset, surrogate):
    x = (torch.randn(6, 5, 7, dtype=torch.float64) * 1.5).requires_grad_()
    grad = torch.randn(6, 5, 7, dtype=torch.float64)
    neuron = build_neuron("lif", v_reset=v_reset, detach_reset=detach_reset, surrogate=surrogate, backend="torch")
    out = neuron(x)
    (grad_fused,) = torch.autograd.grad(out, x, grad)
    expected = reference_lif(x, v_reset=v_reset, surrogate=surrogate, detach_reset=detach_reset)
    (grad_reference,) = torch.autograd.grad(expected, x, grad)
    assert torch.equal(out, expected)
    torch.testing.assert_close(grad_fused, grad_reference, rtol=1e-12, atol=1e-12)


def test_gradient_flows_back_through_time():
    x = torch.zeros(3, 1, dtype=torch.float64, requires_grad=True)
    out = build_neuron("lif", detach_reset=True)(x)
    out[2].sum().backward()
    # no spikes: the spike at t = 2 sees X[0] through two leaks of beta = 0.5, X[1] through one
    slope = build_surrogate("atan").derivative(torch.tensor(-1.0, dtype=torch.float64))
    torch.testing.assert_close(x.grad.flatten(), slope * torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64))

    x.grad = None
    build_neuron("lif")(x)[2].sum().backward()
    # without detaching, the soft reset also carries the surrogate: dH/dU = beta (1 - V_th g'(U - V_th))
    leak = 0.5 * (1 - slope)
    torch.testing.assert_close(x.grad.flatten(), slope * torch.stack([leak**2, leak, torch.ones_like(leak)]))


def test_spikes_are_binary_and_no_state_survives_a_call():
    neuron = build_neuron("lif")
    x = torch.randn(4, 3, 8) * 3
    first, second = neuron(x), neuron(x)
    assert torch.equal(first, second)
    assert set(first.unique().tolist()) <= {0.0, 1.0}


def test_firing_rate_is_recorded_only_when_asked():
    neuron = build_neuron("lif")
    x = torch.randn(4, 2, 16) * 2
    spikes = neuron(x)
    assert neuron.recorded_elements == 0
    neuron.record_firing_rate = True
    neuron(x)
    neuron(x)
    assert neuron.firing_rate == pytest.approx(spikes.mean().item())
    neuron.reset_firing_stats()
    assert neuron.recorded_elements == 0


@pytest.mark.slow
def test_compiled_kernel_matches_eager_reference():
    x = (torch.randn(4, 256, 512) * 1.5).requires_grad_()
    grad = torch.randn_like(x)
    results = []
    for backend in ("torch", "inductor"):
        neuron = build_neuron("lif", backend=backend)
        out = neuron(x)
        (dx,) = torch.autograd.grad(out, x, grad)
        results.append((out, dx))
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("v_reset", [None, 0.0, -0.25])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inference_path_is_bitwise_the_training_kernel(v_reset, dtype):
    from spiking_lm.nn.functional import lif
    from spiking_lm.nn.kernels import lif_forward

    x = torch.randn(5, 3, 700, dtype=dtype) * 2
    original = x.clone()
    with torch.no_grad():
        fast = lif(x, beta=0.6, v_threshold=0.8, v_reset=v_reset)
    assert torch.equal(fast, lif_forward(x.reshape(5, -1), 0.6, 0.8, v_reset).view(x.shape))
    assert torch.equal(x, original)  # the in-place steps never touch the input


def test_reaching_the_recompile_limit_keeps_compiled_variants_and_runs_new_ones_eagerly(caplog, monkeypatch):
    import torch._dynamo

    from spiking_lm.nn import dispatch

    def doubled(x, flag):  # a fresh kernel: its own dynamo cache
        return x * 2 if flag else x + 1

    monkeypatch.setattr(dispatch, "KERNEL_RECOMPILE_LIMIT", 1)
    # config.patch, not monkeypatch: undoing a monkeypatch deletes the setting from dynamo's config, which then
    # fails every later compilation in the process
    with torch._dynamo.config.patch(recompile_limit=1):
        first = torch.ones(dispatch.AUTO_COMPILE_MIN_NUMEL)
        assert torch.equal(dispatch.run_kernel(doubled, "auto", first, True), first * 2)  # compiled
        other = first.double()  # a new dtype needs a second graph: over the limit
        with caplog.at_level("WARNING", logger=dispatch.__name__):
            assert torch.equal(dispatch.run_kernel(doubled, "auto", other, True), other * 2)
    assert "recompile limit" in caplog.text
    assert doubled not in dispatch._broken_kernels  # the first variant is still served compiled
    compiled = dispatch._compiled_kernels[doubled]
    assert torch.equal(compiled(first, True), first * 2)


def test_kernels_compile_more_variants_than_dynamos_default_limit(caplog):
    import torch._dynamo

    from spiking_lm.nn import dispatch

    def tripled(x):  # a fresh kernel: its own dynamo cache
        return x * 3

    first = torch.ones(dispatch.AUTO_COMPILE_MIN_NUMEL)
    before = torch._dynamo.config.recompile_limit
    with torch._dynamo.config.patch(recompile_limit=1), caplog.at_level("WARNING", logger=dispatch.__name__):
        for dtype in (torch.float32, torch.float64, torch.bfloat16):  # three variants, dynamo allows one
            x = first.to(dtype)
            assert torch.equal(dispatch.run_kernel(tripled, "auto", x), x * 3)
    assert "recompile limit" not in caplog.text and tripled not in dispatch._limited_kernels
    assert torch._dynamo.config.recompile_limit == before  # dynamo's own setting is untouched


@pytest.mark.parametrize("backend", ["torch", "inductor"])
def test_lif_emits_bf16_spikes_with_the_float32_values_and_gradients(backend):
    """A consumer that multiplies in bf16 asks the neuron for bf16 spikes: the same 0/1 values, and a bf16
    gradient arriving for them gives the input gradient that its fp32 widening gives (numbers stay fp32)."""
    torch.manual_seed(0)
    x = (torch.randn(4, 64, 300) * 1.5).requires_grad_()
    grad = torch.randn(4, 64, 300).bfloat16()
    neuron = build_neuron("lif", beta=0.9, v_threshold=0.7, backend=backend)  # 0.9 and 0.7 are not bf16 numbers
    spikes = neuron(x)
    low = neuron(x, dtype=torch.bfloat16)
    assert low.dtype == torch.bfloat16 and torch.equal(low.float(), spikes)
    (expected,) = torch.autograd.grad(spikes, x, grad.float())
    (got,) = torch.autograd.grad(low, x, grad)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


def test_firing_rate_of_bf16_spikes_is_counted_exactly():
    neuron = build_neuron("lif", record_firing_rate=True)
    x = torch.randn(2, 600, 700) * 3  # 840,000 elements: far more spikes than bf16 counts exactly
    spikes = neuron(x, dtype=torch.bfloat16)
    assert neuron.firing_rate == spikes.double().mean().item()


@pytest.mark.parametrize("backend", ["torch", "inductor"])
@pytest.mark.parametrize("v_reset", [None, 0.0])
def test_masked_lif_on_bf16_scores_equals_the_widened_masked_composition(backend, v_reset):
    """SFSA's attention neuron while training in bf16: one kernel from bf16 overlap counts to bf16 spikes must
    give the values and gradients of widen → mask → scale → LIF → cast."""
    torch.manual_seed(0)
    scores = torch.randint(0, 40, (4, 2, 3, 64, 64)).to(torch.bfloat16).requires_grad_()
    allowed = torch.ones(64, 64, dtype=torch.bool).tril().view(1, 1, 64, 64).expand(2, 1, 64, 64)
    grad = torch.randn(4, 2, 3, 64, 64).bfloat16()
    neuron = build_neuron("lif", beta=0.9, v_threshold=0.3, v_reset=v_reset, backend=backend)
    reference = neuron(scores.float() * allowed * 0.125).to(torch.bfloat16)
    (expected,) = torch.autograd.grad(reference, scores, grad)
    fused = neuron.fire_masked(scores, allowed, 0.125, torch.bfloat16)
    assert fused.grad_fn.name().startswith("MaskedMultiStepLIF")
    assert fused.dtype == torch.bfloat16 and torch.equal(fused, reference)
    (got,) = torch.autograd.grad(fused, scores, grad)
    assert torch.equal(got, expected)
    assert torch.equal(got[..., ~allowed[0, 0]], torch.zeros_like(got[..., ~allowed[0, 0]]))  # masked: no grad


def test_inference_calls_do_not_turn_the_training_kernels_dynamic():
    """Calls that train nothing compile in a twin of the kernel with its own dynamo state: decoding's varying
    lengths make the twin's shapes dynamic, and a training call compiled after them still gets a static graph (it
    once came out dynamic, and WE-Spikingformer trained 25 % slower after another model had generated)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from spiking_lm.nn import dispatch

    def quadrupled(x):  # a fresh kernel: its own dynamo cache
        return x * 4

    with torch.no_grad():
        for length in (10, 20, 30):  # the third length compiles a dynamic graph in the inference twin
            x = torch.ones(length)
            assert torch.equal(dispatch.run_kernel(quadrupled, "inductor", x), x * 4)
    assert quadrupled in dispatch._compiled_inference_kernels and quadrupled not in dispatch._compiled_kernels
    graphs = []
    for length in (40, 50):  # training: a static graph per length, not the twin's dynamic one
        x = torch.ones(length, requires_grad=True)
        before = counters["stats"]["unique_graphs"]
        assert torch.equal(dispatch.run_kernel(quadrupled, "inductor", x), x.detach() * 4)
        graphs.append(counters["stats"]["unique_graphs"] - before)
    assert graphs == [1, 1]
    assert dispatch._compiled_inference_kernels[quadrupled] is not dispatch._compiled_kernels[quadrupled]
