"""Inputs a model cannot read are refused with a clear error; non-finite values reach only the positions allowed
to see them; weights edited in place, through `.data` or wrapped by adapters, are what every mode computes with."""

import pytest
import torch

from spiking_lm.nn import event

from .conftest import CAUSAL_LM_CLASSES, MODEL_CLASSES, model_inputs, tiny_model

IDS = [cls.__name__ for cls, _ in MODEL_CLASSES]


@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("neuron_type", ["lif", "nilif", "asn", "psn"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_position_leaves_earlier_positions_exact(model_class, neuron_type, bad):
    model = tiny_model(model_class, neuron_type=neuron_type)
    ids = torch.randint(3, 99, (1, 6), generator=torch.Generator().manual_seed(0))
    embeddings = model.get_input_embeddings()(ids).detach().clone()
    embeddings[0, 3] = bad
    with torch.no_grad():
        logits = model(inputs_embeds=embeddings).logits
        prefix = model(inputs_embeds=embeddings[:, :3]).logits
    assert torch.isfinite(logits[0, :3]).all()  # before the fix, 0 x NaN at masked pairs made them NaN
    torch.testing.assert_close(logits[0, :3], prefix[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("neuron_type", ["nilif", "asn"])
def test_a_non_finite_padded_position_leaves_the_others_exact(neuron_type):
    from spiking_lm import WESpikingformerForMaskedLM

    model = tiny_model(WESpikingformerForMaskedLM, neuron_type=neuron_type)
    inputs = model_inputs(WESpikingformerForMaskedLM, batch=1, length=6)
    embeddings = model.get_input_embeddings()(inputs["input_ids"]).detach().clone()
    mask = torch.ones(1, 6, dtype=torch.long)
    mask[0, 5] = 0
    with torch.no_grad():
        clean = model(inputs_embeds=embeddings, attention_mask=mask).logits
        embeddings[0, 5] = float("nan")
        poisoned = model(inputs_embeds=embeddings, attention_mask=mask).logits
    assert torch.equal(poisoned[0, :5], clean[0, :5])


def test_binary_mode_refuses_non_finite_inputs_by_name():
    from spiking_lm import BiSpikCLMForCausalLM

    model = tiny_model(BiSpikCLMForCausalLM, neuron_type="nilif")
    model.set_spike_mode("binary")
    embeddings = model.get_input_embeddings()(torch.tensor([[5, 6, 7]])).detach().clone()
    embeddings[0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"), torch.no_grad():
        model(inputs_embeds=embeddings)


@pytest.mark.parametrize(("model_class", "kind"), MODEL_CLASSES, ids=IDS)
def test_unreadable_inputs_are_named(model_class, kind):
    model = tiny_model(model_class)
    with pytest.raises(ValueError, match="no tokens"):
        model(input_ids=torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="70 positions exceed max_position_embeddings=64"):
        model(input_ids=torch.randint(3, 99, (1, 70)))
    with pytest.raises(ValueError, match="attention_mask covers 4 positions but the input has 5"):
        model(input_ids=torch.randint(3, 99, (1, 5)), attention_mask=torch.ones(1, 4, dtype=torch.long))


@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES, ids=lambda cls: cls.__name__)
def test_generate_checks_the_prompt_before_generating(model_class):
    model = tiny_model(model_class)
    prompt = torch.randint(3, 99, (1, 60))
    with pytest.raises(ValueError, match="prompt of 60 tokens plus max_new_tokens=10 exceeds"):
        model.generate(prompt, max_new_tokens=10, do_sample=False)
    with pytest.raises(ValueError, match="no tokens"):
        model.generate(prompt[:, :0], max_new_tokens=2, do_sample=False)
    with pytest.raises(ValueError, match="attention_mask covers 4 positions"):
        model.generate(prompt[:, :5], attention_mask=torch.ones(1, 4, dtype=torch.long), max_new_tokens=2)
    assert model.generate(prompt, max_new_tokens=4, do_sample=False).shape == (1, 64)  # exactly fits


def test_a_truncated_weights_file_is_named(tmp_path):
    from transformers import AutoModelForCausalLM

    from spiking_lm import BiSpikCLMForCausalLM

    tiny_model(BiSpikCLMForCausalLM).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    content = weights.read_bytes()
    for cut in (0, len(content) // 2):
        weights.write_bytes(content[:cut])
        with pytest.raises(ValueError, match=r"cannot read the weights in .*model\.safetensors.*truncated"):
            AutoModelForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize(("model_class", "kind"), MODEL_CLASSES, ids=IDS)
@pytest.mark.parametrize("neuron_type", ["lif", "nilif"])
def test_event_backend_sees_weights_edited_through_data(model_class, kind, neuron_type, monkeypatch):
    monkeypatch.setattr(event, "MIN_WEIGHT_BYTES", 0)
    monkeypatch.setattr(event, "EVENT_MAX_DENSITY", 1.0)
    model = tiny_model(model_class, neuron_type=neuron_type)
    inputs = model_inputs(model_class)
    model.set_inference_backend("event")
    with torch.no_grad():
        before = model(**inputs).logits
        assert model.execution.derived_bytes() > 0  # the event path built its weight copies
        for linear in [m for m in model.spiking_blocks()[0].modules() if isinstance(m, torch.nn.Linear)]:
            linear.weight.data.mul_(-3)  # .data: no version bump
        after = model(**inputs).logits
        model.set_inference_backend("dense")
        dense = model(**inputs).logits
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("model_class", "kind"), MODEL_CLASSES, ids=IDS)
@pytest.mark.parametrize("neuron_type", ["lif", "nilif", "asn"])
def test_lora_adapters_act_in_every_mode_and_backend(model_class, kind, neuron_type, monkeypatch):
    peft = pytest.importorskip("peft")
    monkeypatch.setattr(event, "MIN_WEIGHT_BYTES", 0)
    monkeypatch.setattr(event, "EVENT_MAX_DENSITY", 1.0)
    model = tiny_model(model_class, neuron_type=neuron_type)
    targets = sorted({name.split(".")[-1] for name, module in model.spiking_blocks().named_modules()
                      if isinstance(module, torch.nn.Linear)})  # fmt: skip
    inputs = model_inputs(model_class)
    with torch.no_grad():
        plain = model(**inputs).logits
    adapted = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    adapted.eval()
    results = {}
    for mode in ["integer", "binary"]:
        for backend in ["dense", "event"]:
            model.set_spike_mode(mode)
            model.set_inference_backend(backend)
            with torch.no_grad():
                results[mode, backend] = adapted(**inputs).logits
    reference = results["integer", "dense"]
    assert (reference - plain).abs().max() > 1e-3  # the adapter changes the output...
    for logits in results.values():  # ...and every mode and backend computes with it
        torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    adapted.merge_and_unload()  # merged into plain Linears: the same function
    model.set_spike_mode("integer")
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, reference, rtol=1e-5, atol=1e-5)


def test_lora_training_reaches_the_adapter_under_bf16_gemms():
    peft = pytest.importorskip("peft")
    from spiking_lm import BiSpikCLMForCausalLM

    model = tiny_model(BiSpikCLMForCausalLM, neuron_type="nilif").train()
    model.set_train_matmul_dtype("bfloat16")
    adapted = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "fc1"]))
    inputs = model_inputs(BiSpikCLMForCausalLM)
    adapted(**inputs, labels=inputs["input_ids"]).loss.backward()
    lora_grads = [p.grad for name, p in adapted.named_parameters() if "lora_B" in name]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)
