import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spiking_lm.nn import NEURONS, binary_to_integer, build_neuron, integer_to_binary

INTEGER = ["ilif", "nilif", "asn", "nasn"]


def unfolded_linear(linear, train, neuron):
    """Linear applied to each binary virtual step, summed per step, with scale and offset folded in."""
    per_step = binary_to_integer(train @ linear.weight.T, neuron.spike_max)
    offset = linear.weight.sum(1) * neuron.spike_offset
    return per_step * neuron.spike_scale + offset + linear.bias


def integer_and_binary(name, x, alpha=0.0, spike_max=4):
    kwargs = {"alpha": alpha} if name in ("asn", "nasn") else {}
    neuron = build_neuron(name, spike_max=spike_max, **kwargs).to(x.dtype)
    spikes = neuron(x)
    neuron.set_spike_mode("binary")
    return neuron, spikes, neuron(x)


@pytest.mark.parametrize("name", INTEGER)
@pytest.mark.parametrize("steps", [1, 3])
def test_binary_train_has_the_integer_counts(name, steps):
    x = torch.randn(steps, 5, 32, dtype=torch.float64) * 3
    neuron, spikes, train = integer_and_binary(name, x, alpha=-2.3)
    assert train.shape == (steps * 4, 5, 32)
    assert set(train.unique().tolist()) <= {0.0, 1.0}
    counts = binary_to_integer(train, 4)
    assert torch.equal(counts * neuron.spike_scale + neuron.spike_offset, spikes)
    # virtual steps fire first-come: rows t*D .. t*D + s - 1 are ones, the rest zeros
    grouped = train.view(steps, 4, 5, 32)
    assert torch.all(grouped[:, 1:] <= grouped[:, :-1])


@pytest.mark.parametrize("name", INTEGER)
@pytest.mark.parametrize("alpha", [0.0, 1.7, -2.2])
def test_linear_on_binary_train_equals_linear_on_integer_spikes_float64(name, alpha):
    x = torch.randn(2, 7, 48, dtype=torch.float64) * 4
    neuron, spikes, train = integer_and_binary(name, x, alpha=alpha)
    linear = torch.nn.Linear(48, 24, dtype=torch.float64)
    torch.testing.assert_close(unfolded_linear(linear, train, neuron), linear(spikes), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", INTEGER)
def test_binary_equivalence_is_bit_exact_with_dyadic_weights(name):
    # With weights on a 1/64 grid every partial sum is representable in float64: no rounding at all.
    x = torch.randn(2, 6, 40, dtype=torch.float64) * 4
    neuron, spikes, train = integer_and_binary(name, x, alpha=0.6)
    linear = torch.nn.Linear(40, 16, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(torch.randint(-64, 65, linear.weight.shape) / 64)
        linear.bias.copy_(torch.randint(-64, 65, linear.bias.shape) / 64)
    assert torch.equal(unfolded_linear(linear, train, neuron), linear(spikes))


@pytest.mark.parametrize("name", INTEGER)
def test_binary_equivalence_float32_relative_error(name):
    x = torch.randn(3, 16, 128) * 4
    neuron, spikes, train = integer_and_binary(name, x, alpha=1.2, spike_max=8)
    linear = torch.nn.Linear(128, 64)
    expected = linear(spikes)
    error = (unfolded_linear(linear, train, neuron) - expected).norm() / expected.norm()
    assert error.item() <= 1e-5


@settings(max_examples=50, deadline=None)
@given(
    spike_max=st.integers(1, 9),
    steps=st.integers(1, 4),
    width=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_integer_binary_round_trip(spike_max, steps, width, seed):
    generator = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, spike_max + 1, (steps, width), generator=generator).float()
    train = integer_to_binary(counts, spike_max)
    assert train.shape == (steps * spike_max, width)
    assert torch.equal(binary_to_integer(train, spike_max), counts)


def test_coding_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"integers in \[0, 4\]"):
        integer_to_binary(torch.tensor([[5.0]]), 4)
    with pytest.raises(ValueError, match=r"integers in \[0, 4\]"):
        integer_to_binary(torch.tensor([[1.5]]), 4)
    with pytest.raises(ValueError, match="spike_max must be an integer >= 1"):
        integer_to_binary(torch.tensor([[1.0]]), 0)
    with pytest.raises(ValueError, match="multiple of spike_max=4"):
        binary_to_integer(torch.zeros(6, 2), 4)


def test_spike_mode_switch_back_and_errors():
    neuron = build_neuron("nilif")
    x = torch.randn(1, 4, 8) * 3
    before = neuron(x)
    neuron.set_spike_mode("binary")
    assert neuron(x).shape[0] == 4
    neuron.set_spike_mode("integer")
    assert torch.equal(neuron(x), before)
    with pytest.raises(ValueError, match="spike mode must be one of"):
        neuron.set_spike_mode("ternary")


@pytest.mark.parametrize("name", sorted(NEURONS))
def test_every_neuron_describes_its_output_with_one_coding(name):
    torch.manual_seed(0)
    neuron = build_neuron(name, strict=False, time_steps=2, spike_max=4)
    spikes = neuron(torch.randn(2, 3, 16) * 2)
    coding = neuron.coding
    assert coding.mode == "integer" and not coding.in_binary_mode
    if coding.binary:
        assert set(spikes.unique().tolist()) <= {0.0, 1.0} and coding.unit == 1.0
    if coding.counts:  # values are scale · k + offset with integer 0 <= k <= max
        counts = (spikes - coding.offset) / coding.scale
        assert torch.allclose(counts, counts.round(), atol=1e-5)
        assert counts.min() >= -1e-5 and counts.max() <= coding.max + 1e-5
    else:  # ternary spikes with learned scales are no integer counts: no int8 unit, no uint8 coding
        assert coding.unit is None and coding.linear is None
    if hasattr(neuron, "set_spike_mode"):  # the integer family: a binary train folds back into the same values
        x = torch.randn(2, 3, 16) * 2
        integer = neuron(x)
        neuron.set_spike_mode("binary")
        assert neuron.coding.in_binary_mode and neuron.coding.max == 4
        train = neuron(x)
        assert train.shape[0] == 2 * neuron.coding.max
        torch.testing.assert_close(neuron.coding.values(train), integer)


@pytest.mark.parametrize("name", ["ilif", "nilif"])
def test_an_integer_neurons_coding_follows_its_spike_max(name):
    """The coding is kept between calls: a D assigned after construction must not leave the old one in place."""
    neuron = build_neuron(name, spike_max=4)
    assert neuron.coding.max == 4
    neuron.spike_max = 8
    assert neuron.coding.max == 8 and neuron.coding.scale == (0.125 if name == "nilif" else 1.0)
    counts = neuron.coding.values(neuron(torch.full((1, 3), 7.0))) / neuron.coding.scale
    assert torch.equal(counts, torch.full((1, 3), 7.0))


def test_zero_one_names_exactly_the_neurons_that_emit_0_1_spikes():
    """SFSA's compact products rely on it: 0/1 operands are exact in uint8 and their overlaps are counts."""
    assert build_neuron("lif").coding.zero_one and build_neuron("psn", time_steps=4).coding.zero_one
    assert not build_neuron("nilif").coding.zero_one  # counts / 4
    assert not build_neuron("ilif").coding.zero_one  # counts up to 4
    assert not build_neuron("asn").coding.zero_one  # an offset
    assert not build_neuron("tlif").coding.zero_one  # ternary, learned scales
