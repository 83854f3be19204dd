"""The event-driven inference path of spike-fed Linear layers against the dense GEMM."""

import pytest
import torch
from torch import nn

from spiking_lm.nn import bitpack, build_neuron, cpu_linear, event
from spiking_lm.nn.event import EVENT_MAX_DENSITY, gather_rows
from spiking_lm.nn.execution import SpikeExecution
from spiking_lm.nn.recording import WeightReads, recording
from spiking_lm.nn.spike_linear import linear_on_spikes


@pytest.fixture(autouse=True)
def gather_even_small_matrices(monkeypatch):
    """Tiny test layers stay under the size floor that sends cache-resident matrices to the GEMM."""
    monkeypatch.setattr(event, "MIN_WEIGHT_BYTES", 0)
    monkeypatch.setattr(cpu_linear, "MIN_WEIGHT_BYTES", 0)


EXECUTION = SpikeExecution("event")


def event_linear(linear, spikes, neuron):
    return event.event_linears((linear,), spikes, neuron, EXECUTION)[0]


def event_linears(linears, spikes, neuron):
    return event.event_linears(linears, spikes, neuron, EXECUTION)


def sparse_values(rows, width, density, generator, levels=4):
    keep = torch.rand(rows, width, generator=generator) < density
    return keep * torch.randint(1, levels + 1, (rows, width), generator=generator).float()


@pytest.mark.parametrize("rows", [1, 4, 33])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.25, 0.9])
def test_gathering_rows_equals_the_matrix_product(rows, density):
    generator = torch.Generator().manual_seed(rows)
    values = sparse_values(rows, 48, density, generator)
    weight_t = torch.randn(48, 20, generator=generator)
    torch.testing.assert_close(gather_rows(values, weight_t), values @ weight_t, rtol=1e-5, atol=1e-5)


INTEGER = ["ilif", "nilif", "asn", "nasn"]
CASES = [(name, "integer") for name in ["lif", "tlif", "psn", *INTEGER]] + [(name, "binary") for name in INTEGER]


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_event_linear_equals_the_dense_linear_on_every_neuron(name, mode):
    torch.manual_seed(0)
    neuron = build_neuron(name, strict=False, time_steps=2, spike_max=4).eval()
    if mode == "binary":
        neuron.set_spike_mode("binary")
    linear = nn.Linear(64, 24).eval()
    with torch.no_grad():
        spikes = neuron(torch.randn(2, 3, 5, 64) * 1.5)
        dense = linear_on_spikes(linear, spikes, neuron)
        event = event_linear(linear, spikes, neuron)
    assert event.shape == dense.shape
    torch.testing.assert_close(event, dense, rtol=1e-5, atol=1e-5)


def test_both_sides_of_the_density_rule_are_exercised():
    linear = nn.Linear(40, 8).eval()
    generator = torch.Generator().manual_seed(3)
    for density in (EVENT_MAX_DENSITY / 3, 0.95):
        spikes = sparse_values(12, 40, density, generator, levels=1).view(2, 6, 40)
        with torch.no_grad():
            torch.testing.assert_close(event_linear(linear, spikes, None), linear(spikes), rtol=1e-5, atol=1e-5)


def test_the_cached_transposed_weight_follows_weight_updates():
    linear = nn.Linear(16, 4).eval()
    spikes = (torch.rand(1, 3, 16) < 0.2).float()
    with torch.no_grad():
        event_linear(linear, spikes, None)
        linear.weight.mul_(2)  # in place: the cache must notice
        torch.testing.assert_close(event_linear(linear, spikes, None), linear(spikes), rtol=1e-6, atol=1e-6)
        linear.weight = nn.Parameter(torch.randn(4, 16))  # replaced
        torch.testing.assert_close(event_linear(linear, spikes, None), linear(spikes), rtol=1e-6, atol=1e-6)
        linear.bias.add_(1)  # the bias is added from the same cache
        torch.testing.assert_close(event_linear(linear, spikes, None), linear(spikes), rtol=1e-6, atol=1e-6)
        linear.bias = nn.Parameter(torch.randn(4))
        torch.testing.assert_close(event_linear(linear, spikes, None), linear(spikes), rtol=1e-6, atol=1e-6)


def test_a_group_where_only_some_linears_have_a_bias():
    linears = [nn.Linear(16, 4, bias=False).eval(), nn.Linear(16, 6).eval()]
    spikes = (torch.rand(2, 1, 16) < 0.3).float()
    with torch.no_grad():
        for output, linear in zip(event_linears(linears, spikes, None), linears, strict=True):
            torch.testing.assert_close(output, linear(spikes), rtol=1e-6, atol=1e-6)


def test_gathering_is_what_runs_below_the_density_limit(monkeypatch):
    linear = nn.Linear(40, 8).eval()
    spikes = (torch.rand(1, 2, 40, generator=torch.Generator().manual_seed(0)) < 0.1).float()
    with torch.no_grad(), recording(WeightReads()) as reads:
        event_linear(linear, spikes, None)
        assert reads["gathered_calls"] == 1
        assert reads["gathered_bytes"] == torch.count_nonzero(spikes).item() * 8 * 4
        monkeypatch.setattr(event, "MIN_WEIGHT_BYTES", 10**9)  # small matrices go to the GEMM
        event_linear(linear, spikes, None)
    assert reads["gathered_calls"] == 1 and reads["dense_bytes"] == 40 * 8 * 4


def test_the_density_limit_is_higher_for_few_rows_where_the_gemm_is_memory_bound():
    assert event.gather_limit(1, 100) == pytest.approx(70)  # decoding: up to 70 % of the matrix's rows
    per_row = [event.gather_limit(rows, 100) / (rows * 100) for rows in (4, 8, 16, 24, 32, 128, 512)]
    assert per_row == sorted(per_row, reverse=True)
    assert per_row[1] == pytest.approx(0.454) and per_row[-1] == pytest.approx(event.EVENT_MAX_DENSITY)
    linear = nn.Linear(40, 8).eval()
    for rows, gathered in ((8, 1), (128, 0)):  # 40 % density: a gather for 8 rows, the GEMM for 128
        spikes = torch.zeros(rows, 40)
        spikes[:, :16] = 1.0
        with torch.no_grad(), recording(WeightReads()) as reads:
            torch.testing.assert_close(event_linear(linear, spikes, None), linear(spikes), rtol=1e-5, atol=1e-5)
        assert reads["gathered_calls"] == gathered


@pytest.mark.parametrize(("name", "mode"), [("nilif", "integer"), ("asn", "integer"), ("nilif", "binary")])
def test_linears_sharing_spikes_gather_together_and_equal_each_dense_linear(name, mode):
    torch.manual_seed(1)
    neuron = build_neuron(name, strict=False, spike_max=4).eval()
    if mode == "binary":
        neuron.set_spike_mode("binary")
    linears = [nn.Linear(40, width).eval() for width in (8, 12, 8)]
    with torch.no_grad():
        spikes = neuron(torch.randn(1, 2, 3, 40) * 0.45)
        dense = [linear_on_spikes(linear, spikes, neuron) for linear in linears]
        with recording(WeightReads()) as reads:
            grouped = event_linears(linears, spikes, neuron)
        assert reads["calls"] == 3 and reads["gathered_calls"] == 3
        for got, expected in zip(grouped, dense, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        linears[1].weight.mul_(-3)  # the concatenated copy must follow an update of any member
        torch.testing.assert_close(
            event_linears(linears, spikes, neuron)[1], linear_on_spikes(linears[1], spikes, neuron)
        )


def test_the_attention_mask_is_shared_between_layers_and_rebuilt_when_it_changes():
    from spiking_lm.nn.attention import allowed_keys

    def shared_allowed_keys(mask, *arguments):
        return execution.allowed_keys(allowed_keys, mask, *arguments)

    execution = SpikeExecution()
    mask = torch.tensor([[0, 1, 1, 1]])
    first = shared_allowed_keys(mask, 4, 4, True, None, 1)
    assert shared_allowed_keys(mask, 4, 4, True, None, 1) is first  # the next layer reuses it
    assert torch.equal(first, allowed_keys(mask, 4, 4, True, None, 1))
    mask[0, 0] = 1  # changed in place: rebuilt
    assert torch.equal(shared_allowed_keys(mask, 4, 4, True, None, 1), allowed_keys(mask, 4, 4, True, None, 1))
    other = mask.clone()  # another mask and another query length: rebuilt
    assert torch.equal(shared_allowed_keys(other, 1, 4, True, None, 1), allowed_keys(other, 1, 4, True, None, 1))


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_a_single_row_is_gathered_in_one_piece_per_thread(monkeypatch, two_threads):
    bags = []
    original = torch.nn.functional.embedding_bag

    def spy(indices, weight, offsets, **options):
        bags.append(offsets.numel())
        return original(indices, weight, offsets, **options)

    monkeypatch.setattr(torch.nn.functional, "embedding_bag", spy)
    generator = torch.Generator().manual_seed(5)
    weight_t = torch.randn(640, 12, generator=generator)
    many = sparse_values(1, 640, 0.5, generator)  # ~320 spikes: two pieces of at least EVENT_MIN_BAG
    few = sparse_values(1, 640, 0.05, generator)  # ~32 spikes: one bag
    for values in (many, few):
        torch.testing.assert_close(gather_rows(values, weight_t), values @ weight_t, rtol=1e-5, atol=1e-5)
    assert bags == [2, 1]


@pytest.mark.parametrize("rows", [1, 5, cpu_linear.FEW_ROWS_MAX, cpu_linear.FEW_ROWS_MAX + 1])
@pytest.mark.parametrize("out_features", [50, 51])
@pytest.mark.parametrize("threads", [2, 3])
def test_few_rows_linear_equals_the_linear(rows, out_features, threads, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    calls = []
    original = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *args: calls.append(1) or original(*args))
    linear = nn.Linear(24, out_features)
    x = torch.randn(rows, 1, 24)
    with torch.no_grad():
        torch.testing.assert_close(
            cpu_linear.few_rows_linear(x, linear.weight, linear.bias), linear(x), rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(
            cpu_linear.few_rows_linear(x, linear.weight), x @ linear.weight.t(), rtol=1e-5, atol=1e-6
        )
    assert bool(calls) == (rows <= cpu_linear.FEW_ROWS_MAX)  # split into blocks only for few rows


def test_few_rows_linear_keeps_autograd_and_the_head_keeps_linear_keys():
    head = cpu_linear.FewRowsLinear(16, 40)
    x = torch.randn(1, 16, requires_grad=True)
    head(x).pow(2).sum().backward()
    reference = nn.Linear(16, 40)
    reference.load_state_dict(head.state_dict())
    y = x.detach().clone().requires_grad_()
    reference(y).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, y.grad)
    assert head.weight.grad is not None and list(head.state_dict()) == ["weight", "bias"]


def test_int8_pieces_hold_a_weight_to_fp32_precision():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(37, 50, generator=generator) * torch.logspace(-6, 2, 37).unsqueeze(1)
    weight[3] = 0  # an all-zero row keeps a usable scale
    pieces, scale = event.int8_pieces(weight)
    assert pieces.dtype == torch.int8 and pieces.shape == (50, 3 * 37)
    assert pieces.min() >= -127  # every piece stays within ±127: no int8 overflow at -128
    first, second, third = pieces.double().t().split(37)
    rebuilt = scale.double().unsqueeze(1) * (first + second / 254 + third / 254**2)
    row_max = weight.abs().amax(1, keepdim=True).double()
    assert ((rebuilt - weight.double()).abs() <= row_max * 6.2e-8).all()


@pytest.mark.parametrize("levels", [1, 4, 127])
def test_int8_products_equal_the_float64_product(levels):
    generator = torch.Generator().manual_seed(levels)
    weight = torch.randn(24, 40, generator=generator)
    counts = torch.randint(0, levels + 1, (9, 40), generator=generator)
    pieces, scale = event.int8_pieces(weight)
    got = event.int8_linear(counts.to(torch.int8), pieces, scale).double()
    expected = counts.double() @ weight.double().t()
    # fp32's own bound for a sum of 40 products: relative to the sum of absolute terms
    bound = (counts.double() @ weight.double().abs().t()) * 40 * 2**-24
    assert ((got - expected).abs() <= bound).all()


@pytest.mark.parametrize(
    "name,kwargs,unit", [("lif", {}, 1.0), ("nilif", {}, 0.25), ("ilif", {"spike_max": 8}, 1.0), ("tlif", {}, None)]
)
def test_the_coding_unit_names_the_step_between_spike_values(name, kwargs, unit):
    from spiking_lm.nn.spike_coding import coding_of

    assert build_neuron(name, **kwargs).coding.unit == unit
    assert coding_of(None).unit is None  # real values have no unit
    assert build_neuron("ilif", spike_max=200).coding.unit is None  # counts over 127 do not fit int8


@pytest.mark.parametrize(
    "name,kwargs", [("lif", {}), ("nilif", {}), ("asn", {"alpha": -1.3}), ("ilif", {"spike_max": 3})]
)
def test_the_int8_side_of_the_rule_equals_the_dense_linear(name, kwargs, monkeypatch):
    monkeypatch.setattr(event, "EVENT_MAX_DENSITY", 0.0)
    monkeypatch.setattr(event, "EVENT_FEW_ROWS_DENSITY", 0.0)
    monkeypatch.setattr(event, "EVENT_MAX_ROWS_READ", 0.0)
    torch.manual_seed(0)
    neuron = build_neuron(name, **kwargs)
    linears = [nn.Linear(40, 24).eval(), nn.Linear(40, 8, bias=False).eval()]
    spikes = neuron(torch.randn(1, 6, 40) * 3)
    with torch.no_grad(), recording(WeightReads()) as reads:
        outputs = event_linears(linears, spikes, neuron)
        for output, linear in zip(outputs, linears, strict=True):
            torch.testing.assert_close(output, linear_on_spikes(linear, spikes, neuron), rtol=1e-6, atol=1e-6)
        assert reads["int8_calls"] == 2 and reads["dense_bytes"] == 40 * 32 * 3
        linears[0].weight.mul_(-3)  # the int8 pieces follow weight updates like the transposed copy
        output = event_linears(linears, spikes, neuron)[0]
        torch.testing.assert_close(output, linear_on_spikes(linears[0], spikes, neuron), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("width", [8, 63, 64, 100, 130])
def test_packed_bits_round_trip_and_and_popcount_equals_the_product(width):
    generator = torch.Generator().manual_seed(width)
    query = (torch.rand(3, 2, 4, width, generator=generator) < 0.5).float()
    keys = (torch.rand(3, 2, 9, width, generator=generator) < 0.5).float()
    keys[0, 0, 0] = 1.0  # every bit of a word set, the sign bit included
    words = bitpack.pack_bits(keys)
    assert words.dtype == torch.int64 and words.shape == (3, 2, 9, -(-width // 64))
    assert torch.equal(bitpack.unpack_bits(words, width), keys)
    counts = bitpack.and_popcount(bitpack.pack_bits(query), words)
    assert counts.dtype == torch.int64
    assert torch.equal(counts.float(), query @ keys.transpose(-1, -2))


def test_popcount_counts_the_bits_of_any_word():
    words = torch.tensor([0, 1, -1, -(2**63), 2**63 - 1, 0x5555555555555555, -0x5555555555555556])
    expected = [bin(int(w) & (2**64 - 1)).count("1") for w in words]
    assert bitpack.popcount(words).tolist() == expected
