"""The `spiking-lm` command line."""

from __future__ import annotations

import argparse
import sys


def _quickstart(args: argparse.Namespace) -> int:
    """Neuron-library demo: every neuron fires on the same input, and every integer neuron is shown to give the
    same Linear output when its spikes are unfolded into binary virtual steps."""
    import torch

    from spiking_lm.nn import NEURONS, IntegerLIFNeuron, binary_to_integer, build_neuron

    torch.manual_seed(args.seed)
    steps, tokens, width = 4, 64, 128
    membrane_input = torch.randn(steps, tokens, width, dtype=torch.float64) * 2
    readout = torch.nn.Linear(width, 32, dtype=torch.float64)
    print(f"spiking_lm quickstart: every neuron on the same input [T={steps}, L={tokens}, D={width}]")
    print(f"{'neuron':<12} {'output values':<34} {'firing rate':>11} {'binary == integer (max |diff|)':>31}")
    for name in NEURONS:
        neuron = build_neuron(name, strict=False, time_steps=steps, record_firing_rate=True).double()
        with torch.no_grad():
            spikes = neuron(membrane_input)
            values = ", ".join(f"{v:g}" for v in spikes.unique()[:6].tolist())
            check = "-"
            if isinstance(neuron, IntegerLIFNeuron):
                neuron.set_spike_mode("binary")
                train = neuron(membrane_input)
                unfolded = binary_to_integer(readout(train) - readout.bias, neuron.spike_max) * neuron.spike_scale
                offset = readout.weight.sum(1) * neuron.spike_offset
                check = f"{(unfolded + readout.bias + offset - readout(spikes)).abs().max().item():.1e}"
        print(f"{name:<12} {values:<34} {neuron.firing_rate:>11.3f} {check:>31}")
    print("The full quickstart (tokenizer, ANN teacher, SpAD distillation) arrives with the distillation issue.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spiking-lm", description="Spiking language models for Hugging Face.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    quickstart = commands.add_parser(
        "quickstart",
        help="run the quickstart (today: the neuron library demo; distillation lands with its issue)",
    )
    quickstart.add_argument("--seed", type=int, default=0)
    quickstart.set_defaults(handler=_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
