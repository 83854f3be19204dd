"""Training keeps compact activations: recomputed regions and bf16 spike GEMMs change what is stored and how
fast it runs, never (fp32) what is computed."""

import pytest
import torch

from spiking_lm.nn.recompute import recompute_disabled

from .conftest import MODEL_CLASSES, labels_for, model_inputs, tiny_model

NEURONS = ["lif", "nilif", "asn", "tlif", "psn"]


def loss_and_grads(model, kind, inputs, through_attention_maps=False):
    model.train()
    model.zero_grad(set_to_none=True)
    outputs = model(**inputs, labels=labels_for(kind, inputs), output_attentions=through_attention_maps)
    loss = outputs.loss
    if through_attention_maps:  # as SAA distillation does: a loss on the maps, through the surrogate gradients
        loss = loss + sum(((maps - 0.1) ** 2).sum() for maps in outputs.attentions)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def saved_bytes_and_sizes(model, kind, inputs):
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages, shapes, alive = {}, [], []

    def pack(tensor):
        # held until the count is done: a tensor saved by a graph that is dropped inside the forward could be
        # freed and its address reused by another, which would then be counted as the same storage
        alive.append(tensor)
        if tensor.untyped_storage().data_ptr() not in parameters:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            shapes.append(tensor.numel())
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**inputs, labels=labels_for(kind, inputs)).loss
    loss.backward()
    return sum(storages.values()), shapes


@pytest.mark.parametrize("model_class,kind", MODEL_CLASSES)
@pytest.mark.parametrize("neuron_type", NEURONS)
def test_recomputed_regions_give_the_gradients_of_the_plain_graph(model_class, kind, neuron_type):
    model = tiny_model(model_class, neuron_type=neuron_type, time_steps=2).double()
    inputs = model_inputs(model_class)
    inputs["attention_mask"][0, :2] = 0  # padding must be recomputed the same way too
    loss, grads = loss_and_grads(model, kind, inputs)
    with recompute_disabled():
        plain_loss, plain_grads = loss_and_grads(model, kind, inputs)
    assert torch.equal(loss, plain_loss)
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("model_class,kind", MODEL_CLASSES)
def test_recomputed_attention_maps_give_the_gradients_of_the_plain_graph(model_class, kind):
    model = tiny_model(model_class, neuron_type="lif", time_steps=2).double()
    inputs = model_inputs(model_class)
    loss, grads = loss_and_grads(model, kind, inputs, through_attention_maps=True)
    with recompute_disabled():
        plain_loss, plain_grads = loss_and_grads(model, kind, inputs, through_attention_maps=True)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-12, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("model_class,kind", MODEL_CLASSES)
def test_attention_keeps_no_score_map_and_less_memory_for_backward(model_class, kind):
    model = tiny_model(model_class, neuron_type="lif", time_steps=2)
    inputs = model_inputs(model_class, batch=2, length=9)
    compact, shapes = saved_bytes_and_sizes(model, kind, inputs)
    with recompute_disabled():
        plain, plain_shapes = saved_bytes_and_sizes(model, kind, inputs)
    score_map = 2 * 2 * model.config.num_attention_heads * 9 * 9  # (T, B, H, L, L) elements
    assert score_map in plain_shapes  # the plain graph keeps attention scores or spikes ...
    assert score_map not in shapes  # ... the recomputed region does not
    assert compact < 0.6 * plain


def test_firing_rates_are_recorded_once_per_forward_despite_recomputation():
    from spiking_lm import BiSpikCLMForCausalLM

    model = tiny_model(BiSpikCLMForCausalLM).train()
    inputs = model_inputs(BiSpikCLMForCausalLM)
    model.record_firing_rates()
    with torch.no_grad():
        model(**inputs)
    reference = {name: neuron.recorded_elements for name, neuron in model.spiking_neurons()}
    model.record_firing_rates()
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert {name: neuron.recorded_elements for name, neuron in model.spiking_neurons()} == reference


@pytest.mark.parametrize("model_class,kind", MODEL_CLASSES)
def test_bfloat16_spike_gemms_train_close_to_float32(model_class, kind):
    model = tiny_model(model_class, neuron_type="nilif")
    inputs = model_inputs(model_class)
    loss, grads = loss_and_grads(model, kind, inputs)
    model.set_train_matmul_dtype("bfloat16")
    assert model.config.train_matmul_dtype == "bfloat16"
    low_loss, low_grads = loss_and_grads(model, kind, inputs)
    assert not torch.equal(low_loss, loss)  # the bf16 path really ran
    torch.testing.assert_close(low_loss, loss, rtol=2e-2, atol=0)
    flat = torch.cat([g.flatten() for g in grads.values()])
    low_flat = torch.cat([low_grads[name].flatten() for name in grads])
    # rounding flips a few spikes, so gradients agree in direction, not to bf16 precision
    assert torch.nn.functional.cosine_similarity(flat, low_flat, dim=0) > 0.9
    model.eval()
    with torch.no_grad():  # inference stays fp32 whatever the training dtype
        logits = model(**inputs).logits
        model.set_train_matmul_dtype("float32")
        assert torch.equal(model(**inputs).logits, logits)


@pytest.mark.parametrize("model_class,kind", MODEL_CLASSES)
def test_bfloat16_training_keeps_gemm_outputs_as_bf16_and_recomputes_the_plain_gradients(model_class, kind):
    model = tiny_model(model_class, neuron_type="lif", time_steps=2, train_matmul_dtype="bfloat16")
    inputs = model_inputs(model_class)
    inputs["attention_mask"][0, :2] = 0
    loss, grads = loss_and_grads(model, kind, inputs)
    with recompute_disabled():
        plain_loss, plain_grads = loss_and_grads(model, kind, inputs)
    assert torch.equal(loss, plain_loss)  # the recomputation from bf16 copies is bitwise the forward
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)

    kept = []
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append((t.dtype, t.shape)) or t, lambda t: t):
        model(**inputs, labels=labels_for(kind, inputs)).loss.backward()
    hidden = (2, *inputs["input_ids"].shape, model.config.hidden_size)  # (T, B, L, D)
    if model.config.attention_type == "sfsa":  # SFSA's products keep uint8 overlap counts, nothing wider
        batch, length = inputs["input_ids"].shape
        score_map = torch.Size((2, batch, model.config.num_attention_heads, length, length))
        assert (torch.uint8, score_map) in kept
        assert [dtype for dtype, shape in kept if shape == score_map] == [torch.uint8] * model.config.num_hidden_layers
    else:  # Q, K and V Linear outputs of every layer, kept for the recomputed attention instead of the GEMMs
        assert kept.count((torch.bfloat16, hidden)) >= 3 * model.config.num_hidden_layers


def test_train_matmul_dtype_is_validated_and_survives_save_and_load(tmp_path):
    from spiking_lm import BiSpikCLMConfig, BiSpikCLMForCausalLM

    with pytest.raises(ValueError, match="train_matmul_dtype"):
        BiSpikCLMConfig(train_matmul_dtype="float16")
    model = tiny_model(BiSpikCLMForCausalLM, train_matmul_dtype="bfloat16")
    with pytest.raises(ValueError, match="train_matmul_dtype"):
        model.set_train_matmul_dtype("int8")
    model.save_pretrained(tmp_path)
    loaded = BiSpikCLMForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.train_matmul_dtype == "bfloat16"
    assert loaded.execution.train_matmul_dtype == "bfloat16"


def test_single_step_models_keep_the_plain_graph():
    from spiking_lm import WDSpikingformerForCausalLM

    model = tiny_model(WDSpikingformerForCausalLM, neuron_type="nilif", time_steps=1)
    inputs = model_inputs(WDSpikingformerForCausalLM)
    saved, _ = saved_bytes_and_sizes(model, "causal_lm", inputs)
    with recompute_disabled():
        plain, _ = saved_bytes_and_sizes(model, "causal_lm", inputs)
    assert saved == plain  # at T = 1 a neuron keeps a 1-byte mask at most: nothing worth recomputing


@pytest.mark.parametrize("model_class,kind", MODEL_CLASSES)
def test_bfloat16_fast_paths_compute_what_the_widened_bf16_path_computes(model_class, kind, monkeypatch):
    """Training in bf16 keeps spikes, exact GEMM outputs and SFSA's scores in bf16 between kernels and fuses
    SFSA's neuron; with those paths switched off (fp32 spikes and outputs, converted at every product) the loss
    is bit for bit the same and the gradients agree up to summation order and the bias gradients' bf16 sums."""
    from spiking_lm.nn import blocks, self_attention
    from spiking_lm.nn.neurons import LIFNeuron

    # 2 heads of 16: SFSA's context stays bf16 (1/√16 is a power of two)
    overrides = {"neuron_type": "lif", "time_steps": 4, "train_matmul_dtype": "bfloat16", "num_attention_heads": 2}
    model = tiny_model(model_class, **overrides)
    inputs = model_inputs(model_class, batch=3, length=12)
    inputs["attention_mask"][0, :3] = 0
    loss, grads = loss_and_grads(model, kind, inputs)
    with monkeypatch.context() as patch:
        for module in (blocks, self_attention):  # where the blocks and the attention look them up
            for name in ("low_spike_dtype", "exact_output_dtype"):
                if hasattr(module, name):
                    patch.setattr(module, name, lambda linears, neuron, execution=None: None)
        patch.delattr(LIFNeuron, "fire_masked")  # SFSA's unfused path
        plain_loss, plain_grads = loss_and_grads(model, kind, inputs)
    assert torch.equal(loss, plain_loss)
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        scale = float(plain_grads[name].abs().max())
        torch.testing.assert_close(grad, plain_grads[name], rtol=0, atol=scale * 2**-6 + 1e-7, msg=name)
