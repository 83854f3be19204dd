"""Greedy decoding speed: the event-driven path against our dense path and the same-shape fp32 HF ANN.

    python scripts/bench_inference.py [--threads 2] [--shapes 8m 125m] [--batches 1 8] [--new-tokens 256]
                                      [--rounds 1] [--system-allocator]

For each shape (OPT layout: "8m" = hidden 256, 4 layers, vocab 16384; "125m" = OPT-125M) an `OPTForCausalLM`
with random weights is the ANN, and BiSpikCLM students built from it by `from_teacher` run with
``nilif`` 1×4 neurons (T=1) and with binary ``lif`` neurons (T=4). Each measurement is `generate` from a
128-token prompt to 256 new tokens (min = max, greedy, with the cache), batch 1 and batch 8, in fp32; the
three contenders of one (shape, batch) run back to back and the table reports tokens/s (new tokens × batch /
seconds, prefill included) and the ratio to the ANN measured in the same round (medians over ``--rounds``).

Two more ANN rows are what a user decoding on a CPU would pick instead: "OPT int8 dynamic", the same ANN after
``torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)`` (int8 weights, ~4x fewer bytes
read), and "OPT fp32, few_rows_linear", the same ANN with every Linear computed by
`spiking_lm.nn.cpu_linear.few_rows_linear`, the kernel our LM heads use. The table's last column gives every row
against the fastest ANN row of its (shape, batch), the honest comparison.

W8 rows ("BiSpikCLM … W8 event") are the same students after ``quantize_weights("int8")``: every spike-fed Linear
holds int8 weights with a per-row scale and sums spike counts × weights exactly in int32, reading only the int8
rows the spikes select when few rows decode (`spiking_lm.nn.weight_quantization`); the LM head stays fp32, or,
in the "W8, int8 head" rows (``lm_head=True``), is int8 too with its input rounded to int8 per row (inexact, as
the int8 ANN's every Linear is) and the tied embeddings read the same int8 table.
"weights MB" is what each model holds resident: its weights (the int8 ANN's packed int8 weights) plus the event
backend's derived copies.

Beside each spiking figure: the measured firing rate and density (share of nonzero spike values entering
the Linears) on the prompt, and the weight bytes read per generated token — for the ANN every Linear and the
LM head once per step, for the event path the LM head plus what `spiking_lm.nn.event` actually gathered
(counted in a separate, untimed decode of the same length: a recorder turns the decoding fast paths off) plus the
matrices under its size floor (left to the dense code), for our dense path every Linear (and T rows of spikes).

Beside it, the K/V cache bytes the attention reads per step at the mean cached length (prompt + half the new
tokens), from the cache `generate` left: fp32 for the ANN and our dense path (T times the positions at T > 1),
on the event path int8 counts, and binary keys as bits (`spiking_lm.nn.bitpack.pack_bits`).

All contenders run in one process with freed memory kept for reuse (`spiking_lm.memory.keep_freed_memory`):
the caches grow by a token per step, and with glibc's defaults every step's larger buffers are fresh pages from
the kernel, a per-run toll that varied from nothing to ~150,000 page faults between identical runs;
``--system-allocator`` measures with the defaults.

Targets (issue 17, 125M shape, against the fastest ANN row): ``nilif`` W8 event decoding ≥ 1.5× at batch 1 and
≥ 1.2× at batch 8, ``lif`` T=4 W8 ≥ 0.8× at batch 1; resident weights ≤ 0.3× fp32.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from transformers import OPTConfig, OPTForCausalLM

import spiking_lm
from spiking_lm.energy import estimate_energy
from spiking_lm.memory import keep_freed_memory
from spiking_lm.nn import event
from spiking_lm.nn.cpu_linear import few_rows_linear
from spiking_lm.nn.recording import OperationRecorder, WeightReads, recording
from spiking_lm.publishing.quantize import weight_bytes

SHAPES = {
    "8m": {"vocab_size": 16384, "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
           "ffn_dim": 1024},
    "125m": {"vocab_size": 50272, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "ffn_dim": 3072},
}  # fmt: skip
STUDENTS = {"nilif 1x4": {"neuron_type": "nilif", "time_steps": 1}, "lif T=4": {"neuron_type": "lif", "time_steps": 4}}
W8 = " W8"  # a student after quantize_weights("int8"): int8 weights, exact int32 sums (event backend only)
W8_HEAD = " W8, int8 head"  # quantize_weights("int8", lm_head=True): the head too, its inputs rounded to int8
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
    for name in list(students):
        students[name + W8] = copy.deepcopy(students[name]).quantize_weights("int8")
        students[name + W8_HEAD] = copy.deepcopy(students[name]).quantize_weights("int8", lm_head=True)
    return ann, students


def resident_bytes(model) -> int:
    """Bytes of every weight the model holds: its state (int8 ANN: the packed int8 weights) and, for a spiking
    model, the event backend's derived copies."""
    execution = getattr(model, "execution", None)
    return weight_bytes(model) + (execution.derived_bytes() if execution is not None else 0)


def linear_bytes(model) -> tuple[int, int]:
    """(bytes of the Linears inside the blocks, bytes of the LM head)."""
    head = model.get_output_embeddings().weight
    total = sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, torch.nn.Linear))
    head_bytes = head.numel() * head.element_size()
    return total - head_bytes, head_bytes


def dense_code_bytes(model) -> int:
    """Bytes of the spike-fed Linears under the event path's size floor, which the event backend leaves to the
    dense code (read whole at every step, uncounted by `WeightReads`)."""
    head = model.get_output_embeddings()
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
               if isinstance(m, torch.nn.Linear) and m is not head and not event.worth_gathering((m,)))  # fmt: skip


def decode(model, prompt, new_tokens) -> tuple[float, float]:
    """(seconds, K/V cache bytes read per step at the mean cached length) of greedy decoding."""
    start = time.perf_counter()
    with torch.no_grad():
        output = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                pad_token_id=1, return_dict_in_generate=True)  # fmt: skip
    seconds = time.perf_counter() - start
    cache = output.cache
    stored = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    length = cache.get_seq_length()
    return seconds, stored * (length - new_tokens / 2) / length


def density_on(model, prompt) -> tuple[float, float]:
    """(firing rate, share of nonzero values fed to spike-fed Linears) on the prompt."""
    report = estimate_energy(model, prompt).to_dict()
    nonzero, total = 0, 0

    class Density(OperationRecorder):
        def spike_fed_linear(self, linear, spikes, neuron):
            nonlocal nonzero, total
            values = spikes if neuron is None else spikes - neuron.coding.offset
            nonzero += torch.count_nonzero(values).item()
            total += values.numel()

    with torch.no_grad(), recording(Density()):
        model(prompt)
    return report["firing_rate"], nonzero / max(total, 1)


def int8_dynamic(ann):
    """The same ANN with torch's int8 dynamic quantization of every Linear (what a CPU user decodes with)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.ao.quantization's deprecation notice
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(ann), {torch.nn.Linear}, dtype=torch.qint8)


def tuned_dense(ann):
    """The same ANN with every Linear computed by `few_rows_linear` (our LM head's kernel): a reference that
    shows what the dense model gains from the kernel alone, so that the spike path's own share is visible."""

    def forward_of(linear):
        return lambda x: few_rows_linear(x, linear.weight, linear.bias)

    tuned = copy.deepcopy(ann)
    for module in tuned.modules():
        if isinstance(module, torch.nn.Linear):
            module.forward = forward_of(module)
    return tuned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=1, help="rounds per (shape, batch); medians are reported")
    parser.add_argument("--system-allocator", action="store_true", help="do not call keep_freed_memory()")
    parser.add_argument("--json", help="also write the table to this JSON file (scripts/plot_benchmarks.py)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"freed memory kept for reuse: {False if args.system_allocator else keep_freed_memory()}")
    rows = []
    for shape in args.shapes:
        ann, students = build(shape)
        block_bytes, head_bytes = linear_bytes(ann)
        parameters = sum(p.numel() for p in ann.parameters()) / 1e6
        contenders = {"OPT fp32 (HF)": (ann, None), "OPT int8 dynamic": (int8_dynamic(ann), None),
                      "OPT fp32, few_rows_linear": (tuned_dense(ann), None)}  # fmt: skip
        anns = [label for label in contenders if label.startswith("OPT")]
        for name, student in students.items():
            for backend in ("event",) if W8 in name else ("dense", "event"):
                contenders[f"BiSpikCLM {name} {backend}"] = (student, backend)
        first = torch.randint(3, SHAPES[shape]["vocab_size"], (1, PROMPT), generator=torch.Generator().manual_seed(1))
        rates = {name: density_on(student, first) for name, student in students.items()}
        for batch in args.batches:
            prompt = torch.randint(
                3, SHAPES[shape]["vocab_size"], (batch, PROMPT), generator=torch.Generator().manual_seed(1)
            )
            speeds = {label: [] for label in contenders}
            ratios = {label: [] for label in contenders}
            reads, cache_reads, resident, counted = {}, {}, {}, {}
            for round_index in range(args.rounds):
                for label, (model, backend) in contenders.items():
                    if backend is not None:
                        model.set_inference_backend(backend)
                    decode(model, prompt, 2)  # warm-up at the prompt's shape (compiled kernels, caches)
                    seconds, cache_reads[label] = decode(model, prompt, args.new_tokens)
                    if backend == "event" and round_index == 0:  # counted apart: a recorder turns fast paths off
                        with recording(WeightReads()) as weight_reads:
                            decode(model, prompt, args.new_tokens)
                        counted[label] = weight_reads["gathered_bytes"] + weight_reads["dense_bytes"]
                    resident[label] = resident_bytes(model)
                    speed = batch * args.new_tokens / seconds
                    speeds[label].append(speed)
                    ratios[label].append(speed / speeds["OPT fp32 (HF)"][-1])
                    if backend == "event":
                        head = head_bytes / 4 if W8_HEAD in label else head_bytes  # an int8 head: 1 byte a weight
                        reads[label] = counted[label] / (args.new_tokens + 1) + head + dense_code_bytes(model)
                    elif "int8" in label:  # int8 weights (and a scale per row)
                        reads[label] = (block_bytes + head_bytes) / 4
                    else:
                        reads[label] = block_bytes + head_bytes
                    print(f"  {shape} b{batch} {label}: {speed:.1f} tok/s ({ratios[label][-1]:.2f}x ANN)", flush=True)
            best = max(statistics.median(speeds[label]) for label in anns)  # the strongest ANN row
            for label, (model, _) in contenders.items():
                student = next((name for name, s in students.items() if s is model), None)
                rate, density = ("-", "-") if student is None else (f"{x:.3f}" for x in rates[student])
                speed = statistics.median(speeds[label])
                rows.append((shape, parameters, batch, label, speed, statistics.median(ratios[label]), rate, density,
                             reads[label] / 1e6, cache_reads[label] / 1e6, resident[label] / 1e6,
                             speed / best))  # fmt: skip
    print(f"\n{'shape':<6} {'params':>7} {'batch':>5}  {'model':<35} {'tok/s':>8} {'x HF':>6} {'rate':>6} "
          f"{'dens.':>6} {'MB read/step':>12} {'K/V MB/step':>11} {'weights MB':>10} {'x best ANN':>10}")  # fmt: skip
    for shape, parameters, batch, label, speed, ratio, rate, density, read, cache_read, held, best_ratio in rows:
        print(f"{shape:<6} {parameters:>6.1f}M {batch:>5}  {label:<35} {speed:>8.1f} {ratio:>6.2f} {rate:>6} "
              f"{density:>6} {read:>12.1f} {cache_read:>11.1f} {held:>10.1f} {best_ratio:>10.2f}")  # fmt: skip
    if args.json:
        keys = ("shape", "params_m", "batch", "model", "tokens_per_s", "x_ann", "rate", "density", "mb_read_per_step",
                "kv_mb_per_step", "weights_mb", "x_best_ann")  # fmt: skip
        settings = {"torch": torch.__version__, "threads": args.threads, "rounds": args.rounds,
                    "new_tokens": args.new_tokens, "prompt": PROMPT}  # fmt: skip
        with open(args.json, "w") as handle:
            table = [dict(zip(keys, row, strict=True)) for row in rows]
            json.dump({"benchmark": "bench_inference", "settings": settings, "rows": table}, handle, indent=1)


if __name__ == "__main__":
    main()
