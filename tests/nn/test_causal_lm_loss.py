"""The fused causal-LM loss must be transformers' `ForCausalLMLoss`: value, gradients, reductions, errors."""

import pytest
import torch
from transformers.loss.loss_utils import ForCausalLMLoss

from spiking_lm.nn.heads import causal_lm_loss


def _both(logits, labels, vocab, **kwargs):
    results = []
    for loss_fn in (ForCausalLMLoss, causal_lm_loss):
        loss = loss_fn(logits, labels, vocab, **kwargs)
        (grad,) = torch.autograd.grad(loss, logits)
        results.append((loss, grad))
    return results


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 7, 50), (4, 64, 1024)], ids=["eager", "compiled"])  # 2^18 logits compile
@pytest.mark.parametrize("items", [None, 37, "tensor"])
def test_fused_loss_equals_transformers_causal_lm_loss(dtype, shape, items):
    logits = (torch.randn(*shape) * 3).to(dtype).requires_grad_()
    labels = torch.randint(0, shape[-1], shape[:2])
    labels[0, :3] = -100
    num_items = torch.tensor(37) if items == "tensor" else items
    (expected, expected_grad), (loss, grad) = _both(logits, labels, shape[-1], num_items_in_batch=num_items)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    # bf16 gradients: the same fp32 value rounded once (one bf16 step apart at most)
    rtol = 2**-8 if dtype == torch.bfloat16 else 0
    torch.testing.assert_close(grad.float(), expected_grad.float(), rtol=rtol, atol=1e-7)


def test_fused_loss_takes_given_shift_labels_and_another_ignore_index():
    logits = torch.randn(2, 5, 11, requires_grad=True)
    shifted = torch.randint(0, 11, (2, 5))
    shifted[1, -2:] = 7
    kwargs = {"shift_labels": shifted, "ignore_index": 7}
    (expected, expected_grad), (loss, grad) = _both(logits, None, 11, **kwargs)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)


def test_a_non_finite_row_that_is_ignored_leaves_the_loss_finite_as_in_transformers():
    logits = torch.randn(1, 4, 9, requires_grad=True)
    with torch.no_grad():
        logits[0, 3] = float("nan")  # the last position predicts nothing: its target is the padding
    labels = torch.randint(0, 9, (1, 4))
    (expected, expected_grad), (loss, grad) = _both(logits, labels, 9)
    assert torch.isfinite(expected) and torch.isfinite(loss)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad, equal_nan=True)  # the NaN row's gradient is NaN in both


def test_out_of_range_labels_raise_with_the_label_named():
    logits = torch.randn(1, 4, 9)
    with pytest.raises(IndexError, match="label 12 is out of range for vocab_size 9"):
        causal_lm_loss(logits, torch.tensor([[1, 12, 3, 4]]), 9)
    with pytest.raises(IndexError, match="label -3"):
        causal_lm_loss(logits, torch.tensor([[1, 2, -3, 4]]), 9)
    with pytest.raises(ValueError, match="logits have 9 entries per position, vocab_size is 3"):
        causal_lm_loss(logits, torch.tensor([[1, 2, 0, 1]]), 3)  # 36 logits would reshape to 12 rows of 3


def test_all_targets_ignored_gives_nan_as_transformers_does():
    logits = torch.randn(1, 3, 5)
    labels = torch.full((1, 3), -100)
    assert torch.isnan(ForCausalLMLoss(logits, labels, 5)) and torch.isnan(causal_lm_loss(logits, labels, 5))
