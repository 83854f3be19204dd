import pytest
import torch

from spiking_lm.nn import build_neuron
from spiking_lm.nn.execution import SpikeExecution
from spiking_lm.nn.norms import RMSNorm
from spiking_lm.nn.spike_linear import linear_on_spikes, linears_on_spikes

BF16 = SpikeExecution(train_matmul_dtype="bfloat16")


@pytest.mark.parametrize(
    "name,kwargs", [("lif", {}), ("nilif", {}), ("ilif", {"spike_max": 8}), ("asn", {"alpha": -1.3})]
)
def test_spike_linear_saves_counts_and_gives_the_same_gradients(name, kwargs):
    neuron = build_neuron(name, **kwargs).double()
    linear = torch.nn.Linear(12, 5, dtype=torch.float64)
    x = (torch.randn(3, 4, 12, dtype=torch.float64) * 3).requires_grad_()
    grad = torch.randn(3, 4, 5, dtype=torch.float64)

    spikes = neuron(x)
    out = linear_on_spikes(linear, spikes, neuron)
    assert out.grad_fn.name().startswith("SpikeLinearFunction")
    saved_counts = out.grad_fn.saved_tensors[0]
    assert saved_counts.dtype == torch.uint8
    got = torch.autograd.grad(out, [x, linear.weight, linear.bias], grad)

    expected_out = torch.nn.functional.linear(neuron(x), linear.weight, linear.bias)
    expected = torch.autograd.grad(expected_out, [x, linear.weight, linear.bias], grad)
    assert torch.equal(out, expected_out)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,kwargs", [("lif", {}), ("nilif", {}), ("asn", {"alpha": -1.3})])
@pytest.mark.parametrize("bias", [True, False])
def test_linears_fed_the_same_spikes_train_as_one_function_with_the_same_gradients(name, kwargs, bias):
    torch.manual_seed(0)
    neuron = build_neuron(name, **kwargs).double()
    linears = [torch.nn.Linear(12, width, bias=bias, dtype=torch.float64) for width in (5, 7, 5)]
    x = (torch.randn(3, 4, 12, dtype=torch.float64) * 3).requires_grad_()
    grads = [torch.randn(3, 4, linear.out_features, dtype=torch.float64) for linear in linears]
    parameters = [p for linear in linears for p in linear.parameters()]

    outputs = linears_on_spikes(linears, neuron(x), neuron)
    function = {output.grad_fn for output in outputs}
    assert len(function) == 1 and function.pop().name().startswith("SpikeLinearFunction")
    kept = outputs[0].grad_fn.saved_tensors[0]
    assert kept.dtype == torch.uint8 and kept.shape == x.shape  # the spikes, kept once for all three
    got = torch.autograd.grad(outputs, [x, *parameters], grads)

    expected_outputs = [torch.nn.functional.linear(neuron(x), linear.weight, linear.bias) for linear in linears]
    expected = torch.autograd.grad(expected_outputs, [x, *parameters], grads)
    for output, reference in zip(outputs, expected_outputs, strict=True):
        assert torch.equal(output, reference)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_grouped_spike_linears_in_bfloat16_match_one_by_one():
    torch.manual_seed(0)
    neuron = build_neuron("lif")
    linears = [torch.nn.Linear(64, 32) for _ in range(3)]
    spikes = neuron(torch.randn(2, 8, 64) * 3).detach()
    grads = [torch.randn(2, 8, 32) for _ in linears]
    parameters = [p for linear in linears for p in linear.parameters()]
    results = []
    for run in (
        lambda x: linears_on_spikes(linears, x, neuron, BF16),
        lambda x: [linear_on_spikes(l, x, neuron, BF16) for l in linears],
    ):
        x = spikes.clone().requires_grad_()
        outputs = run(x)
        results.append([*outputs, *torch.autograd.grad(outputs, [x, *parameters], grads)])
    for grouped, single in zip(*results, strict=True):
        # the input gradient is one bf16 GEMM over the three instead of a sum of three bf16-rounded products
        torch.testing.assert_close(
            grouped.detach(), single.detach(), rtol=0, atol=float(single.detach().abs().max()) * 2**-7
        )


@pytest.mark.parametrize("name,kwargs", [("lif", {}), ("nilif", {}), ("asn", {"alpha": -1.3}), ("tlif", {})])
def test_bfloat16_spike_linear_is_within_bf16_rounding_of_float32(name, kwargs):
    torch.manual_seed(0)
    neuron = build_neuron(name, **kwargs)
    linear = torch.nn.Linear(64, 48)
    spikes = neuron(torch.randn(2, 8, 64) * 3).detach()
    grad = torch.randn(2, 8, 48)
    results = []
    for dtype in ("float32", "bfloat16"):
        x = spikes.clone().requires_grad_()
        out = linear_on_spikes(linear, x, neuron, SpikeExecution(train_matmul_dtype=dtype))
        results.append((out, *torch.autograd.grad(out, [x, linear.weight, linear.bias], grad)))
    assert out.dtype == torch.float32 and out.grad_fn.name().startswith("SpikeLinearFunction")
    for reference, low in zip(results[0][:3], results[1][:3], strict=True):  # output, input and weight grads
        assert not torch.equal(reference, low)
        scale = reference.detach().abs().max()
        torch.testing.assert_close(low.detach(), reference.detach(), rtol=0, atol=float(scale) * 2**-6)


def test_ternary_spikes_are_not_coded_and_use_a_plain_linear():
    neuron = build_neuron("tlif")
    assert neuron.coding.linear is None
    linear = torch.nn.Linear(6, 3)
    out = linear_on_spikes(linear, neuron(torch.randn(2, 6)), neuron)
    assert not out.grad_fn.name().startswith("SpikeLinearFunction")


@pytest.mark.slow
def test_compiled_rmsnorm_matches_eager():
    x = torch.randn(512, 512, requires_grad=True)
    grad = torch.randn(512, 512)
    weight = torch.empty(512).uniform_(0.5, 1.5)
    results = []
    for backend in ("torch", "inductor"):
        norm = RMSNorm(512, eps=1e-6, backend=backend)
        norm.weight.data.copy_(weight)
        out = norm(x)
        results.append((out, *torch.autograd.grad(out, [x, norm.weight], grad)))
    for eager, compiled in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(eager, compiled, rtol=1e-5, atol=1e-4)


def test_single_step_integer_neuron_keeps_only_a_mask_for_backward():
    neuron = build_neuron("nilif", backend="torch")
    x = torch.randn(1, 4, 8, requires_grad=True)
    out = neuron(x)
    (saved,) = out.grad_fn.saved_tensors
    assert saved.dtype == torch.uint8
    out.sum().backward()
    inside = (x >= 0) & (x <= 4)
    assert torch.equal(x.grad, inside.float() / 4)


@pytest.mark.slow
@pytest.mark.parametrize("norm_class", [torch.nn.LayerNorm, RMSNorm])
@pytest.mark.parametrize("name", ["lif", "nilif"])
def test_fused_norm_and_neuron_match_the_separate_modules(norm_class, name):
    from spiking_lm.nn.norms import normalize_and_fire

    norm = norm_class(256, eps=1e-5) if norm_class is torch.nn.LayerNorm else RMSNorm(256, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = (torch.randn(2, 512, 256) * 2).requires_grad_()
    grad = torch.randn(2, 512, 256)
    fused_neuron = build_neuron(name, backend="inductor")
    fused = normalize_and_fire(norm, fused_neuron, x)
    assert fused.grad_fn.name() != build_neuron(name, backend="torch")(x).grad_fn.name()  # took the fused path
    separate = build_neuron(name, backend="torch")(norm(x))
    assert torch.equal(fused, separate)
    params = [x, norm.weight]
    for a, b in zip(
        torch.autograd.grad(fused, params, grad), torch.autograd.grad(separate, params, grad), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("width", [256, 1024])  # the fused norm → neuron function, and the recomputed region
@pytest.mark.parametrize("length", [64, 50])  # rows T·B·L a multiple of the row-sum block (64), and not
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])  # a bf16 GEMM output widened in the norm, or not
@pytest.mark.parametrize("norm_class", [torch.nn.LayerNorm, RMSNorm])
def test_compiled_norms_give_the_parameter_gradients_of_the_functional_norm(norm_class, dtype, length, width):
    """The compiled norms sum their weight and bias gradients over rows in two levels (`norms._row_sum`); the
    gradients of x, weight and bias equal those of `F.layer_norm` / `F.rms_norm` on the widened input."""
    from spiking_lm.nn.norms import normalize_and_fire

    torch.manual_seed(0)
    rms = norm_class is RMSNorm
    norm = RMSNorm(width, eps=1e-5) if rms else torch.nn.LayerNorm(width, eps=1e-5)
    with torch.no_grad():
        for parameter in norm.parameters():
            parameter.uniform_(0.5, 1.5)
    x = (torch.randn(2, 3, length, width) * 2).to(dtype).requires_grad_()
    grad = torch.randn(2, 3, length, width)
    neuron = build_neuron("lif", backend="inductor")
    widen = torch.float32 if dtype == torch.bfloat16 else None
    spikes = normalize_and_fire(norm, neuron, x, dtype, None, widen)
    wide = x.detach().float().requires_grad_()
    if rms:
        reference = torch.nn.functional.rms_norm(wide, (width,), norm.weight, 1e-5)
    else:
        reference = torch.nn.functional.layer_norm(wide, (width,), norm.weight, norm.bias, 1e-5)
    expected = build_neuron("lif", backend="torch")(reference)
    assert torch.equal(spikes, expected)
    params = list(norm.parameters())
    got = torch.autograd.grad(spikes, [x, *params], grad)
    want = torch.autograd.grad(expected, [wide, *params], grad)
    assert got[0].dtype == dtype
    torch.testing.assert_close(got[0].float(), want[0].to(dtype).float(), rtol=1e-2, atol=1e-2)
    for a, b in zip(got[1:], want[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("norm_class", [torch.nn.LayerNorm, RMSNorm])
def test_a_bf16_gemm_output_is_kept_as_bf16_by_the_norm_that_widens_it(norm_class):
    """`norms.normalize` with a compute dtype (an output norm after a bf16 spike GEMM): the same values as the
    module on the widened input, the input kept for backward in bf16 (not a widened fp32 copy), its gradient
    returned in bf16."""
    from spiking_lm.nn.norms import normalize

    torch.manual_seed(0)
    norm = norm_class(256, eps=1e-5) if norm_class is torch.nn.LayerNorm else RMSNorm(256, eps=1e-5)
    x = torch.randn(2, 4, 64, 256).bfloat16().requires_grad_()
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        y = normalize(norm, x, torch.float32, backend="inductor")
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, norm(x.detach().float()), rtol=1e-5, atol=1e-5)
    assert not [t for t in kept if t.dtype == torch.float32 and t.shape == x.shape]
    assert [t for t in kept if t.dtype == torch.bfloat16 and t.shape == x.shape]
    grad = torch.randn_like(y)
    (got,) = torch.autograd.grad(y, x, grad)
    wide = x.detach().float().requires_grad_()
    (want,) = torch.autograd.grad(norm(wide), wide, grad)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.bfloat16().float(), rtol=1e-2, atol=1e-2)


def test_grouped_spike_linears_train_when_only_some_outputs_reach_the_loss():
    torch.manual_seed(0)
    neuron = build_neuron("lif")
    linears = [torch.nn.Linear(8, 4), torch.nn.Linear(8, 6)]
    spikes = neuron(torch.randn(2, 3, 8) * 3)
    outputs = linears_on_spikes(linears, spikes, neuron)
    outputs[1].pow(2).sum().backward()
    assert torch.equal(linears[0].weight.grad, torch.zeros_like(linears[0].weight))
    expected = torch.autograd.grad(
        torch.nn.functional.linear(spikes, linears[1].weight).add(linears[1].bias).pow(2).sum(), linears[1].weight
    )[0]
    torch.testing.assert_close(linears[1].weight.grad, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("exact_outputs", [False, True])
def test_bf16_spikes_into_a_bf16_spike_linear_give_the_float32_spikes_results(exact_outputs):
    """Spikes that arrive in bf16 (`low_spike_dtype`) are the GEMM operand as they are, kept as uint8 when they
    feed several Linears and as bf16 for one; outputs and gradients equal those of the same spikes in fp32, the
    input gradient comes back in bf16, and ``exact_outputs`` hands over the bf16 GEMM output that the fp32 output
    is the widening of."""
    from spiking_lm.nn.spike_linear import exact_output_dtype, low_spike_dtype

    torch.manual_seed(0)
    neuron = build_neuron("lif")
    linears = [torch.nn.Linear(64, 32) for _ in range(3)]
    assert low_spike_dtype(linears, neuron, BF16) == exact_output_dtype(linears, neuron, BF16) == torch.bfloat16
    assert low_spike_dtype(linears, build_neuron("nilif"), BF16) is None  # counts/4 take no bf16 detour
    spikes = neuron(torch.randn(2, 8, 64) * 3).detach()
    grads = [torch.randn(2, 8, 32).bfloat16().float() for _ in linears]  # bf16 values: the GEMMs round them anyway
    parameters = [p for linear in linears for p in linear.parameters()]
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        x = spikes.to(dtype).requires_grad_()
        exact = dtype == torch.bfloat16 and exact_outputs
        outputs = linears_on_spikes(linears, x, neuron, BF16, exact_outputs=exact)
        kept = outputs[0].grad_fn.saved_tensors[0]
        assert kept.dtype == torch.uint8
        output_grads = [g.to(outputs[0].dtype) for g in grads]
        results.append([*outputs, *torch.autograd.grad(outputs, [x, *parameters], output_grads)])
    assert results[1][3].dtype == torch.bfloat16  # the input gradient, in the input's dtype
    single = linear_on_spikes(linears[0], spikes.bfloat16().requires_grad_(), neuron, BF16)
    assert single.grad_fn.saved_tensors[0].dtype == torch.bfloat16  # one Linear: kept as it came
    for index, (reference, low) in enumerate(zip(*results, strict=True)):
        if exact_outputs and index < 3:
            assert low.dtype == torch.bfloat16 and torch.equal(low.float(), reference)
        elif exact_outputs and index >= 4 and (index - 4) % 2 == 1:  # bias gradients: sums rounded to bf16
            torch.testing.assert_close(low, reference, rtol=2**-8, atol=0)
        else:
            assert torch.equal(low.float() if index == 3 else low, reference), index


@pytest.mark.parametrize("width", [64, 2048])  # fused compiled norm → neuron, and a recomputed region
def test_normalize_and_fire_widens_bf16_inputs_and_splits_heads_like_the_plain_composition(width):
    """A bf16 GEMM output goes in as it is and widens inside (compiled with the norm); spikes may come out in bf16
    and already split into heads, contiguous where the compiled function writes them: same values and gradients
    as widen → norm → neuron → cast → split."""
    from spiking_lm.nn.norms import FUSED_NORM_MAX_WIDTH, normalize_and_fire, split_heads

    torch.manual_seed(0)
    neuron = build_neuron("lif", backend="inductor")
    norm = torch.nn.LayerNorm(width)
    x = (torch.randn(4, 8, 64, width) * 2).bfloat16().requires_grad_()
    grad = torch.randn(4, 8, 4, 64, width // 4)
    expected = split_heads(neuron(norm(x.float())).bfloat16(), 4)
    expected_grads = torch.autograd.grad(expected, [x, *norm.parameters()], grad.bfloat16())
    got = normalize_and_fire(norm, neuron, x, torch.bfloat16, torch.bfloat16, torch.float32, heads=4)
    assert got.shape == (4, 8, 4, 64, width // 4) and got.dtype == torch.bfloat16
    assert got.is_contiguous() == (width <= FUSED_NORM_MAX_WIDTH)
    assert torch.equal(got, expected)
    got_grads = torch.autograd.grad(got, [x, *norm.parameters()], grad.bfloat16())
    for a, b in zip(got_grads, expected_grads, strict=True):  # compiled and eager sums differ in order only
        scale = float(b.abs().max())
        torch.testing.assert_close(a, b, rtol=0, atol=scale * (2**-7 if a.dtype == torch.bfloat16 else 1e-5))


@pytest.mark.parametrize("time_steps", [1, 4])
def test_normalize_and_fire_compiles_without_gradients_into_heads(time_steps):
    """A no-grad forward of a model in training mode (an evaluation inside training) fires into the heads' layout
    through the inference recurrence; it used to write each step into a non-contiguous slice, which dynamo
    rejects, and under ``auto`` that sent the kernel eager for the rest of the process. ``inductor`` raises
    instead of falling back, so this compiles or fails."""
    from spiking_lm.nn.norms import normalize_and_fire, split_heads

    torch.manual_seed(0)
    neuron = build_neuron("lif", backend="inductor")
    norm = torch.nn.LayerNorm(64)
    x = torch.randn(time_steps, 8, 32, 64) * 2
    with torch.no_grad():
        got = normalize_and_fire(norm, neuron, x, heads=4)
        expected = split_heads(neuron(norm(x)), 4)
    assert torch.equal(got, expected)
