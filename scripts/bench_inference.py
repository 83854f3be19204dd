"""Greedy decoding speed: the event-driven path against our dense path and the same-shape fp32 HF ANN.

    python scripts/bench_inference.py [--threads 2] [--shapes 8m 125m] [--batches 1 8] [--new-tokens 256]

For each shape (OPT layout: "8m" = hidden 256, 4 layers, vocab 16384; "125m" = OPT-125M) an `OPTForCausalLM`
with random weights is the ANN, and BiSpikCLM students built from it by `from_teacher` run with
``nilif`` 1×4 neurons (T=1) and with binary ``lif`` neurons (T=4). Each measurement is `generate` from a
128-token prompt to 256 new tokens (min = max, greedy, with the cache), batch 1 and batch 8, in fp32; the
three contenders of one (shape, batch) run back to back and the table reports tokens/s (new tokens × batch /
seconds, prefill included) and the ratio to the ANN measured in the same round.

Beside each spiking figure: the measured firing rate and density (share of nonzero spike values entering
the Linears) on the prompt, and the weight bytes read per generated token — for the ANN every Linear and the
LM head once per step, for the event path the LM head plus what `spiking_lm.nn.event` actually gathered
(counted while decoding), for our dense path every Linear (and T rows of spikes).

Targets (issue 6): event path ≥ 1.5× the ANN's tokens/s at batch 1 on the 125M shape, ≥ 1.0× at batch 8.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import OPTConfig, OPTForCausalLM

import spiking_lm
from spiking_lm.energy import estimate_energy
from spiking_lm.nn import event

SHAPES = {
    "8m": {"vocab_size": 16384, "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
           "ffn_dim": 1024},
    "125m": {"vocab_size": 50272, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "ffn_dim": 3072},
}  # fmt: skip
STUDENTS = {"nilif 1x4": {"neuron_type": "nilif", "time_steps": 1}, "lif T=4": {"neuron_type": "lif", "time_steps": 4}}
PROMPT = 128


def build(shape: str):
    settings = SHAPES[shape]
    config = OPTConfig(**settings, word_embed_proj_dim=settings["hidden_size"], max_position_embeddings=1024)
    torch.manual_seed(0)
    ann = OPTForCausalLM(config).eval()
    students = {
        name: spiking_lm.BiSpikCLMForCausalLM.from_teacher(ann, max_position_embeddings=1024, **options).eval()
        for name, options in STUDENTS.items()
    }
    return ann, students


def linear_bytes(model) -> tuple[int, int]:
    """(bytes of the Linears inside the blocks, bytes of the LM head)."""
    head = model.get_output_embeddings().weight
    total = sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, torch.nn.Linear))
    head_bytes = head.numel() * head.element_size()
    return total - head_bytes, head_bytes


def decode(model, prompt, new_tokens) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=1)
    return time.perf_counter() - start


def density_on(model, prompt) -> tuple[float, float]:
    """(firing rate, share of nonzero values fed to spike-fed Linears) on the prompt."""
    report = estimate_energy(model, prompt).to_dict()
    nonzero, total = 0, 0

    def count(linear, spikes, neuron):
        nonlocal nonzero, total
        values = spikes if neuron is None else spikes - getattr(neuron, "spike_offset", 0.0)
        nonzero += torch.count_nonzero(values).item()
        total += values.numel()

    class Recorder:
        spike_fed_linear = staticmethod(count)

        @staticmethod
        def spiking_attention(*args):
            pass

    from spiking_lm.nn import layers

    layers.OPERATION_RECORDERS.append(Recorder)
    try:
        with torch.no_grad():
            model(prompt)
    finally:
        layers.OPERATION_RECORDERS.remove(Recorder)
    return report["firing_rate"], nonzero / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for shape in args.shapes:
        ann, students = build(shape)
        block_bytes, head_bytes = linear_bytes(ann)
        parameters = sum(p.numel() for p in ann.parameters()) / 1e6
        for batch in args.batches:
            prompt = torch.randint(
                3, SHAPES[shape]["vocab_size"], (batch, PROMPT), generator=torch.Generator().manual_seed(1)
            )
            decode(ann, prompt, 2)  # warm-up at the prompt's shape
            ann_seconds = decode(ann, prompt, args.new_tokens)
            ann_speed = batch * args.new_tokens / ann_seconds
            rows.append(
                (shape, parameters, batch, "OPT fp32 (HF)", ann_speed, 1.0, "-", "-", (block_bytes + head_bytes) / 1e6)
            )
            for name, student in students.items():
                rate, density = density_on(student, prompt[:1])
                for backend in ("dense", "event"):
                    student.set_inference_backend(backend)
                    decode(student, prompt, 2)  # warm-up: compiled kernels for the prefill shape
                    event.reset_weight_reads()
                    seconds = decode(student, prompt, args.new_tokens)
                    speed = batch * args.new_tokens / seconds
                    if backend == "event":
                        reads = event.WEIGHT_READS
                        read = (reads["gathered_bytes"] + reads["dense_bytes"]) / (args.new_tokens + 1) + head_bytes
                    else:
                        read = block_bytes + head_bytes
                    label = f"BiSpikCLM {name} {backend}"
                    rows.append((shape, parameters, batch, label, speed, speed / ann_speed, f"{rate:.3f}",
                                 f"{density:.3f}", read / 1e6))  # fmt: skip
                    print(f"  {shape} b{batch} {label}: {speed:.1f} tok/s ({speed / ann_speed:.2f}x ANN)", flush=True)
    print(f"\n{'shape':<6} {'params':>7} {'batch':>5}  {'model':<32} {'tok/s':>8} {'x ANN':>6} {'rate':>6} "
          f"{'dens.':>6} {'MB read/step':>12}")  # fmt: skip
    for shape, parameters, batch, label, speed, ratio, rate, density, read in rows:
        print(f"{shape:<6} {parameters:>6.1f}M {batch:>5}  {label:<32} {speed:>8.1f} {ratio:>6.2f} {rate:>6} "
              f"{density:>6} {read:>12.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
