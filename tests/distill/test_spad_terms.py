"""Every SpAD term acts as its name says, at the quickstart's width under the default kernels."""

import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

import spiking_lm
from spiking_lm.data import BlockDataset
from spiking_lm.distill import SpADConfig, SpADTrainer, rate_mse

TERMS = {"ea": "ea_weight", "saa": "saa_weight", "sfa": "sfa_weight", "sta": "sta_weight", "hta": "hta_weight"}


def make_teacher():
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=64, hidden_size=256, ffn_dim=512, num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=32, word_embed_proj_dim=256, dropout=0.0)  # fmt: skip
    teacher = OPTForCausalLM(config)
    teacher.set_attn_implementation("eager")
    return teacher


@pytest.fixture(scope="module")
def teacher():
    return make_teacher()


def trainer_for(student, teacher, tmp_path, **weights):
    args = SpADConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_steps=1, **weights)
    batch = torch.randint(3, 64, (8, 16), generator=torch.Generator().manual_seed(0))
    return SpADTrainer(model=student, args=args, teacher=teacher, train_dataset=BlockDataset(batch))


def loss_and_gradient(trainer, student):
    batch = torch.randint(3, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    inputs = {"input_ids": batch, "labels": batch, "attention_mask": torch.ones_like(batch)}
    student.train()
    loss = trainer.compute_loss(student, inputs)
    parameters = [p for p in student.parameters() if p.requires_grad]
    gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
    return loss.detach(), sum(float(g.abs().sum()) for g in gradients if g is not None)


@pytest.mark.slow
@pytest.mark.parametrize("term", [*TERMS, "rate"])
def test_every_term_changes_the_loss_and_sends_gradient_to_the_student(teacher, tmp_path, term):
    """Default student (binary lif, T = 4, SFSA) at the quickstart's width 256: fused norm → neuron kernels."""
    student = spiking_lm.BiSpikCLMForCausalLM.from_teacher(teacher)
    assert (student.config.neuron_type, student.config.time_steps, student.config.neuron_backend) == (
        "lif", 4, "auto",
    )  # fmt: skip
    with torch.no_grad():  # from_teacher copied the embeddings: move them off the teacher's so EA has work to do
        student.get_input_embeddings().weight.add_(torch.randn_like(student.get_input_embeddings().weight) * 0.02)
    alone = {weight: 0.0 for weight in TERMS.values()} | {"rate_gamma": 0.0}
    if term == "rate":  # RateMSE rides on SFA: SFA with γ = 0.5 against SFA alone
        without, _ = loss_and_gradient(trainer_for(student, teacher, tmp_path, **alone | {"sfa_weight": 0.1}), student)
        loss, gradient = loss_and_gradient(
            trainer_for(student, teacher, tmp_path, **alone | {"sfa_weight": 0.1, "rate_gamma": 0.5}), student
        )
        assert loss > without
    else:
        loss, gradient = loss_and_gradient(
            trainer_for(student, teacher, tmp_path, **alone | {TERMS[term]: 0.3}), student
        )
        assert loss > 0
    assert gradient > 0


@pytest.mark.parametrize("neuron_type", ["lif", "nilif", "asn", "psn"])
def test_identical_features_give_rate_mse_zero_for_every_neuron_family(neuron_type):
    """The target is the student's own neuron driven by the teacher's features: where the student's block input
    is the teacher's (block 0 reads the embeddings, the same at every step), RateMSE is 0."""
    torch.manual_seed(0)
    config = spiking_lm.BiSpikCLMConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=32, time_steps=4,
                                        neuron_type=neuron_type)  # fmt: skip
    student = spiking_lm.BiSpikCLMForCausalLM(config).eval()
    ids = torch.randint(3, 64, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        outputs = student(ids, output_hidden_states=True, output_firing_rates=True)
        target = student.block_input_firing_rate(0, outputs.hidden_states[0])
    assert outputs.firing_rates[0].sum() > 0  # the neuron fires: a zero is no accident of silence
    assert rate_mse(outputs.firing_rates[0], target).item() == 0
    other = student.block_input_firing_rate(0, outputs.hidden_states[0] * 3 + 1)
    assert rate_mse(outputs.firing_rates[0], other).item() > 0


def test_the_last_hidden_state_is_taken_after_the_final_norm_like_the_teachers():
    torch.manual_seed(0)
    config = spiking_lm.BiSpikCLMConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=32, time_steps=2)  # fmt: skip
    student = spiking_lm.BiSpikCLMForCausalLM(config).eval()
    with torch.no_grad():
        outputs = student.model(torch.randint(3, 64, (1, 8)), output_hidden_states=True)
    assert torch.equal(outputs.hidden_states[-1], outputs.last_hidden_state)
    teacher = make_teacher().eval()
    with torch.no_grad():
        reference = teacher.model.decoder(torch.randint(3, 64, (1, 8)), output_hidden_states=True)
    assert torch.equal(reference.hidden_states[-1], reference.last_hidden_state)  # HF's convention
