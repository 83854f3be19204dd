"""How far a W8 model's logits move from its fp32 model's, on random OPT-shape models, beside the int8 ANN's own move.

    python scripts/w8_fidelity.py [--shapes 8m 125m] [--seeds 0 1] [--length 128]

For each shape and seed, a random `OPTForCausalLM` (the layouts of `bench_inference.py`) is the ANN, and BiSpikCLM
students built from it (`nilif` 1×4, `lif` T=4) are compared with their `quantize_weights("int8")` variants (with
and without the int8 head) on one random prompt: the mean and largest per-position KL(fp32 ‖ W8) of the next-token
distributions, the mean |Δ logit| in units of the fp32 logits' standard deviation, and how often the top token
agrees. A "same-size noise" row moves the same weights by uniform noise as large as the int8 rounding (±half a
step) instead, and the last row of each block is the ANN against itself after torch's int8 dynamic quantization,
the move a CPU user accepts for an int8 ANN.

Rounding is exact per layer (counts × int8 weights are exact sums; |W − s ⊙ Q| ≤ max|W_row| / 254), but a
spike is a threshold decision: where rounding moves a membrane across it, the spike flips and the change travels
on, so whole-model figures are measured, not derived. Random models sit near their thresholds and near a uniform
next-token distribution, which makes them the hard case for the logits and a meaningless one for the top token;
a trained model's held-out perplexity moves by about 0.1 % (docs/w8.md).
"""

from __future__ import annotations

import argparse
import copy

import torch
from bench_inference import SHAPES, int8_dynamic
from transformers import OPTConfig, OPTForCausalLM

import spiking_lm

STUDENTS = {"nilif 1x4": {"neuron_type": "nilif", "time_steps": 1}, "lif T=4": {"neuron_type": "lif", "time_steps": 4}}


def logit_drift(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """KL(reference ‖ other) per position (mean, max), mean |Δ| / std(reference), top-1 agreement; logits (L, V)."""
    log_p, log_q = reference.log_softmax(-1), other.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return {
        "kl_mean": kl.mean().item(),
        "kl_max": kl.max().item(),
        "mean_abs_over_std": ((reference - other).abs().mean() / reference.std()).item(),
        "top1_agreement": (reference.argmax(-1) == other.argmax(-1)).float().mean().item(),
    }


def same_size_noise(student, w8, seed: int):
    """The student with every weight W8 quantized moved by uniform noise in ±s/2 instead (s = max|W_row| / 127, the
    int8 step), a perturbation as large as W8's rounding but unrelated to it: how much any change of that size
    moves the logits."""
    from spiking_lm.nn.weight_quantization import Int8Linear

    quantized = {name for name, module in w8.named_modules() if isinstance(module, Int8Linear)}
    noisy, generator = copy.deepcopy(student), torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in noisy.named_modules():
            if name in quantized:
                step = module.weight.abs().amax(1, keepdim=True) / 127
                module.weight.add_((torch.rand(module.weight.shape, generator=generator) - 0.5) * step)
    return noisy


def logits(model, prompt) -> torch.Tensor:
    with torch.no_grad():
        return model(prompt).logits[0].float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["8m", "125m"], choices=list(SHAPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--length", type=int, default=128, help="prompt length (random tokens)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'shape':<6} {'seed':>4}  {'model':<28} {'KL mean':>9} {'KL max':>9} {'|dlogit|/std':>12} {'top-1':>6}")
    for shape in args.shapes:
        settings = SHAPES[shape]
        for seed in args.seeds:
            config = OPTConfig(**settings, word_embed_proj_dim=settings["hidden_size"], max_position_embeddings=1024)
            torch.manual_seed(seed)
            ann = OPTForCausalLM(config).eval()
            generator = torch.Generator().manual_seed(seed + 1)
            prompt = torch.randint(3, settings["vocab_size"], (1, args.length), generator=generator)
            rows = []
            for name, options in STUDENTS.items():
                student = spiking_lm.BiSpikCLMForCausalLM.from_teacher(ann, max_position_embeddings=1024, **options)
                reference = logits(student.eval(), prompt)
                for head in (False, True):
                    w8 = copy.deepcopy(student).quantize_weights("int8", lm_head=head)
                    label = f"{name} W8" + (", int8 head" if head else "")
                    rows.append((label, logit_drift(reference, logits(w8, prompt))))
                noisy = same_size_noise(student, w8, seed)
                rows.append((f"{name} same-size noise", logit_drift(reference, logits(noisy, prompt))))
            int8_ann = int8_dynamic(ann)
            rows.append(("OPT int8 dynamic vs OPT", logit_drift(logits(ann, prompt), logits(int8_ann, prompt))))
            for label, drift in rows:
                print(f"{shape:<6} {seed:>4}  {label:<28} {drift['kl_mean']:>9.2e} {drift['kl_max']:>9.2e} "
                      f"{drift['mean_abs_over_std']:>12.3f} {drift['top1_agreement']:>6.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
