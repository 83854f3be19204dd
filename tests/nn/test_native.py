"""The native W8 decoding kernels (`spiking_lm.nn.native`): bit for bit the torch path, and a clear fallback."""

import logging

import pytest
import torch

import spiking_lm
from spiking_lm.nn import decode_step, decoding, event, functional, native, self_attention
from spiking_lm.nn.bitpack import pack_bits
from spiking_lm.nn.weight_quantization import Int8Linear, int8_linears_on_spikes

from ..models.conftest import CAUSAL_LM_CLASSES, model_inputs, tiny_model


@pytest.fixture
def without_native(monkeypatch):
    """Within the test, the library counts as unavailable (what a machine without a compiler gets)."""

    def switch_off():
        monkeypatch.setattr(native, "_state", {"library": None, "tried": True})

    return switch_off


class Counts:
    """A stand-in neuron that only describes its values."""

    def __init__(self, scale=1.0, offset=0.0, spike_max=4, mode="integer"):
        self.coding = spiking_lm.nn.SpikeCoding(scale=scale, offset=offset, max=spike_max, binary=spike_max == 1,
                                                mode=mode)  # fmt: skip


def test_the_library_builds_here():
    assert native.native_library() is not None  # CI has a C compiler: the fast path is what the tests check


@pytest.mark.parametrize("scale,offset", [(1.0, 0.0), (0.25, 0.0), (0.25, torch.tensor(0.5)), (1 / 3, 0.0)])
@pytest.mark.parametrize("rows,density", [(1, 0.05), (1, 0.5), (4, 0.3), (4, 1.0)])
def test_native_products_are_the_torch_paths_bits(scale, offset, rows, density, without_native):
    generator = torch.Generator().manual_seed(rows)
    layers = [Int8Linear.from_linear(torch.nn.Linear(96, width)) for width in (40, 24)]
    layers[1].bias = None
    counts = torch.randint(1, 5, (rows, 96), generator=generator) * (torch.rand(rows, 96, generator=generator)
                                                                     < density)  # fmt: skip
    values = (counts * scale + offset).float()
    fast = int8_linears_on_spikes(layers, values, Counts(scale, offset))
    without_native()
    slow = int8_linears_on_spikes(layers, values, Counts(scale, offset))
    for a, b in zip(fast, slow, strict=True):
        assert a.shape == b.shape and torch.equal(a, b)


def plan_of(weight, scale=None):
    """A `ProductPlan` of one int8 ``weight`` ``(in, out)`` with unit scales (or ``scale``)."""
    return native.ProductPlan([weight], [torch.ones(weight.shape[1]) if scale is None else scale], [None], [None])


def test_native_counts_refuse_values_that_are_not_int8_counts():
    plan = plan_of(torch.ones(8, 3, dtype=torch.int8))
    values = torch.zeros(2, 8)
    outputs, selected = native.spike_products(values, plan, 0.0, 1.0)
    assert selected == 0 and torch.equal(outputs[0], torch.zeros(2, 3))
    values[1, 3] = float("nan")
    assert native.spike_products(values, plan, 0.0, 1.0) is None
    assert native.spike_products(torch.full((1, 8), 200.0), plan, 0.0, 1.0) is None  # a count over 127


@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("neuron_type,time_steps", [("nilif", 1), ("lif", 4), ("asn", 1)])
def test_w8_decoding_is_the_same_with_and_without_the_native_kernels(
    model_class, neuron_type, time_steps, without_native
):
    model = tiny_model(model_class, neuron_type=neuron_type, time_steps=time_steps).quantize_weights()
    model.set_inference_backend("event")
    prompt = model_inputs(model_class, batch=1, length=5)["input_ids"]
    options = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0, "output_scores": True,
               "return_dict_in_generate": True}  # fmt: skip
    with torch.no_grad():
        fast = model.generate(prompt, **options)
        without_native()
        slow = model.generate(prompt, **options)
    assert torch.equal(fast.sequences, slow.sequences)
    assert all(torch.equal(a, b) for a, b in zip(fast.scores, slow.scores, strict=True))


def test_a_machine_without_a_compiler_gets_one_warning_and_the_torch_path(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("SPIKING_LM_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_state", {"library": None, "tried": False})
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert native.native_library() is None
        assert native.native_library() is None
    assert len(caplog.records) == 1 and "torch operations" in caplog.records[0].getMessage()
    layer = Int8Linear.from_linear(torch.nn.Linear(8, 3))
    values = torch.tensor([[1.0, 0, 0, 2, 0, 0, 0, 1]])
    expected = (values @ layer.dequantized_weight().T.double().float()) + layer.bias
    torch.testing.assert_close(int8_linears_on_spikes([layer], values, Counts())[0], expected)


def test_native_kernels_can_be_switched_off(monkeypatch, caplog):
    monkeypatch.setenv("SPIKING_LM_NATIVE", "0")
    monkeypatch.setattr(native, "_state", {"library": None, "tried": False})
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert native.native_library() is None
    assert not caplog.records


@pytest.mark.parametrize("neuron_type,time_steps", [("nilif", 1), ("lif", 4), ("ilif", 2)])
@pytest.mark.parametrize("w8,heads", [(False, 4), (True, 4), (True, 2)])
def test_sfsa_decoding_on_the_int8_cache_is_the_widened_caches_bits(neuron_type, time_steps, w8, heads, monkeypatch,
                                                                    without_native):  # fmt: skip
    """The event backend keeps K/V as int8 counts; decoding SFSA multiplies them in place instead of widening the
    whole cache at every step: the same scores and tokens, bit for bit. With 2 heads of 16 (√16 = 4) the context
    is counts times a power of two and the W8 output projection multiplies them natively (`counts_product`);
    with 4 heads of 8 it is not, and the module's own product runs."""
    monkeypatch.setattr(event, "MIN_WEIGHT_BYTES", 0)  # the tiny model's caches take the int8 format
    calls, products = [], []
    original, product = decoding.sfsa_decode, self_attention.counts_product
    run_sfsa, run_product = decode_step.run_sfsa_decode, decode_step.run_counts_product  # a decoding step's calls
    monkeypatch.setattr(decoding, "sfsa_decode", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setattr(decode_step, "run_sfsa_decode", lambda *a: calls.append(1) or run_sfsa(*a))
    monkeypatch.setattr(self_attention, "counts_product", lambda *a: products.append(1) or product(*a))
    monkeypatch.setattr(decode_step, "run_counts_product", lambda *a: products.append(1) or run_product(*a))
    model = tiny_model(spiking_lm.BiSpikCLMForCausalLM, neuron_type=neuron_type, time_steps=time_steps,
                       num_attention_heads=heads)  # fmt: skip
    if w8:
        model.quantize_weights()
    model.set_inference_backend("event")
    prompt = model_inputs(spiking_lm.BiSpikCLMForCausalLM, batch=2, length=5)["input_ids"]
    options = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0, "output_scores": True,
               "return_dict_in_generate": True}  # fmt: skip
    with torch.no_grad():
        fast = model.generate(prompt, **options)
        assert calls  # the fused native attention ran
        assert bool(products) == (w8 and heads == 2)
        binary = neuron_type == "lif"  # binary K: kept as bits, which the native attention reads at any size
        assert fast.past_key_values.layers[0].keys.dtype == (torch.int64 if binary else torch.int8)
        without_native()
        slow = model.generate(prompt, **options)
        assert slow.past_key_values.layers[0].keys.dtype == torch.int8  # the torch AND/popcount: large caches only
    assert torch.equal(fast.sequences, slow.sequences)
    assert all(torch.equal(a, b) for a, b in zip(fast.scores, slow.scores, strict=True))


@pytest.mark.parametrize("steps,width,unit,value_unit", [(1, 64, 1.0, 1.0), (4, 16, 0.25, 0.5), (2, 8, 1.0, 0.25)])
@pytest.mark.parametrize("query_rows", [1, 3])
def test_fused_sfsa_decoding_is_the_compositions_bits(steps, width, unit, value_unit, query_rows):
    """`sfsa_decode` against the composition it replaces (the two product kernels and torch's scaling, attention
    LIF and division), on a growing cache's strided view, with enough keys for any rounding difference to show."""
    generator = torch.Generator().manual_seed(steps * width)
    batch, heads, length = 2, 3, 300
    query = torch.randint(0, 5, (steps, batch, heads, query_rows, width), generator=generator).float() * unit
    buffers = torch.randint(-127, 128, (2, batch * steps * heads, length + 40, width), dtype=torch.int8,
                            generator=generator)  # fmt: skip
    keys, values = buffers[0, :, :length], buffers[1, :, :length]  # views into longer buffers, as decoding has
    qk_scale, score_scale, beta = unit * 0.7, 0.3, 0.75
    counts = torch.round(query / unit).transpose(0, 1).reshape(batch * steps * heads, query_rows, width)
    overlaps = (counts.double() @ keys.double().transpose(1, 2)).flatten().unique()
    # the threshold sits on an input that the fp32 operations reach only in their order: a reordering flips spikes
    exact = (overlaps.float() * qk_scale) * score_scale
    reordered = overlaps.float() * (torch.tensor(qk_scale) * torch.tensor(score_scale))  # fp32 throughout
    threshold = exact[(exact > reordered) & (exact > 0)][0].item()
    weights, context = native.sfsa_decode(query, unit, keys, values, qk_scale, score_scale, beta, threshold,
                                          width**0.5, value_unit)  # fmt: skip
    scores = native.int8_attention_scores(counts.to(torch.int8).contiguous(), keys, qk_scale)
    scores = scores.view(batch, steps, heads, query_rows, length).transpose(0, 1)
    expected_weights = functional.lif(scores * score_scale, beta, threshold, backend="torch")
    grouped = expected_weights.transpose(0, 1).reshape(batch * steps * heads, query_rows, length).contiguous()
    expected = native.int8_attention_context(grouped, values) / width**0.5 * value_unit
    expected = expected.view(batch, steps, heads, query_rows, width).permute(1, 0, 3, 2, 4)
    assert 0 < expected_weights.mean() < 1  # some keys fire, not all
    assert torch.equal(weights, expected_weights)
    assert torch.equal(context, expected.reshape(steps, batch, query_rows, heads * width))
    query[0, 0, 0, 0, 0] = float("nan")
    assert native.sfsa_decode(query, unit, keys, values, qk_scale, score_scale, beta, threshold, 8.0, 1.0) is None
    with pytest.raises(ValueError, match="does not match"):
        native.sfsa_decode(query, unit, keys[:, :, :-1], values, qk_scale, score_scale, beta, threshold, 8.0, 1.0)


@pytest.mark.parametrize("width", [64, 80])
def test_fused_sfsa_reads_keys_kept_as_bits_as_it_reads_int8_counts(width):
    """Binary keys kept as `pack_bits` words (what the event backend caches for binary Q and K): the overlaps by AND
    and popcount, the appended position packed into the cache's last row, the same spikes and context as on int8
    counts; a query that is not 0/1 is refused (nothing written)."""
    generator = torch.Generator().manual_seed(width)
    steps, batch, heads, length = 4, 2, 3, 200
    groups = batch * steps * heads
    spikes = torch.rand(groups, length, width, generator=generator) < 0.3
    keys8 = torch.zeros(groups, length + 10, width, dtype=torch.int8)
    keys8[:, :length] = spikes.to(torch.int8)
    words = torch.zeros(groups, length + 10, -(-width // 64), dtype=torch.int64)
    words[:, :length] = pack_bits(spikes.float())
    values = torch.randint(0, 2, (groups, length + 10, width), dtype=torch.int8, generator=generator)
    query = (torch.rand(steps, batch, heads, 1, width, generator=generator) < 0.3).float()
    new_key, new_value = ((torch.rand(steps, batch, heads, 1, width, generator=generator) < 0.3).float()
                          for _ in range(2))  # fmt: skip
    arguments = (1.0, 0.125, 0.75, 0.6, width**0.5, 1.0, (new_key, new_value, 1.0, 1.0))
    found = [native.sfsa_decode(query, 1.0, k[:, : length + 1], values[:, : length + 1], *arguments)
             for k in (keys8, words)]  # fmt: skip
    assert 0 < found[0][0].mean() < 1
    assert all(torch.equal(a, b) for a, b in zip(*found, strict=True))
    appended = new_key.transpose(0, 1).reshape(groups, 1, width)
    assert torch.equal(words[:, length], pack_bits(appended)[:, 0])
    assert torch.equal(keys8[:, length], appended[:, 0].to(torch.int8))
    before = words.clone()
    query[0, 0, 0, 0, 0] = 2.0  # a count of 2: bits cannot hold it
    assert native.sfsa_decode(query, 1.0, words[:, : length + 1], values[:, : length + 1], *arguments) is None
    assert torch.equal(words, before)


def test_native_attention_products_are_the_exact_sums():
    generator = torch.Generator().manual_seed(0)
    queries = torch.randint(0, 5, (6, 2, 16), dtype=torch.int8, generator=generator)
    cache = torch.randint(-127, 128, (6, 33, 16), dtype=torch.int8, generator=generator)
    expected = queries.double() @ cache.double().transpose(1, 2) * 0.125
    assert torch.equal(native.int8_attention_scores(queries, cache, 0.125).double(), expected)
    spikes = (torch.rand(6, 2, 33, generator=generator) < 0.4).float()
    assert torch.equal(native.int8_attention_context(spikes, cache).double(), spikes.double() @ cache.double())


@pytest.mark.parametrize("steps", [2, 4, 8])
def test_native_lif_is_the_torch_recurrences_bits(steps):
    generator = torch.Generator().manual_seed(steps)
    x = torch.randn(steps, 2, 6, 3, 8, generator=generator) * 1.5
    x[1, 0, 0, 0, :3] = float("nan")
    heads = x.transpose(2, 3)  # a heads view, as the attention's norm → neuron hands it over
    for beta, threshold in [(0.5, 1.0), (0.9, 0.3), (1.0, 0.75)]:
        got = functional._native_lif(heads, beta, threshold, None)
        assert got is not None and got.is_contiguous()
        assert torch.equal(got, functional._lif_inference(heads, beta, threshold, None))
    assert functional._native_lif(x, 0.5, 1.0, 0.0) is None  # a hard reset stays with torch
    many = torch.randn(steps, 400_000, generator=generator)  # enough elements for any rounding difference to flip some
    assert torch.equal(native.lif_steps(many, 0.9, 0.3), functional._lif_inference(many, 0.9, 0.3, None))


def test_the_kernels_refuse_tensors_they_cannot_read():
    spikes = torch.ones(1, 8)
    weight = torch.ones(8, 3, dtype=torch.int8)
    with pytest.raises(ValueError, match="contiguous 2-d CPU torch.int8"):
        plan_of(weight.t().contiguous().t())
    with pytest.raises(ValueError, match="do not match"):
        native.spike_products(spikes, plan_of(torch.ones(7, 3, dtype=torch.int8)), 0.0, 1.0)
    with pytest.raises(ValueError, match="fp32 vector of 3"):
        plan_of(weight, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="torch.float32"):
        native.spike_products(spikes.double(), plan_of(weight), 0.0, 1.0)
    expected = torch.full((1, 3), 8.0)
    assert torch.equal(native.spike_products(spikes, plan_of(weight, torch.ones(6)[::2]), 0.0, 1.0)[0][0], expected)


@pytest.mark.parametrize("lower,spike_max,scale", [(0.0, 4, 0.25), (0.0, 4, 1.0), (-2.0, 3, 1 / 3), (1.0, 8, 0.125)])
def test_native_integer_firing_is_the_torch_operations_bits(lower, spike_max, scale):
    generator = torch.Generator().manual_seed(spike_max)
    x = torch.randn(1, 3, 5, 64, generator=generator) * 4
    x[0, 0, 0, :8] = torch.tensor([0.5, 1.5, 2.5, -0.5, float("nan"), float("inf"), -float("inf"), 3.4999998])
    heads = x.transpose(1, 2)  # a heads view
    expected = torch.clamp(torch.round(heads), lower, lower + spike_max) * scale
    got = functional._native_integer_fire(heads, torch.tensor(lower), spike_max, scale)
    assert got is not None and torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(got.nan_to_num(), expected.nan_to_num())
    many = torch.randn(1, 100_000, generator=generator) * 3 + 0.5
    expected = torch.clamp(torch.round(many), lower, lower + spike_max) * scale
    assert torch.equal(functional._native_integer_fire(many, lower, spike_max, scale), expected)


@pytest.mark.parametrize("largest", [1, 4, 33, 64, 65, 127])
@pytest.mark.parametrize("rows", [1, 3])
def test_native_products_are_exact_sums_whatever_the_counts(largest, rows):
    """The int16 partial sums (four weight rows at a time for one row of counts) never overflow: exact against a
    float64 product, with counts up to ``largest`` on hundreds of selected inputs."""
    generator = torch.Generator().manual_seed(largest)
    counts = torch.randint(-largest, largest + 1, (rows, 700), generator=generator, dtype=torch.int8)
    counts[:, :5] = largest  # the extremes, whatever the draw
    weight = torch.randint(-127, 128, (700, 45), generator=generator, dtype=torch.int8)
    weight[:5] = 127
    (got,), _ = native.spike_products(counts.float(), plan_of(weight), 0.0, 1.0)
    assert torch.equal(got.double(), counts.double() @ weight.double())


@pytest.mark.parametrize("rows,largest,bias,density", [(1, 4, True, 0.7), (4, 300, False, 0.7), (8, 20000, True, 0.7),
                                                       (6, 8, True, 0.02)])  # fmt: skip
def test_the_context_product_is_the_int8_layers_bits(rows, largest, bias, density):
    """`counts_product` (an int8 output projection on SFSA's context: integer counts times a power of two) against
    `Int8Linear.forward`'s F.linear, bit for bit, signed counts up to the bound where fp32 partial sums stay exact
    (Σ|k|·127 < 2²⁴): with counts that large any reordering of an inexact sum would show."""
    generator = torch.Generator().manual_seed(rows)
    layer = Int8Linear.from_linear(torch.nn.Linear(300, 200, bias=bias))
    counts = torch.randint(-largest, largest + 1, (rows, 300), generator=generator).float()
    counts *= torch.rand(rows, 300, generator=generator) < density  # few inputs counted: few weight rows read
    counts[-1] = 0 if rows > 1 else counts[-1]  # a row that counts nothing
    counts = (counts * (16777215 / 127 / counts.abs().sum(1, keepdim=True)).clamp(max=1)).trunc()
    sums = (counts.double() @ layer.qweight.double()).float()  # exact: the integer sums, then the fp32 operations
    for unit in (1.0, 2.0**-5):
        context = counts * unit
        expected = layer(context)
        exact = sums * unit * layer.weight_scale
        assert torch.equal(expected, exact if layer.bias is None else exact + layer.bias)
        assert torch.equal(native.counts_product(context, unit, *layer.stored_tensors()), expected)
        assert torch.equal(self_attention.int8_on_context(layer, context, unit), expected)


def test_the_context_product_refuses_what_fp32_would_not_sum_exactly():
    layer = Int8Linear.from_linear(torch.nn.Linear(64, 32))
    counts = torch.zeros(2, 64)
    counts[1, :2] = 1.0
    assert native.counts_product(counts, 1.0, *layer.stored_tensors()) is not None
    for bad in (0.5, float("nan"), float("inf")):  # not an integer count of the unit
        counts[1, 0] = bad
        assert native.counts_product(counts, 1.0, *layer.stored_tensors()) is None
    counts[1] = 0
    counts[1, 0] = 2**24 // 127 + 1  # Σ|k|·127 reaches 2²⁴: an fp32 partial sum may round
    assert native.counts_product(counts, 1.0, *layer.stored_tensors()) is None
    assert self_attention.int8_on_context(layer, counts, 1.0) is None  # the caller runs the layer
    with pytest.raises(ValueError, match="power-of-two unit"):
        native.counts_product(counts, 0.3, *layer.stored_tensors())
    with pytest.raises(ValueError, match=r"inputs \(R, 64\)"):
        native.counts_product(torch.zeros(1, 32), 1.0, *layer.stored_tensors())
    assert self_attention.int8_on_context(layer, counts, None) is None  # no unit: not counts


def _has_int8_dot_instructions() -> bool:
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        return any("avx512_vnni" in line.split() and "avx512bw" in line.split() for line in handle)


@pytest.mark.parametrize("rows", [1, 3, 4])
@pytest.mark.parametrize("width", [64, 100, 768])
def test_the_head_product_is_the_int8_gemms_bits(rows, width):
    """`int8_matrix_rows` (the int8 LM head's product for few rows) against `torch._int_mm` and the same two fp32
    scalings, bit for bit, the int8 extremes included (-128 and 127 in the inputs, ±127 in the weights) and a
    width that is not whole 64-byte chunks."""
    generator = torch.Generator().manual_seed(width + rows)
    x = torch.randint(-128, 128, (rows, width), generator=generator, dtype=torch.int8)
    x[0, :3] = torch.tensor([-128, 127, 0], dtype=torch.int8)
    weight = torch.randint(-127, 128, (300, width), generator=generator, dtype=torch.int8)
    weight[:2] = torch.tensor([127, -127], dtype=torch.int8)[:, None]
    row_scale, scale = torch.rand(rows, 1, generator=generator), torch.rand(300, generator=generator)
    got = native.int8_matrix_rows(x, weight, row_scale, scale)
    if got is None:  # built without VNNI: the GEMM is used, and only there
        assert not _has_int8_dot_instructions()
        return
    assert torch.equal(got, torch._int_mm(x, weight.t()).float().mul_(row_scale).mul_(scale))


def test_the_head_product_leaves_what_it_does_not_speed_up_to_the_gemm():
    x, weight = torch.ones(5, 64, dtype=torch.int8), torch.ones(10, 64, dtype=torch.int8)
    assert native.int8_matrix_rows(x, weight, torch.ones(5, 1), torch.ones(10)) is None  # over MATRIX_MAX_ROWS
    assert native.int8_matrix_rows(x[:1], weight, torch.ones(1, 1), torch.ones(10, dtype=torch.bfloat16)) is None
    strided = torch.ones(64, 10, dtype=torch.int8).t()  # (out, in) as a transposed view
    assert native.int8_matrix_rows(x[:1], strided, torch.ones(1, 1), torch.ones(10)) is None
    with pytest.raises(ValueError, match=r"qweight \(out, in\)"):
        native.int8_matrix_rows(x[:1], weight[:, :32].contiguous(), torch.ones(1, 1), torch.ones(10))


@pytest.mark.parametrize("rows", [1, 4, 6])
def test_an_int8_head_gives_the_same_logits_with_and_without_the_native_kernels(rows, without_native):
    head = Int8Linear.from_linear(torch.nn.Linear(96, 333, bias=False), dynamic_inputs=True)
    hidden = torch.randn(rows, 96, generator=torch.Generator().manual_seed(rows)) * 3
    with torch.no_grad():
        fast = head(hidden)
        without_native()
        slow = head(hidden)
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("extreme", [-128, 127])
def test_fused_sfsa_sums_every_value_row_at_the_int8_extremes_exactly(extreme):
    """Every one of 600 keys fires and every value is an int8 extreme: the context's partial sums (kept in int16
    per 256 keys for head size 64) reach ±32768 and must stay exact."""
    groups, length, width = 2, 600, 64
    query = torch.ones(1, 1, groups, 1, width)
    keys = torch.ones(groups, length, width, dtype=torch.int8)
    values = torch.full((groups, length, width), extreme, dtype=torch.int8)
    weights, context = native.sfsa_decode(query, 1.0, keys, values, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0)
    assert torch.equal(weights, torch.ones_like(weights))
    assert torch.equal(context, torch.full((1, 1, 1, groups * width), float(extreme * length)))
