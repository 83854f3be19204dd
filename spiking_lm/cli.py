"""The `spiking-lm` command line."""

from __future__ import annotations

import argparse
import math
import os
import sys

from .memory import keep_freed_memory


def _quickstart(args: argparse.Namespace) -> int:
    """Tokenizer → OPT teacher → SpAD-distilled BiSpikCLM student on the shipped Shakespeare corpus."""
    from spiking_lm.quickstart import run_quickstart

    results = run_quickstart(args.output_dir, smoke=args.smoke, seed=args.seed, neuron=args.neuron)
    print(
        f"\nheld-out perplexity: teacher {results['teacher_perplexity']}, student {results['student_perplexity']} "
        f"(ratio {results['perplexity_ratio']})"
    )
    energy = results["energy"]
    print(f"energy per forward pass ({energy['convention']} convention): student / teacher = {energy['ratio']}, "
          f"firing rate {energy['firing_rate']}")  # fmt: skip
    print(f"teacher sample (seeded sampling): {results['teacher_sample']!r}")
    print(f"student sample: {results['student_sample']!r}")
    print(f"timings: {results['timings']}")
    print(f"Hub-ready folder: {args.output_dir}/model (weights, remote code, tokenizer, README.md model card)")
    return 0


def _run_recipe(args: argparse.Namespace, overrides: list[str]) -> int:
    from spiking_lm.distributed import describe_backend
    from spiking_lm.recipe_runner import run_distill, run_train
    from spiking_lm.recipes import load_recipe

    recipe = load_recipe(args.recipe, overrides)
    run = run_distill if args.command == "distill" else run_train
    folder = run(recipe, resume=args.resume, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, not per process
        print(f"saved the student to {folder} (trained with {describe_backend()})")
    return 0


def _recipes(args: argparse.Namespace) -> int:
    """List the shipped recipes and launch configs with their paths."""
    from spiking_lm.recipes import shipped_recipes

    shipped = shipped_recipes()
    print("recipes (spiking-lm distill NAME):")
    for name, path in shipped.items():
        if not name.startswith("accelerate/"):
            print(f"  {name:<42} {path}")
    print("launch configs (accelerate launch --config_file PATH -m spiking_lm.cli distill NAME):")
    for name, path in shipped.items():
        if name.startswith("accelerate/") and name.endswith(".yaml"):
            print(f"  {name:<42} {path}")
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


def _energy(args: argparse.Namespace) -> int:
    from spiking_lm.evaluation.runners import run_energy

    run_energy(args.model, args.data, args.sequences, args.length, args.baseline, args.output_dir, args.results,
               args.trust_remote_code)  # fmt: skip
    return 0


def _perplexity(args: argparse.Namespace) -> int:
    from spiking_lm.evaluation.runners import run_perplexity

    run_perplexity(args.model, args.data, args.split, args.text_column, args.window, args.stride, args.results,
                   args.trust_remote_code)  # fmt: skip
    return 0


def _zero_shot(args: argparse.Namespace) -> int:
    from spiking_lm.evaluation.runners import run_zero_shot

    run_zero_shot(args.model, args.tasks, args.data_dir, args.batch_size, args.limit, args.num_fewshot,
                  args.results, args.trust_remote_code, args.include_path)  # fmt: skip
    return 0


def _card(args: argparse.Namespace) -> int:
    from spiking_lm.publishing.cards import render_card, write_card

    if args.print:
        print(render_card(args.folder, args.repo_id, args.template))
    else:
        print(f"wrote {write_card(args.folder, args.repo_id, args.template)}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from spiking_lm.publishing.hub import push_folder

    url = push_folder(args.folder, args.repo_id, args.private, args.token, args.message, not args.keep_card)
    print(f"pushed {args.folder} to {args.repo_id}: {url}")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from spiking_lm.publishing.quantize import quantize_folder

    result = quantize_folder(args.model, args.output_dir, args.lm_head, args.trust_remote_code)
    print(f"wrote {args.output_dir}: {len(result['quantized_modules'])} Linears in int8, weights "
          f"{result['fp32_bytes'] / 1e6:.3g} MB -> {result['w8_bytes'] / 1e6:.3g} MB")  # fmt: skip
    return 0


def _glue(args: argparse.Namespace) -> int:
    from spiking_lm.evaluation.glue import GLUE_TASKS, GlueSettings, run_glue

    tasks = list(GLUE_TASKS) if args.task == "all" else args.task.split(",")
    settings = GlueSettings(args.data_dir, args.output_dir, args.epochs, args.learning_rate, args.batch_size,
                            args.max_length, args.max_train_samples, args.seed)  # fmt: skip
    table = []
    for task in tasks:
        scores = run_glue(args.model, task, settings, args.results)
        table += [(task, split, name, value) for split, metrics in scores.items() for name, value in metrics.items()]
    print(f"\n{'task':<6} {'split':<22} {'metric':<22} {'score':>8}")
    for task, split, name, value in table:
        print(f"{task:<6} {split:<22} {name:<22} {value:>8.4f}")
    return 0


def _add_model_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("model", help="a saved model folder or Hub id")
    command.add_argument("--results", help="results JSON to update (default: MODEL/results.json)")
    command.add_argument("--trust-remote-code", action="store_true", help="load with the folder's own code")


def _bounded(kind: type, low: float, strict: bool):
    """An argparse type: a ``kind`` (int or float) >= ``low`` (> ``low`` if ``strict``), finite; refused at parse
    time, naming the value."""
    what = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            finite = "a finite number " if kind is float else ""
            raise argparse.ArgumentTypeError(f"{text!r} must be {finite}{'>' if strict else '>='} {low}")
        return value

    return parse


positive_int = _bounded(int, 1, strict=False)
non_negative_int = _bounded(int, 0, strict=False)
positive_float = _bounded(float, 0, strict=True)


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors (its subcommands' too) end in the one line every failure ends in."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"spiking-lm: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="spiking-lm", description="Spiking language models for Hugging Face.")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of an error (also: {DEBUG_VARIABLE}=1)")  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    quickstart = commands.add_parser(
        "quickstart",
        help="train a tokenizer, an OPT teacher and a SpAD-distilled BiSpikCLM on Shakespeare "
        "(~10 min; --smoke ~1 min)",
    )
    quickstart.add_argument("--output-dir", default="outputs/quickstart", help="where the run and the model go")
    quickstart.add_argument("--smoke", action="store_true", help="toy sizes, about a minute (what the tests run)")
    quickstart.add_argument("--seed", type=int, default=0)
    quickstart.add_argument(
        "--neuron",
        choices=("lif", "nilif"),
        default="lif",
        help="lif: binary LIF, T=4, the paper's BiSpikCLM (default); nilif: the 1x4 integer variant",
    )
    quickstart.set_defaults(handler=_quickstart)
    for name, text in (
        ("distill", "distill an HF ANN teacher into a spiking student with SpAD, as a recipe describes"),
        ("train", "train a spiking model with its task loss alone (no teacher), as a recipe describes"),
    ):
        command = commands.add_parser(name, help=text, description=f"{text}. Override any recipe key with "
                                      "--section.key value (e.g. --training.max_steps 100).")  # fmt: skip
        command.add_argument("recipe", help="a YAML recipe file, or the name of a shipped one (spiking-lm recipes)")
        command.add_argument("--resume", action="store_true", help="resume from the last checkpoint in output_dir")
        replace = "delete an earlier run's checkpoints and final/ in output_dir, then train"
        command.add_argument("--overwrite", action="store_true", help=replace)
        command.set_defaults(handler=_run_recipe, takes_overrides=True)
    energy = commands.add_parser(
        "energy", help="count MACs/ACs on real text: energy table, firing-rate plot, JSON (see docs/design.md)"
    )
    _add_model_arguments(energy)
    energy.add_argument("--data", help="text file(s) or dataset name (default: the shipped held-out play)")
    energy.add_argument("--sequences", type=positive_int, default=4, help="sequences to count on")
    energy.add_argument("--length", type=positive_int, default=128, help="tokens per sequence")
    energy.add_argument("--baseline", help="an HF ANN (e.g. the teacher) to compare with; default: same shape")
    energy.add_argument("--output-dir", help="where energy.json and firing_rates.png go (default: MODEL)")
    energy.set_defaults(handler=_energy, runs_models=True)
    perplexity = commands.add_parser("perplexity", help="sliding-window perplexity of a causal LM on text")
    _add_model_arguments(perplexity)
    perplexity.add_argument("--data", help="text file(s) or dataset name (default: the shipped held-out play)")
    perplexity.add_argument("--split", default="test", help="dataset split (for dataset names)")
    perplexity.add_argument("--text-column", default="text")
    perplexity.add_argument("--window", type=positive_int, help="tokens per pass (default: max_position_embeddings)")
    perplexity.add_argument("--stride", type=positive_int, help="tokens between window starts (default: window / 2)")
    perplexity.set_defaults(handler=_perplexity, runs_models=True)
    zero_shot = commands.add_parser(
        "eval", help="zero-shot suites through lm-evaluation-harness (qa, commonsense or lm-eval task names)"
    )
    _add_model_arguments(zero_shot)
    zero_shot.add_argument("--tasks", default="qa,commonsense",
                           help="comma-separated lm-eval tasks; shorthands: qa (arc_easy, arc_challenge, boolq, "
                           "headqa_en, openbookqa), commonsense (hellaswag, piqa, winogrande)")  # fmt: skip
    zero_shot.add_argument("--data-dir", help="folder of <task>.jsonl files to use instead of the hub datasets")
    zero_shot.add_argument("--include-path", help="folder of your own lm-eval task YAML files (--tasks may name "
                           "them; a task may also be given as the path of its YAML file)")  # fmt: skip
    zero_shot.add_argument("--batch-size", type=positive_int, default=8)
    zero_shot.add_argument("--limit", type=positive_int, help="evaluate only the first N documents of each task")
    zero_shot.add_argument("--num-fewshot", type=non_negative_int, default=0)
    zero_shot.set_defaults(handler=_zero_shot, runs_models=True)
    glue = commands.add_parser("glue", help="fine-tune and score a sequence classifier on GLUE tasks")
    glue.add_argument("model", help="a saved spiking model folder or Hub id (any head; a classifier is added)")
    glue.add_argument("--task", required=True,
                      help="cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte; comma-separated, or 'all'")  # fmt: skip
    glue.add_argument("--data-dir", help="folder with <task>/{train,validation}.jsonl (default: nyu-mll/glue)")
    glue.add_argument("--output-dir", default="outputs/glue", help="fine-tuned models go to OUTPUT_DIR/<task>/final")
    glue.add_argument("--epochs", type=positive_float, default=3.0)
    glue.add_argument("--learning-rate", type=positive_float, default=2e-5)
    glue.add_argument("--batch-size", type=positive_int, default=32)
    glue.add_argument("--max-length", type=positive_int, default=128)
    glue.add_argument("--max-train-samples", type=positive_int, help="train on the first N examples only")
    glue.add_argument("--seed", type=int, default=42)
    glue.add_argument("--results", help="results JSON to update (default: MODEL/results.json)")
    glue.set_defaults(handler=_glue, runs_models=True)
    card = commands.add_parser("card", help="write FOLDER/README.md, a model card filled from its results.json")
    card.add_argument("folder", help="a saved model folder")
    card.add_argument("--repo-id", help="Hub id for the usage snippet (default: the folder's path)")
    card.add_argument("--template", help="a Jinja template (default: model_cards/spiking_lm.md.j2)")
    card.add_argument("--print", action="store_true", help="print the card instead of writing README.md")
    card.set_defaults(handler=_card)
    push = commands.add_parser("push", help="upload a saved model (weights, code, tokenizer, card) to the Hub")
    push.add_argument("folder", help="a saved model folder")
    push.add_argument("repo_id", help="the model repo, owner/name (created if missing)")
    push.add_argument("--private", action="store_true")
    push.add_argument("--token", help="Hub token (default: the logged-in one / HF_TOKEN)")
    push.add_argument("--message", help="commit message")
    push.add_argument("--keep-card", action="store_true", help="upload README.md as it is (no regeneration)")
    push.set_defaults(handler=_push)
    quantize = commands.add_parser("quantize", help="write a saved model's W8 variant: int8 weights fed by spikes")
    quantize.add_argument("model", help="a saved spiking model folder or Hub id")
    quantize.add_argument("output_dir", help="where the W8 model (weights, code, tokenizer) goes")
    quantize.add_argument(
        "--lm-head",
        action="store_true",
        help="the LM head in int8 too, its input rounded per row (not exact; docs/w8.md)",
    )
    quantize.add_argument("--trust-remote-code", action="store_true", help="load with the folder's own code")
    quantize.set_defaults(handler=_quantize, runs_models=True)
    recipes = commands.add_parser("recipes", help="list the shipped recipes and accelerate launch configs")
    recipes.set_defaults(handler=_recipes)
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


# a mistake in what the user gave (exit 2); anything else that stops a run is a failure while running (exit 1)
BAD_INPUT = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)
DEBUG_VARIABLE = "SPIKING_LM_DEBUG"


def error_line(error: BaseException) -> str:
    """``error`` as the one line the CLI prints: its message with line breaks folded, or its type's name."""
    message = " ".join(str(error).split())
    if isinstance(error, KeyError) and error.args:
        message = str(error.args[0])
    return message or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one command. A failure ends with one line ``spiking-lm: error: ...`` and exit code 2 for bad input,
    1 for a failure while running; ``--debug`` (or ``SPIKING_LM_DEBUG=1``) shows the traceback instead."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.debug or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
        return _run(parser, args, extra)
    try:
        return _run(parser, args, extra)
    except KeyboardInterrupt as interrupt:  # training saves a checkpoint first and says where it is
        print(f"spiking-lm: {error_line(interrupt) if str(interrupt) else 'interrupted'}", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - every failure becomes one readable line
        code = 2 if isinstance(error, BAD_INPUT) else 1
        print(f"spiking-lm: error: {error_line(error)} (--debug shows the traceback)", file=sys.stderr)
        return code


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> int:
    if getattr(args, "runs_models", False):  # train/distill/quickstart apply it in their own entry points
        keep_freed_memory()  # a spiking model's large temporaries are reused instead of faulted in each time
    if getattr(args, "takes_overrides", False):
        code = args.handler(args, extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    else:
        code = args.handler(args)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _leave_launched_process(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
