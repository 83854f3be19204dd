"""W8 spiking inference (`quantize_weights("int8")`): int8 weights driven by spike counts, exact int32 sums."""

import copy
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

import spiking_lm
from spiking_lm.nn.weight_quantization import (
    Int8Linear,
    Int8TiedEmbedding,
    int8_on_spikes,
    int8_product,
    selected_inputs,
)

from .conftest import CAUSAL_LM_CLASSES, INTEGER_NEURONS, MODEL_CLASSES, model_inputs, tiny_model
from .test_common import AUTO_FOR_KIND, REMOTE_LOAD

IDS = [cls.__name__ for cls, _ in MODEL_CLASSES]


class Counts:
    """A stand-in neuron that only describes its values (what `int8_on_spikes` reads)."""

    def __init__(self, scale=1.0, offset=0.0, spike_max=4, mode="integer"):
        self.coding = spiking_lm.nn.SpikeCoding(scale=scale, offset=offset, max=spike_max, binary=spike_max == 1,
                                                mode=mode)  # fmt: skip


@pytest.mark.parametrize("scale,offset", [(1.0, 0.0), (0.25, 0.0), (0.25, 0.5)])
@pytest.mark.parametrize("rows,density", [(1, 0.1), (3, 0.1), (3, 0.9), (40, 0.3)])  # gathered and dense products
def test_spike_counts_times_int8_weights_are_exact_sums_scaled_once(scale, offset, rows, density):
    linear = torch.nn.Linear(96, 40)
    layer = Int8Linear.from_linear(linear)
    generator = torch.Generator().manual_seed(rows)
    counts = torch.randint(1, 5, (2, rows, 96), generator=generator) * (torch.rand(2, rows, 96, generator=generator)
                                                                        < density)  # fmt: skip
    values = counts * scale + offset
    got = int8_on_spikes(layer, values.float(), Counts(scale, offset))
    q = layer.qweight.double()  # (in, out)
    sums = counts.double() @ q  # exact: small integers
    s = layer.weight_scale.double()
    expected = sums * (s * scale) + offset * (s * q.sum(0)) + layer.bias.double()
    assert got.shape == (2, rows, 40) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=3e-7, atol=3e-7 * float(expected.abs().max()))
    flat = counts.reshape(-1, 96).to(torch.int8)  # gathered or dense: the same int32 sums
    columns = selected_inputs(flat)
    union = flat.any(0).nonzero().view(-1)
    if rows <= 32 and union.numel() <= 0.6 * 96:  # decoding with few spikes: only their weight rows are read
        assert torch.equal(columns, union)
    else:
        assert columns is None
    assert torch.equal(int8_product(flat, layer.qweight, columns), torch._int_mm(flat, layer.qweight))


def test_int8_rounding_is_per_output_row_and_real_values_use_the_same_weight():
    linear = torch.nn.Linear(64, 8)
    with torch.no_grad():
        linear.weight[3] *= 100  # one large row must not coarsen the others
    layer = Int8Linear.from_linear(linear)
    assert layer.qweight.dtype == torch.int8 and layer.qweight.shape == (64, 8)
    error = (layer.dequantized_weight() - linear.weight).abs()
    assert (error <= linear.weight.abs().amax(1, keepdim=True) / 254 + 1e-7).all()
    x = torch.randn(5, 64)
    expected = x.double() @ layer.dequantized_weight().double().t() + layer.bias.double()
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)
    assert layer.bias is not None and not layer.bias.requires_grad


@pytest.mark.parametrize("model_class,kind", MODEL_CLASSES, ids=IDS)
def test_quantize_weights_converts_every_spike_fed_linear_and_nothing_else(model_class, kind):
    model = tiny_model(model_class)
    fp32_bytes = sum(m.weight.numel() * 4 for m in model.spiking_blocks().modules() if isinstance(m, torch.nn.Linear))
    assert model.quantize_weights("int8") is model
    assert not any(module.training for module in model.modules())  # the new layers follow the model's eval mode
    config = model.config
    assert config.weight_quantization == "int8" and config.quantized_modules
    blocks = model.spiking_blocks()
    for name in config.quantized_modules:
        assert isinstance(blocks.get_submodule(name), Int8Linear), name
    # every Linear of the blocks: spike-fed, or SFSA's output projection fed integer counts A_s V
    assert [name for name, m in blocks.named_modules() if isinstance(m, torch.nn.Linear)] == []
    if model_class.config_class is spiking_lm.BiSpikCLMConfig:
        assert any(name.endswith("self_attn.out_proj") for name in config.quantized_modules)
    int8_bytes = sum(m.qweight.numel() for m in blocks.modules() if isinstance(m, Int8Linear))
    assert int8_bytes * 4 <= fp32_bytes
    head = model.get_output_embeddings() if kind != "classification" else model.score if hasattr(model, "score") \
        else model.classifier  # fmt: skip
    assert isinstance(head, torch.nn.Linear)  # the head keeps its fp32 weight
    with torch.no_grad():
        logits = model(**model_inputs(model_class)).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("neuron_type", INTEGER_NEURONS)
@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES[1:] + [spiking_lm.WESpikingformerForMaskedLM],
                         ids=lambda cls: cls.__name__)  # fmt: skip
def test_w8_binary_spike_mode_and_the_event_backend_are_bit_identical(model_class, neuron_type):
    """Integer counts and their binary virtual steps sum to the same int32 values: no rounding can differ."""
    model = tiny_model(model_class, neuron_type=neuron_type).quantize_weights()
    inputs = model_inputs(model_class)
    with torch.no_grad():
        integer = model(**inputs).logits
        binary = model.set_spike_mode("binary")(**inputs).logits
        event = model.set_spike_mode("integer").set_inference_backend("event")(**inputs).logits
    assert torch.equal(integer, binary)
    assert torch.equal(integer, event)


@pytest.mark.parametrize("model_class,kind", MODEL_CLASSES[::2], ids=IDS[::2])
def test_w8_models_save_int8_safetensors_and_load_back_exactly(model_class, kind, tmp_path):
    model = tiny_model(model_class).quantize_weights()
    inputs = model_inputs(model_class)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        dtypes = {key: handle.get_slice(key).get_dtype() for key in handle.keys()}  # noqa: SIM118 - not iterable
    first = model.config.quantized_modules[0]
    prefix = next(key for key in dtypes if key.endswith(f"{first}.qweight"))
    assert dtypes[prefix] == "I8" and dtypes[prefix.replace("qweight", "weight_scale")] == "F32"
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert loaded.config.weight_quantization == "int8"
    assert loaded.config.quantized_modules == model.config.quantized_modules
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)


REMOTE_CASES = [(cls, False) for cls in CAUSAL_LM_CLASSES + [spiking_lm.WESpikingformerForMaskedLM]]


@pytest.mark.slow
@pytest.mark.parametrize("model_class,lm_head", [*REMOTE_CASES, (spiking_lm.BiSpikCLMForCausalLM, True)],
                         ids=lambda value: getattr(value, "__name__", str(value)))  # fmt: skip
def test_w8_models_load_through_remote_code_without_the_package(model_class, lm_head, tmp_path):
    model = tiny_model(model_class).quantize_weights(lm_head=lm_head)
    kind = "masked_lm" if model_class is spiking_lm.WESpikingformerForMaskedLM else "causal_lm"
    inputs = model_inputs(model_class)
    model.save_pretrained(tmp_path / "model")
    expected = tmp_path / "expected.safetensors"
    with torch.no_grad():
        save_file({**inputs, "logits": model(**inputs).logits.contiguous()}, str(expected))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    script = REMOTE_LOAD.format(auto=AUTO_FOR_KIND[kind].__name__)
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "model"), str(expected)],
                            capture_output=True, text=True, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote-ok" in result.stdout


@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES, ids=lambda cls: cls.__name__)
def test_w8_generation_with_the_cache_matches_full_forwards(model_class):
    model = tiny_model(model_class).quantize_weights().set_inference_backend("event")
    prompt = model_inputs(model_class, batch=1, length=5)["input_ids"]
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
        tokens = prompt
        for _ in range(6):  # no cache: every step recomputes the whole sequence
            tokens = torch.cat([tokens, model(input_ids=tokens).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(generated, tokens)


@pytest.mark.parametrize("model_class,tied", [(spiking_lm.BiSpikCLMForCausalLM, True),
                                               (spiking_lm.WDSpikingformerForCausalLM, False),
                                               (spiking_lm.WESpikingformerForMaskedLM, True)])  # fmt: skip
def test_the_lm_head_option_stores_one_int8_table_and_rounds_its_inputs(model_class, tied, tmp_path):
    model = tiny_model(model_class)
    assert (model.get_input_embeddings().weight is model.get_output_embeddings().weight) == tied
    inputs = model_inputs(model_class)
    exact_head = tiny_model(model_class).quantize_weights()
    model.quantize_weights(lm_head=True)
    head = model.get_output_embeddings()
    assert isinstance(head, Int8Linear) and head.dynamic_inputs
    assert model.config.quantized_lm_head == ("int8-shared" if tied else "int8")
    assert isinstance(model.get_input_embeddings(), Int8TiedEmbedding) == tied
    hidden = torch.randn(5, model.config.hidden_size)
    with torch.no_grad():
        logits, exact = model(**inputs).logits, exact_head(**inputs).logits
        embedded = model.get_input_embeddings()(inputs["input_ids"])
        rounded = head(hidden)
    # the head's inputs are rounded to int8 per row, by at most half a step each: |error| <= step/2 · Σ|W_row|
    weight = head.dequantized_weight()
    step = hidden.abs().amax(1, keepdim=True) / 127
    error = (rounded - (hidden @ weight.t() + (0 if head.bias is None else head.bias))).abs()
    assert (error <= step / 2 * weight.abs().sum(1) + 1e-5).all()
    if not tied:  # only the head differs from the exact W8 model
        torch.testing.assert_close(logits, exact, rtol=0, atol=0.05 * float(exact.abs().max()))
    else:  # the token embeddings are the head's int8 rows times their scales
        rows = head.dequantized_weight()[inputs["input_ids"]]
        torch.testing.assert_close(embedded, rows, rtol=1e-6, atol=1e-7)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    head_tables = [key for key in keys if key in ("lm_head.qweight", "cls.predictions.decoder.qweight")]
    embedding_tables = [key for key in keys if key.endswith(("embed_tokens.weight", "word_embeddings.weight"))]
    assert len(head_tables) == 1 and (embedding_tables == []) == tied  # a tied model saves the int8 table once
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert isinstance(loaded.get_output_embeddings(), Int8Linear)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, logits)


def test_quantize_weights_refuses_what_it_cannot_do():
    model = tiny_model(spiking_lm.WDSpikingformerForCausalLM)
    with pytest.raises(ValueError, match="weight quantization must be one of \\('int8',\\), got 'int4'"):
        model.quantize_weights("int4")
    model.quantize_weights()
    with pytest.raises(ValueError, match="already quantized \\(int8\\)"):
        model.quantize_weights()
    with pytest.raises(ValueError, match="weight_quantization='int4' is invalid"):
        spiking_lm.WDSpikingformerConfig(weight_quantization="int4", quantized_modules=["0.mlp.up_proj"])
    with pytest.raises(ValueError, match="quantized_modules names no Linear"):
        spiking_lm.WDSpikingformerConfig(weight_quantization="int8")
    classifier = tiny_model(spiking_lm.WDSpikingformerForSequenceClassification)
    with pytest.raises(ValueError, match="has no Linear LM head to quantize"):
        classifier.quantize_weights(lm_head=True)


TEXT = "the spiking neuron fires when its membrane crosses the threshold and rests again " * 40


def train_tiny(neuron_type: str, time_steps: int, steps: int = 150):
    """A tiny BiSpikCLM trained on a repeated sentence until it predicts it well (a few seconds)."""
    config = spiking_lm.BiSpikCLMConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=64, neuron_type=neuron_type,
                                        time_steps=time_steps)  # fmt: skip
    torch.manual_seed(0)
    model = spiking_lm.BiSpikCLMForCausalLM(config)
    data = torch.tensor([min(ord(c) - 32, 63) for c in TEXT]).clamp_min(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - 33, (8,), generator=generator)
        batch = torch.stack([data[s : s + 32] for s in starts])
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    held_out = torch.stack([data[s : s + 32] for s in range(7, len(data) - 33, 97)])
    return model.eval(), held_out


def perplexity(model, blocks) -> float:
    with torch.no_grad():
        return math.exp(model(input_ids=blocks, labels=blocks).loss.item())


@pytest.mark.slow
@pytest.mark.parametrize("neuron_type,time_steps", [("lif", 4), ("nilif", 1)])
def test_w8_perplexity_of_a_trained_model_is_within_one_percent(neuron_type, time_steps):
    model, held_out = train_tiny(neuron_type, time_steps)
    fp32 = perplexity(model, held_out)
    assert fp32 < 8  # it learned the sentence (64 symbols: a uniform guess scores 64)
    w8 = perplexity(copy.deepcopy(model).quantize_weights(), held_out)
    assert abs(w8 / fp32 - 1) <= 0.01, (fp32, w8)
    with_head = perplexity(model.quantize_weights(lm_head=True), held_out)  # inexact head: measured 0.04-0.11 %
    assert abs(with_head / fp32 - 1) <= 0.01, (fp32, with_head)


@pytest.mark.slow
@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES, ids=lambda cls: cls.__name__)
def test_lm_eval_scores_a_saved_w8_model(model_class, teacher_folder, tmp_path):
    from transformers import AutoTokenizer

    from spiking_lm.evaluation.harness import evaluate_zero_shot

    from ..evaluation.test_harness import FIXTURES

    tokenizer = AutoTokenizer.from_pretrained(teacher_folder)  # a causal LM's BPE tokenizer
    tiny_model(model_class, vocab_size=len(tokenizer)).quantize_weights().save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(model.spiking_blocks().get_submodule(model.config.quantized_modules[0]), Int8Linear)
    results = evaluate_zero_shot(model, tokenizer, "piqa", data_dir=FIXTURES, batch_size=2, limit=4)
    assert results["samples"]["piqa"] == 3 and 0 <= results["scores"]["piqa"]["acc"] <= 1


@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("neuron_type", ["nilif", "asn"])
@pytest.mark.parametrize("lm_head", [False, True])
def test_a_non_finite_position_reaches_the_same_logits_in_a_w8_model(model_class, neuron_type, lm_head):
    """NaN fed to integer neurons cannot be an int8 count: the W8 model's logits are non-finite exactly where the
    fp32 model's are (that position and the queries that may see it), and earlier positions stay exact."""
    model = tiny_model(model_class, neuron_type=neuron_type)
    ids = torch.randint(3, 99, (1, 6), generator=torch.Generator().manual_seed(0))
    embeddings = model.get_input_embeddings()(ids).detach().clone()
    embeddings[0, 3] = float("nan")
    with torch.no_grad():
        fp32 = model(inputs_embeds=embeddings).logits
        model.quantize_weights(lm_head=lm_head)
        logits = model(inputs_embeds=embeddings).logits
        prefix = model(inputs_embeds=embeddings[:, :3]).logits
    assert not torch.isfinite(fp32[0, 3:]).any()
    assert torch.equal(torch.isfinite(logits), torch.isfinite(fp32))
    torch.testing.assert_close(logits[0, :3], prefix[0], rtol=1e-5, atol=1e-5)


def test_a_w8_model_trains_its_biases_and_norms_through_the_real_valued_path():
    """Gradients never go through the int32 sums: with a trainable bias or spikes the layer computes x Qᵀ ⊙ s + b
    (the same values up to float rounding), so the biases and everything before them get their gradients."""
    model = tiny_model(spiking_lm.BiSpikCLMForCausalLM).quantize_weights().train()
    inputs = model_inputs(spiking_lm.BiSpikCLMForCausalLM)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert model.spiking_blocks()[0].self_attn.q_norm.weight.grad is not None
    model.zero_grad()
    for parameter in model.parameters():  # only one bias trains: its input spikes need no gradient
        parameter.requires_grad_(False)
    layer = model.spiking_blocks()[1].fc2
    layer.bias.requires_grad_(True)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert layer.bias.grad is not None and layer.bias.grad.abs().sum() > 0


def _next_token_kl(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    log_p, log_q = reference.log_softmax(-1), other.log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


@pytest.mark.parametrize("neuron_type,time_steps", [("lif", 4), ("nilif", 1)])
def test_w8_logits_of_a_random_model_move_no_more_than_noise_of_the_same_size(neuron_type, time_steps):
    """The documented bound (docs/w8.md, scripts/w8_fidelity.py): a threshold flips wherever any change of the weights
    moves a membrane across it, so W8's whole-model drift is measured against uniform noise as large as its rounding
    (±half an int8 step per weight): mean next-token KL at most 1.25x that (measured 0.82-1.11x at 8M and 125M
    scale and here), and small in absolute terms."""
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    config = OPTConfig(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, ffn_dim=512,
                       word_embed_proj_dim=128, max_position_embeddings=128)  # fmt: skip
    student = spiking_lm.BiSpikCLMForCausalLM.from_teacher(
        OPTForCausalLM(config), neuron_type=neuron_type, time_steps=time_steps
    ).eval()
    prompt = torch.randint(3, 512, (2, 64))
    w8 = copy.deepcopy(student).quantize_weights()
    quantized = {name for name, module in w8.named_modules() if isinstance(module, Int8Linear)}
    noisy = copy.deepcopy(student)
    with torch.no_grad():
        for name, module in noisy.named_modules():
            if name in quantized:
                step = module.weight.abs().amax(1, keepdim=True) / 127
                module.weight.add_((torch.rand(module.weight.shape) - 0.5) * step)
        reference = student(prompt).logits
        w8_kl = _next_token_kl(reference, w8(prompt).logits).mean()
        noise_kl = _next_token_kl(reference, noisy(prompt).logits).mean()
    assert len(quantized) == 12  # q, k, v, out, fc1, fc2 in each of 2 blocks
    assert 0 < w8_kl <= 1.25 * noise_kl and w8_kl < 0.01, (w8_kl, noise_kl)


def test_the_int8_output_projection_of_sfsa_counts_its_weight_reads():
    """SFSA's output projection, int8 in a W8 model, reads the int8 rows of the context's counted inputs (the whole
    matrix where every input counts): recorded beside the other products' reads, one per block after Q, K, V."""
    from spiking_lm.nn.recording import WeightReads, recording

    model = tiny_model(spiking_lm.BiSpikCLMForCausalLM).quantize_weights()
    width = model.config.hidden_size
    reads, contexts = [], []

    class Reads(WeightReads):
        def weight_read(self, kind, linears, nbytes):
            reads.append((kind, nbytes))

    for block in model.spiking_blocks():
        block.self_attn.out_proj.register_forward_hook(lambda module, inputs, _: contexts.append(inputs[0]))
    with torch.no_grad(), recording(Reads()):
        model(**model_inputs(spiking_lm.BiSpikCLMForCausalLM, length=20))
    assert len(reads) == 6 * model.config.num_hidden_layers  # q, k, v, out, fc1, fc2
    for context, (kind, nbytes) in zip(contexts, reads[3::6], strict=True):
        counted = int((context.reshape(-1, width) != 0).any(0).sum())
        assert counted > 0 and nbytes == counted * width
        assert kind == ("int8" if counted == width else "gathered")
