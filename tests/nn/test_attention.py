import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import spiking_lm
from spiking_lm.nn.attention import allowed_keys, sparsemax, spike_matmul, winner_take_all

ALL_KEYS = torch.ones(1, 1, 1, 5, dtype=torch.bool)


def test_hard_wta_picks_the_argmax_and_the_first_index_wins_ties():
    scores = torch.tensor([[[[1.0, 3.0, 2.0, 3.0, 0.0]]]])
    assert winner_take_all(scores, ALL_KEYS).flatten().tolist() == [0, 1, 0, 0, 0]


def test_padded_keys_never_win():
    scores = torch.tensor([[[[1.0, 9.0, 2.0, 9.0, 0.0]]]])
    mask = torch.tensor([[1, 0, 1, 0, 1]])
    allowed = allowed_keys(mask, 1, 5, causal=False, device=scores.device)
    assert winner_take_all(scores, allowed).flatten().tolist() == [0, 0, 1, 0, 0]
    assert winner_take_all(scores, allowed, "topk", k=2).flatten().tolist() == [1, 0, 1, 0, 0]
    weights = winner_take_all(scores, allowed, "sparsemax")
    assert weights[..., 1].item() == 0 and weights[..., 3].item() == 0
    assert weights.sum().item() == pytest.approx(1.0)


def test_causal_mask_removes_future_keys_before_the_competition():
    allowed = allowed_keys(None, 3, 3, causal=True, device=torch.device("cpu"))
    scores = torch.tensor([[[[0.0, 5.0, 9.0], [0.0, 5.0, 9.0], [0.0, 5.0, 9.0]]]])
    winners = winner_take_all(scores, allowed).argmax(-1).flatten().tolist()
    assert winners == [0, 1, 2]


def test_topk_keeps_the_k_largest_with_stable_ties():
    scores = torch.tensor([[[[2.0, 5.0, 2.0, 4.0, 1.0]]]])
    assert winner_take_all(scores, ALL_KEYS, "topk", k=3).flatten().tolist() == [1, 1, 0, 1, 0]


def test_sparsemax_is_a_sparse_distribution():
    probabilities = sparsemax(torch.tensor([3.0, 1.0, 0.2, 2.9]))
    assert probabilities.sum().item() == pytest.approx(1.0)
    assert probabilities[1].item() == 0 and probabilities[2].item() == 0
    torch.testing.assert_close(probabilities[[0, 3]], torch.tensor([0.55, 0.45]))


def test_wta_backward_is_straight_through_softmax():
    scores = torch.randn(1, 1, 2, 5, requires_grad=True)
    allowed = torch.ones(1, 1, 2, 5, dtype=torch.bool)
    grad = torch.randn(1, 1, 2, 5)
    (hard_grad,) = torch.autograd.grad(winner_take_all(scores, allowed, temperature=0.5), scores, grad)
    (soft_grad,) = torch.autograd.grad(torch.softmax(scores / 0.5, -1), scores, grad)
    torch.testing.assert_close(hard_grad, soft_grad)


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_sfsa_forward_uses_no_softmax_and_no_exponent():
    config = spiking_lm.BiSpikCLMConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, time_steps=2, neuron_backend="torch",
    )  # fmt: skip
    model = spiking_lm.BiSpikCLMForCausalLM(config).eval()
    recorder = OpRecorder()
    with torch.no_grad(), recorder:
        model(torch.randint(3, 99, (2, 6)))
    assert "mm" in recorder.ops or "bmm" in recorder.ops  # the trace saw the matmuls
    forbidden = {op for op in recorder.ops if "softmax" in op or op in ("exp", "exp2", "expm1", "sigmoid", "tanh")}
    assert not forbidden, forbidden


def test_wssa_model_in_training_uses_softmax_only_for_the_straight_through_gradient():
    config = spiking_lm.WDSpikingformerConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64,
    )  # fmt: skip
    model = spiking_lm.WDSpikingformerForCausalLM(config).eval()
    recorder = OpRecorder()
    with torch.no_grad(), recorder:
        model(torch.randint(3, 99, (1, 6)))
    assert not {op for op in recorder.ops if "softmax" in op}


def test_row_normalized_keeps_gradients_of_silent_rows_bounded():
    # A query whose attention neuron never fired has an all-zero row: its value stays zero, and the gradient
    # reaching its entries is the upstream gradient itself (divided by 1), not 1/epsilon times it.
    from spiking_lm.nn.attention import row_normalized

    weights = torch.zeros(2, 1, 1, 2, 3, dtype=torch.float64)
    weights[:, 0, 0, 0] = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    weights.requires_grad_(True)
    maps = row_normalized(weights)
    assert torch.equal(maps[0, 0, 0].detach(), torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64))
    assert torch.equal(maps[0, 0, 1].detach(), torch.zeros(3, dtype=torch.float64))
    maps[0, 0, 1].sum().backward()
    assert torch.equal(weights.grad[:, 0, 0, 1], torch.full((2, 3), 0.5, dtype=torch.float64))  # mean over T=2
    assert torch.equal(weights.grad[:, 0, 0, 0], torch.zeros(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("a_shape", [(3, 2, 4, 1, 8), (4, 1, 8)])
def test_spike_matmul_on_a_batch_major_operand_equals_the_plain_product(a_shape):
    """The K/V cache is stored (B, T·H, L, d) and viewed time-major: the product runs in its stored order (no copy)
    and must equal torch.matmul, also when the first operand broadcasts."""
    generator = torch.Generator().manual_seed(0)
    stored = torch.randint(0, 3, (2, 3 * 4, 5, 8), generator=generator).float()  # (B, T·H, L, d)
    keys = stored.view(2, 3, 4, 5, 8).permute(1, 0, 2, 3, 4)  # (T, B, H, L, d), batch-major in memory
    a = torch.randint(0, 3, a_shape, generator=generator).float()
    assert torch.equal(spike_matmul(a, keys.transpose(-1, -2)), torch.matmul(a, keys.transpose(-1, -2)))


@pytest.mark.parametrize("head_dim,output_scale", [(16, "sqrt_d"), (12, "sqrt_d"), (16, "causal_count")])
def test_sfsa_training_in_bf16_equals_the_unfused_products_bit_for_bit(head_dim, output_scale):
    """Training in bf16, SFSA keeps the overlap counts, the attention spikes and (for a power-of-two 1/√d) the
    context in bf16 and fires through one fused kernel; values and gradients must be those of the plain
    composition (widened scores, mask, scale, neuron, fp32 context)."""
    from spiking_lm.nn import build_neuron
    from spiking_lm.nn.attention import row_normalized, softmax_free_attention

    torch.manual_seed(0)
    shape = (4, 2, 3, 16, head_dim)
    q, k, v = ((torch.rand(shape) < 0.4).float().requires_grad_() for _ in range(3))
    allowed = allowed_keys(torch.tensor([[0, 0] + [1] * 14, [1] * 16]), 16, 16, causal=True, device=q.device)
    neuron = build_neuron("lif", v_threshold=0.4)
    grad = torch.randn(shape)
    results = []
    for attn_neuron in (neuron, lambda x: neuron(x)):  # a plain callable has no fused form
        output, spikes = softmax_free_attention(q, k, v, allowed, attn_neuron, 0.3, output_scale, torch.bfloat16)
        results.append((output, spikes, *torch.autograd.grad(output, [q, k, v], grad.to(output.dtype))))
    (fused, fused_spikes, *fused_grads), (plain, plain_spikes, *plain_grads) = results
    assert fused_spikes.dtype == torch.bfloat16 and fused_spikes.grad_fn.name().startswith("MaskedMultiStepLIF")
    assert fused.dtype == (torch.bfloat16 if head_dim == 16 and output_scale == "sqrt_d" else torch.float32)
    assert torch.equal(fused_spikes.float(), plain_spikes) and torch.equal(fused.float(), plain)
    for got, expected in zip(fused_grads, plain_grads, strict=True):
        assert torch.equal(got, expected)
    assert 0 < plain_spikes.mean() < 1  # the neuron fired on some pairs, not all
    maps = row_normalized(fused_spikes)  # distillation's attention maps: summed in fp32, not bf16
    assert maps.dtype == torch.float32 and torch.equal(maps, row_normalized(plain_spikes))


@pytest.mark.parametrize("backend", ["torch", "inductor"])
def test_sfsa_on_zero_one_bf16_operands_keeps_uint8_and_computes_the_fused_products(backend):
    """Training in bf16 on 0/1 Q, K, V (`zero_one`), SFSA's products keep Q, K, V and the overlap counts as
    uint8 and recompute the attention spikes in the backward neuron kernel (`SpikingAttentionProducts`): the
    context and the spikes are those of the fused path bit for bit, and so are the gradients of Q, K and V,
    through the context and through the attention maps (SAA distillation differentiates them)."""
    from spiking_lm.nn import build_neuron
    from spiking_lm.nn.attention import softmax_free_attention

    torch.manual_seed(0)
    shape = (4, 2, 3, 16, 16)
    operands = [(torch.rand(shape) < 0.4).bfloat16().requires_grad_() for _ in range(3)]
    allowed = allowed_keys(torch.tensor([[0, 0] + [1] * 14, [1] * 16]), 16, 16, causal=True, device="cpu")
    neuron = build_neuron("lif", v_threshold=0.4, backend=backend)
    grad, grad_maps = torch.randn(shape).bfloat16(), torch.randn(4, 2, 3, 16, 16).bfloat16()
    results = []
    for zero_one in (True, False):
        output, spikes = softmax_free_attention(*operands, allowed, neuron, 0.3, "sqrt_d", torch.bfloat16, zero_one)
        saved = output.grad_fn.next_functions[0][0].saved_tensors if zero_one else ()
        loss = (output * grad).sum() + (spikes * grad_maps).sum()
        results.append((output, spikes, saved, *torch.autograd.grad(loss, operands)))
    (output, spikes, saved, *grads), (fused, fused_spikes, _, *fused_grads) = results
    assert [t.dtype for t in saved] == [torch.uint8] * 4 + [torch.bool]  # Q, K, V, counts; the mask
    assert spikes.dtype == output.dtype == torch.bfloat16
    assert torch.equal(spikes, fused_spikes) and torch.equal(output, fused)
    assert 0 < spikes.float().mean() < 1
    for got, expected in zip(grads, fused_grads, strict=True):
        assert got.dtype == torch.bfloat16 and torch.equal(got, expected)
