import math

import pytest
import torch

from spiking_lm.distill import (
    attention_alignment_loss,
    embedding_alignment_loss,
    feature_alignment_loss,
    layer_map,
    masked_mse,
    rate_mse,
    soft_target_loss,
)


def test_every_term_is_zero_for_identical_inputs():
    hidden = torch.randn(2, 5, 8)
    maps = torch.softmax(torch.randn(2, 4, 5, 5), -1)
    logits = torch.randn(2, 5, 11)
    assert embedding_alignment_loss(hidden, hidden).item() == 0
    assert feature_alignment_loss(hidden, hidden).item() == 0
    assert attention_alignment_loss(maps, maps).item() == 0
    assert soft_target_loss(logits, logits).abs().item() < 1e-6
    rates = torch.rand(2, 5, 8)
    assert rate_mse(rates, rates.clone()).item() == 0


def test_masked_mse_ignores_padding():
    student, teacher = torch.zeros(1, 3, 2), torch.zeros(1, 3, 2)
    teacher[0, 2] = 100.0  # only the padded position differs
    mask = torch.tensor([[1, 1, 0]])
    assert masked_mse(student, teacher, mask).item() == 0
    teacher[0, 0, 0] = 2.0  # 4 over 2 positions x 2 features
    assert masked_mse(student, teacher, mask).item() == pytest.approx(1.0)


def test_attention_loss_excludes_padded_queries_and_keys_and_averages_mismatched_heads():
    student = torch.zeros(1, 2, 3, 3)
    teacher = torch.zeros(1, 2, 3, 3)
    teacher[..., 2] = 5.0
    teacher[..., 2, :] = 5.0
    mask = torch.tensor([[1, 1, 0]])
    assert attention_alignment_loss(student, teacher, mask).item() == 0
    averaged = attention_alignment_loss(torch.ones(1, 2, 3, 3), torch.zeros(1, 3, 3, 3))
    assert averaged.item() == pytest.approx(1.0)


def test_soft_target_loss_is_tau_squared_kl():
    student = torch.tensor([[[0.0, 1.0, 2.0]]])
    teacher = torch.tensor([[[2.0, 0.0, 1.0]]])
    tau = 2.0
    p = torch.softmax(teacher / tau, -1)
    q = torch.softmax(student / tau, -1)
    expected = tau**2 * (p * (p.log() - q.log())).sum()
    assert soft_target_loss(student, teacher, tau).item() == pytest.approx(expected.item(), rel=1e-6)
    # scaling: tau^2 keeps gradient magnitudes comparable across temperatures
    low = soft_target_loss(student, teacher, 1.0).item()
    assert low != pytest.approx(expected.item())
    with pytest.raises(ValueError, match="temperature must be > 0"):
        soft_target_loss(student, teacher, 0.0)


def test_soft_target_loss_masks_padding():
    student = torch.zeros(1, 2, 3)
    teacher = torch.zeros(1, 2, 3)
    teacher[0, 1] = torch.tensor([9.0, -9.0, 0.0])
    assert soft_target_loss(student, teacher, 2.0, torch.tensor([[1, 0]])).abs().item() < 1e-7


def test_layer_map_default_and_explicit():
    assert layer_map(4, 12) == [0, 4, 7, 11]
    assert layer_map(2, 2) == [0, 1]
    assert layer_map(1, 6) == [5]
    assert layer_map(2, 4, [1, 3]) == [1, 3]
    with pytest.raises(ValueError, match=r"entries \[4\] are out of range for a teacher with 4 layers"):
        layer_map(2, 4, [0, 4])
    with pytest.raises(ValueError, match="layer_map has 3 entries for a student with 2 layers"):
        layer_map(2, 4, [0, 1, 2])


def test_projection_is_applied_for_width_mismatch():
    projection = torch.nn.Linear(4, 6)
    student, teacher = torch.randn(1, 3, 4), torch.randn(1, 3, 6)
    loss = feature_alignment_loss(student, teacher, projection=projection)
    assert math.isfinite(loss.item())
    loss.backward()
    assert projection.weight.grad is not None
