"""SpADTrainer with the real transformers Trainer, a tiny OPT teacher and a BiSpikCLM student."""

import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

import spiking_lm
from spiking_lm.data import BlockDataset
from spiking_lm.distill import SpADConfig, SpADTrainer


def tiny_opt(vocab=64, attn="eager"):
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=32, word_embed_proj_dim=32, dropout=0.0)  # fmt: skip
    model = OPTForCausalLM(config)
    model.set_attn_implementation(attn)
    return model


def blocks(vocab=64, count=64, length=16):
    generator = torch.Generator().manual_seed(0)
    # a learnable pattern: each block counts upward modulo the vocabulary
    starts = torch.randint(3, vocab, (count, 1), generator=generator)
    return BlockDataset((starts + torch.arange(length)) % (vocab - 3) + 3)


def config(tmp_path, **overrides):
    options = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=30, learning_rate=3e-3,
                   logging_steps=10, save_strategy="no", report_to="none", use_cpu=True,
                   disable_tqdm=True)  # fmt: skip
    return SpADConfig(**{**options, **overrides})


def test_distillation_lowers_the_loss_and_logs_every_term(tmp_path):
    teacher = tiny_opt()
    student = spiking_lm.BiSpikCLMForCausalLM.from_teacher(teacher, time_steps=2)
    trainer = SpADTrainer(model=student, args=config(tmp_path), teacher=teacher, train_dataset=blocks())
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged[-1]["loss"] < logged[0]["loss"]
    for term in ("hta", "sta", "ea", "sfa", "rate", "saa"):
        assert f"spad/{term}" in logged[0], term
    assert all(not p.requires_grad for p in trainer.teacher.parameters())
    assert not trainer.teacher.training


def test_vocabulary_mismatch_is_a_clear_error(tmp_path):
    teacher = tiny_opt(vocab=64)
    student = spiking_lm.BiSpikCLMForCausalLM.from_teacher(tiny_opt(vocab=80))
    with pytest.raises(ValueError, match=r"teacher vocabulary \(64\) differs from the student's \(80\)"):
        SpADTrainer(model=student, args=config(tmp_path), teacher=teacher, train_dataset=blocks())


def test_teacher_without_attention_maps_is_rejected_when_saa_is_on(tmp_path):
    teacher = tiny_opt(attn="sdpa")
    student = spiking_lm.BiSpikCLMForCausalLM.from_teacher(teacher)
    with pytest.raises(ValueError, match="needs the teacher's attention maps, but it runs 'sdpa'"):
        SpADTrainer(model=student, args=config(tmp_path), teacher=teacher, train_dataset=blocks())
    SpADTrainer(model=student, args=config(tmp_path, saa_weight=0.0), teacher=teacher, train_dataset=blocks())


def test_layer_map_out_of_range_is_rejected_before_training(tmp_path):
    teacher = tiny_opt()
    student = spiking_lm.BiSpikCLMForCausalLM.from_teacher(teacher)
    with pytest.raises(ValueError, match="out of range for a teacher with 2 layers"):
        SpADTrainer(model=student, args=config(tmp_path, layer_map=[0, 2]), teacher=teacher, train_dataset=blocks())


@pytest.mark.parametrize(
    "field,value,message",
    [("sta_weight", -1.0, "sta_weight=-1.0 is invalid"), ("temperature", 0.0, "temperature=0.0 is invalid"),
     ("rate_gamma", -0.1, "rate_gamma=-0.1 is invalid"),
     # nan would silently switch a term off, inf would train to NaN weights
     ("saa_weight", float("nan"), "saa_weight=nan is invalid: must be a finite number >= 0"),
     ("hta_weight", float("inf"), "hta_weight=inf is invalid"), ("rate_gamma", float("nan"), "rate_gamma=nan"),
     ("temperature", float("inf"), "temperature=inf is invalid"), ("temperature", float("nan"), "temperature=nan")],
)  # fmt: skip
def test_config_validation(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **{field: value})


def test_width_mismatch_trains_a_projection(tmp_path):
    teacher = tiny_opt()
    student = spiking_lm.BiSpikCLMForCausalLM(
        spiking_lm.BiSpikCLMConfig(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=32,
            max_position_embeddings=32,
            time_steps=1,
        )  # fmt: skip
    )
    with pytest.raises(ValueError, match="the student is 16 wide and the teacher 32; set rate_gamma=0"):
        SpADTrainer(model=student, args=config(tmp_path, max_steps=3), teacher=teacher, train_dataset=blocks())
    args = config(tmp_path, max_steps=3, rate_gamma=0.0)  # RateMSE needs the teacher's width
    trainer = SpADTrainer(model=student, args=args, teacher=teacher, train_dataset=blocks())
    before = trainer.projection[0].weight.detach().clone()
    trainer.train()
    assert not torch.equal(before, trainer.projection[0].weight)


def test_output_norm_calibration_matches_the_teacher_sublayer_statistics():
    from spiking_lm.distill import calibrate_output_norms

    teacher = tiny_opt()
    student = spiking_lm.BiSpikCLMForCausalLM.from_teacher(teacher, time_steps=2)
    input_ids = blocks().blocks[:4]
    captured = {}
    handle = teacher.model.decoder.layers[1].fc2.register_forward_hook(lambda m, i, o: captured.update(fc2=o))
    assert calibrate_output_norms(student, teacher, input_ids) == 4  # attention and MLP output of 2 layers
    handle.remove()
    norm = student.model.decoder.layers[1].fc2_norm
    outputs = captured["fc2"].flatten(0, -2)
    torch.testing.assert_close(norm.weight, outputs.std(0))
    torch.testing.assert_close(norm.bias, outputs.mean(0))
    with pytest.raises(ValueError, match="WESpikingformerForMaskedLM has no output norms to calibrate"):
        calibrate_output_norms(spiking_lm.WESpikingformerForMaskedLM(spiking_lm.WESpikingformerConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=8)),
            teacher, input_ids)  # fmt: skip


class StopAt:
    """Stops training after a given step, as if the process had been killed right after saving it."""

    def __init__(self, step):
        self.step = step

    def __getattr__(self, name):  # every other TrainerCallback hook is a no-op
        return lambda *args, **kwargs: None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def run_losses(tmp_path, name, callbacks=(), resume=None):
    teacher = tiny_opt()
    torch.manual_seed(0)
    student = spiking_lm.BiSpikCLMForCausalLM.from_teacher(teacher, time_steps=2)
    args = config(tmp_path / name, max_steps=8, save_strategy="steps", save_steps=4, logging_steps=1)
    trainer = SpADTrainer(model=student, args=args, teacher=teacher, train_dataset=blocks(), callbacks=list(callbacks))
    trainer.train(resume_from_checkpoint=resume)
    return {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}


def test_killed_and_resumed_run_reaches_the_same_losses(tmp_path):
    from spiking_lm.training import last_complete_checkpoint

    uninterrupted = run_losses(tmp_path, "a")
    run_losses(tmp_path, "b", callbacks=[StopAt(4)])
    checkpoint = last_complete_checkpoint(tmp_path / "b")
    assert checkpoint.endswith("checkpoint-4")
    resumed = run_losses(tmp_path, "b", resume=checkpoint)
    for step in range(5, 9):  # tolerance: 1e-6 relative (same data order, RNG, optimizer and scheduler state)
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-6), step


def test_a_checkpoint_without_its_completion_marker_is_never_resumed(tmp_path):
    from spiking_lm.training import COMPLETE_MARKER, last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path / "missing") is None
    for step in (4, 8):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-4" / COMPLETE_MARKER).write_text("4\n")
    # checkpoint-8 was being written when the process died
    assert last_complete_checkpoint(tmp_path).endswith("checkpoint-4")


def spad_loss(trainer, student, batch):
    inputs = {"input_ids": batch, "labels": batch, "attention_mask": torch.ones_like(batch)}
    return trainer.compute_loss(student, inputs)


@pytest.mark.parametrize("neuron_type", ["lif", "nilif"])
def test_rate_mse_acts_under_the_default_kernels_and_reaches_the_student(tmp_path, neuron_type):
    """The student's block-input rates come from its outputs, so RateMSE acts on every kernel path, the fused
    norm → neuron included (a forward hook on the neuron never saw those spikes and left the term at 0)."""
    teacher = tiny_opt()
    batch = blocks().blocks[:4]
    losses, grads = {}, {}
    for gamma in (0.0, 0.5):
        student = spiking_lm.BiSpikCLMForCausalLM.from_teacher(teacher, time_steps=2, neuron_type=neuron_type)
        assert student.config.neuron_backend == "auto"  # the default kernels: norm → neuron fused
        args = config(tmp_path / str(gamma), rate_gamma=gamma, hta_weight=0.0, sta_weight=0.0, ea_weight=0.0,
                      saa_weight=0.0)  # fmt: skip
        trainer = SpADTrainer(model=student, args=args, teacher=teacher, train_dataset=blocks())
        loss = spad_loss(trainer, student, batch)
        norm = student.model.decoder.layers[0].self_attn_layer_norm  # feeds the first block's input neuron
        losses[gamma], grads[gamma] = loss.detach(), torch.autograd.grad(loss, norm.weight)[0]
    assert losses[0.5] > losses[0.0]  # the rate term adds a positive MSE
    assert not torch.equal(grads[0.5], grads[0.0])  # and sends its own gradient to the student
