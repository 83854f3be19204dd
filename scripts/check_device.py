"""Self-check of spiking_lm on an accelerator (or any device): kernels and models against the CPU reference.

    python scripts/check_device.py [--device cuda]

Checks, each printed as PASS/FAIL with its measured error:
1. every neuron's fused kernel compiled for the device (Triton on CUDA) against the eager kernel: identical
   spikes, gradients within 1e-5;
2. every model class: logits and loss gradients on the device against the CPU;
3. binary spike inference against integer mode, the event-driven inference backend against the dense one,
   and cached greedy generation against uncached, on the device.
Exits non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys

import torch

import spiking_lm
from spiking_lm.nn import build_neuron, event

TINY = {"vocab_size": 99, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 96, "max_position_embeddings": 64, "pad_token_id": 0}  # fmt: skip
MODELS = [
    spiking_lm.BiSpikCLMForCausalLM,
    spiking_lm.WDSpikingformerForCausalLM,
    spiking_lm.WDSpikingformerForSequenceClassification,
    spiking_lm.WESpikingformerForMaskedLM,
    spiking_lm.WESpikingformerForSequenceClassification,
]
failures = []


def report(name: str, ok: bool, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name:<60} {detail}", flush=True)
    if not ok:
        failures.append(name)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def check_kernels(device: str) -> None:
    for name, steps in [("lif", 4), ("ilif", 4), ("nilif", 1), ("asn", 1), ("nasn", 4)]:
        x = (torch.randn(steps, 256, 512, device=device) * 3).requires_grad_()
        grad = torch.randn_like(x)
        outputs = []
        for backend in ("torch", "inductor"):
            neuron = build_neuron(name, backend=backend).to(device)
            out = neuron(x)
            outputs.append((out, torch.autograd.grad(out, x, grad)[0]))
        same = torch.equal(outputs[0][0], outputs[1][0])
        error = relative(outputs[1][1], outputs[0][1])
        report(f"kernel {name} T={steps}: compiled == eager", same and error < 1e-5, f"grad rel err {error:.1e}")


@contextlib.contextmanager
def gather_everything():
    """Send every spike-fed Linear through the gather (tiny layers would otherwise take the GEMM)."""
    saved = event.MIN_WEIGHT_BYTES, event.EVENT_MAX_DENSITY
    event.MIN_WEIGHT_BYTES, event.EVENT_MAX_DENSITY = 0, 1.0
    try:
        yield
    finally:
        event.MIN_WEIGHT_BYTES, event.EVENT_MAX_DENSITY = saved


def check_model(model_class, device: str) -> None:
    torch.manual_seed(0)
    config = model_class.config_class(**TINY, **({"time_steps": 2} if "BiSpik" in model_class.__name__ else {}))
    cpu_model = model_class(config).train()
    device_model = copy.deepcopy(cpu_model).to(device)
    input_ids = torch.randint(3, 99, (2, 12))
    labels = torch.tensor([0, 1]) if "Classification" in model_class.__name__ else input_ids
    losses = []
    for model, where in ((cpu_model, "cpu"), (device_model, device)):
        out = model(input_ids=input_ids.to(where), labels=labels.to(where))
        out.loss.backward()
        losses.append((out.logits.detach().cpu(), out.loss.item()))
    name = model_class.__name__
    error = relative(losses[1][0], losses[0][0])
    report(f"{name}: logits {device} vs cpu", error < 1e-3, f"rel err {error:.1e}")
    grad_errors = [
        relative(p_device.grad.cpu(), p_cpu.grad)
        for p_cpu, p_device in zip(cpu_model.parameters(), device_model.parameters(), strict=True)
        if p_cpu.grad is not None and p_cpu.grad.norm() > 0
    ]
    # Spiking nets amplify rounding differences at thresholds; the median parameter is the fair summary.
    median = sorted(grad_errors)[len(grad_errors) // 2]
    report(f"{name}: gradients {device} vs cpu (median over parameters)", median < 1e-2, f"rel err {median:.1e}")

    model = model_class(model_class.config_class(**TINY, neuron_type="nilif", time_steps=2)).to(device).eval()
    with torch.no_grad():
        integer = model(input_ids=input_ids.to(device)).logits
        binary = model.set_spike_mode("binary")(input_ids=input_ids.to(device)).logits
    error = relative(binary, integer)
    report(f"{name}: binary spike mode == integer mode", error <= 1e-4, f"rel err {error:.1e}")
    model.set_spike_mode("integer")
    with torch.no_grad(), gather_everything():
        gathered = model.set_inference_backend("event")(input_ids=input_ids.to(device)).logits
    error = relative(gathered, integer)
    report(f"{name}: event backend == dense", error <= 1e-5, f"rel err {error:.1e}")
    model.set_inference_backend("dense")
    if "CausalLM" in name:
        options = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
        cached = model.generate(input_ids.to(device), **options)
        uncached = model.generate(input_ids.to(device), use_cache=False, **options)
        report(f"{name}: cached greedy == uncached", torch.equal(cached, uncached), "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"torch {torch.__version__}, device {name}")
    check_kernels(args.device)
    for model_class in MODELS:
        check_model(model_class, args.device)
    print(f"{len(failures)} failed" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
