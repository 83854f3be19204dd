"""The `spiking-lm` command line."""

from __future__ import annotations

import argparse
import os
import sys


def _quickstart(args: argparse.Namespace) -> int:
    """Tokenizer → OPT teacher → SpAD-distilled BiSpikCLM student on the shipped Shakespeare corpus."""
    from spiking_lm.quickstart import run_quickstart

    results = run_quickstart(args.output_dir, smoke=args.smoke, seed=args.seed)
    print(
        f"\nheld-out perplexity: teacher {results['teacher_perplexity']}, student {results['student_perplexity']} "
        f"(ratio {results['perplexity_ratio']})"
    )
    print(f"teacher sample: {results['teacher_sample']!r}")
    print(f"student sample: {results['student_sample']!r}")
    print(f"timings: {results['timings']}")
    print(f"Hub-ready folder: {args.output_dir}/model (weights, remote code, tokenizer, README.md model card)")
    return 0


def _run_recipe(args: argparse.Namespace, overrides: list[str]) -> int:
    from spiking_lm.distributed import describe_backend
    from spiking_lm.recipes import load_recipe
    from spiking_lm.run import run_distill, run_train

    recipe = load_recipe(args.recipe, overrides)
    folder = (run_distill if args.command == "distill" else run_train)(recipe, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, not per process
        print(f"saved the student to {folder} (trained with {describe_backend()})")
    return 0


def _neurons(args: argparse.Namespace) -> int:
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
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spiking-lm", description="Spiking language models for Hugging Face.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    quickstart = commands.add_parser(
        "quickstart",
        help="train a tokenizer, an OPT teacher and a SpAD-distilled BiSpikCLM on Shakespeare "
        "(~10 min; --smoke ~1 min)",
    )
    quickstart.add_argument("--output-dir", default="outputs/quickstart", help="where the run and the model go")
    quickstart.add_argument("--smoke", action="store_true", help="toy sizes, about a minute (what the tests run)")
    quickstart.add_argument("--seed", type=int, default=0)
    quickstart.set_defaults(handler=_quickstart)
    for name, text in (
        ("distill", "distill an HF ANN teacher into a spiking student with SpAD, as a recipe describes"),
        ("train", "train a spiking model with its task loss alone (no teacher), as a recipe describes"),
    ):
        command = commands.add_parser(name, help=text, description=f"{text}. Override any recipe key with "
                                      "--section.key value (e.g. --training.max_steps 100).")  # fmt: skip
        command.add_argument("recipe", help="a YAML recipe (see recipes/)")
        command.add_argument("--resume", action="store_true", help="resume from the last checkpoint in output_dir")
        command.set_defaults(handler=_run_recipe, takes_overrides=True)
    neurons = commands.add_parser("neurons", help="show every neuron on one input and the integer->binary equivalence")
    neurons.add_argument("--seed", type=int, default=0)
    neurons.set_defaults(handler=_neurons)
    return parser


def _leave_launched_process(code: int) -> None:
    """End a process started by `accelerate launch` / `torchrun` once its work is saved.

    gloo (and DeepSpeed's ZeRO-3 threads) can abort interpreter shutdown with "terminate called without an
    active exception", which the launcher reports as a failed run although everything was written. So the
    ranks meet, the process group is closed, output is flushed and the process exits without the teardown.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    if getattr(args, "takes_overrides", False):
        code = args.handler(args, extra)
    elif extra:
        build_parser().error(f"unrecognized arguments: {' '.join(extra)}")
    else:
        code = args.handler(args)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _leave_launched_process(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
