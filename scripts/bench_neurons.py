"""Neuron throughput against GELU (and spikingjelly's LIF when installed), measured in one run.

    python scripts/bench_neurons.py [--threads 2] [--rounds 15] [--shapes 4x1024x512 8x1024x512]

For each shape [T, N, D] (fp32) every neuron runs forward + backward on the same tensor as a GELU baseline;
the two are timed alternately, round after round, and the table reports elements/s and the median of the
per-round ratios (neuron speed / GELU speed; > 1 means faster than GELU). Integer neurons are also timed as
they train ("1×D": one integer step over the same T·N·D elements). Targets (issue 2): integer neurons
≥ 1.0× GELU, multi-step lif ≥ 0.8× GELU and ≥ 5× spikingjelly's CPU path.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from spiking_lm.nn import build_neuron

INTEGER_NEURONS = ("ilif", "nilif", "asn", "nasn")


def fwd_bwd_seconds(module, x: torch.Tensor, grad: torch.Tensor) -> float:
    start = time.perf_counter()
    out = module(x)
    out.backward(grad)
    x.grad = None
    return time.perf_counter() - start


def measure(module, shape, rounds: int, baseline=None, warmup: int = 3):
    """Median over rounds of baseline-time / module-time (GELU unless given), and the module's median seconds."""
    baseline = baseline or torch.nn.GELU()
    x = torch.randn(*shape, requires_grad=True)
    grad = torch.randn(module(x.detach()).shape)
    grad_baseline = torch.randn(baseline(x.detach()).shape)
    for _ in range(warmup):
        fwd_bwd_seconds(module, x, grad)
        fwd_bwd_seconds(baseline, x, grad_baseline)
    ratios, seconds = [], []
    for _ in range(rounds):
        reference = fwd_bwd_seconds(baseline, x, grad_baseline)
        spent = fwd_bwd_seconds(module, x, grad)
        ratios.append(reference / spent)
        seconds.append(spent)
    return statistics.median(ratios), statistics.median(seconds)


def spikingjelly_lif():
    try:
        from spikingjelly.activation_based import neuron, surrogate
    except Exception:  # noqa: BLE001 - optional dependency; any import failure means "not available"
        return None
    return neuron.LIFNode(
        tau=2.0,
        decay_input=False,
        v_reset=None,
        v_threshold=1.0,
        surrogate_function=surrogate.ATan(alpha=2.0),
        step_mode="m",
    )


class _SpikingjellyFresh(torch.nn.Module):
    """spikingjelly keeps membrane state between calls; reset it so every call matches ours."""

    def __init__(self, node):
        super().__init__()
        self.node = node

    def forward(self, x):
        self.node.reset()
        return self.node(x)


ALL_NEURONS = ("lif", "ilif", "nilif", "asn", "nasn", "tlif", "psn", "masked_psn", "sliding_psn")


def cases(shape, names):
    steps, rows, width = shape
    for name in names:
        kwargs = {"time_steps": steps} if name in ("psn", "masked_psn", "tlif") else {}
        if name == "masked_psn":
            kwargs["order"] = 2
        yield f"{name} (T={steps})", build_neuron(name, **kwargs), shape
        if name == "lif":
            yield f"lif (T={steps}, eager)", build_neuron(name, backend="torch"), shape
    for name in (n for n in INTEGER_NEURONS if n in names):
        yield f"{name} (1x{4}, T=1)", build_neuron(name), (1, steps * rows, width)
        yield f"{name} (1x{4}, T=1, eager)", build_neuron(name, backend="torch"), (1, steps * rows, width)
    node = spikingjelly_lif()
    if node is not None and "lif" in names:
        yield f"spikingjelly LIFNode (T={steps})", _SpikingjellyFresh(node), shape


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--shapes", nargs="+", default=["4x1024x512", "8x1024x512"])
    parser.add_argument("--neurons", nargs="+", default=list(ALL_NEURONS), choices=ALL_NEURONS)
    parser.add_argument("--json", help="also write the table to this JSON file (scripts/plot_benchmarks.py)")
    args = parser.parse_args()
    rows = []
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, forward+backward, median of {args.rounds} rounds")
    print(f"{'neuron':<38} {'shape':<16} {'Melem/s':>9} {'x GELU':>8}")
    for text in args.shapes:
        shape = tuple(int(part) for part in text.split("x"))
        for label, module, case_shape in cases(shape, args.neurons):
            ratio, seconds = measure(module, case_shape, args.rounds)
            elements = torch.Size(case_shape).numel()
            shape_text = "x".join(map(str, case_shape))
            print(f"{label:<38} {shape_text:<16} {elements / seconds / 1e6:>9.1f} {ratio:>8.2f}", flush=True)
            rows.append(
                {"neuron": label, "shape": shape_text, "melem_per_s": elements / seconds / 1e6, "x_gelu": ratio}
            )
        node = spikingjelly_lif()
        if node is not None and "lif" in args.neurons:
            ratio, _ = measure(build_neuron("lif"), shape, args.rounds, baseline=_SpikingjellyFresh(node))
            print(f"{'lif speed-up over spikingjelly (same rounds)':<55} {ratio:>7.2f}x", flush=True)
    if args.json:
        settings = {"torch": torch.__version__, "threads": args.threads, "rounds": args.rounds}
        with open(args.json, "w") as handle:
            json.dump({"benchmark": "bench_neurons", "settings": settings, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
