"""Spiking models against same-shape HF ANNs, measured in one run.

    python scripts/bench_models.py [--threads 2] [--rounds 7] [--pairs wd bispikclm bispikclm-bf16 we]

Shape (issue 3): batch 8 x 128 tokens, hidden 256, 4 layers, 4 heads, FFN 1024, vocab 8192, fp32.
- training: forward + backward + AdamW step, tokens/s; spiking and ANN steps alternate round by round and the
  table reports the median of the per-round ratios (spiking speed / ANN speed);
- generation: greedy decoding with the cache, batch 1, prompt 32, 64 new tokens, tokens/s, same alternation;
- memory: bytes of activations autograd keeps for backward in one training step (saved-tensor hooks,
  parameters excluded, storages counted once), spiking / ANN.
Every spiking model is compared with the ANN at the same precision: the fp32 pairs against the fp32 ANN, the
``-bf16`` pairs against the ANN trained under ``torch.autocast("cpu", dtype=torch.bfloat16)``, what a user training
in bf16 would pick instead. A ``-bf16`` spiking model trains as ``Trainer(args=TrainingArguments(bf16=True))``
trains it: under the same autocast (accelerate wraps the forward in it: real-valued products such as the LM head
run in bf16, as the ANN's do) and with ``train_matmul_dtype="bfloat16"`` (bf16 operands in the spike-fed GEMMs,
forward and backward, which the Trainer turns on). Generation runs in fp32 on both sides (the spiking models
always infer in fp32), so the ``-bf16`` rows leave it out.
Targets: WD-Spikingformer (nilif) >= 0.9x the same-precision Llama, memory <= 1.2x; BiSpikCLM (lif, T=4) >= 0.40x
the bf16-autocast OPT, memory <= 2.5x; generation >= 0.5x the ANN.
Both models run in one process with freed memory kept for reuse (`spiking_lm.memory.keep_freed_memory`, what
`spiking-lm train`/`distill` apply); ``--system-allocator`` measures with glibc's defaults instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
)

import spiking_lm
from spiking_lm.memory import keep_freed_memory

SHAPE = {"vocab_size": 8192, "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4}
BATCH, LENGTH = 8, 128
PAIRS = ("wd", "wd-bf16", "bispikclm", "bispikclm-bf16", "we", "we-bf16")


def _ann(family: str):
    if family == "wd":
        config = LlamaConfig(**SHAPE, intermediate_size=1024, num_key_value_heads=4, max_position_embeddings=512)
        return LlamaForCausalLM(config), "Llama"
    if family == "bispikclm":
        config = OPTConfig(**SHAPE, ffn_dim=1024, word_embed_proj_dim=256, max_position_embeddings=512)
        return OPTForCausalLM(config), "OPT"
    return BertForMaskedLM(BertConfig(**SHAPE, intermediate_size=1024, max_position_embeddings=512)), "BERT (MLM)"


STUDENTS = {
    "wd": ("WD-Spikingformer nilif 1x4", spiking_lm.WDSpikingformerForCausalLM, {"max_position_embeddings": 512}),
    "bispikclm": ("BiSpikCLM lif T=4", spiking_lm.BiSpikCLMForCausalLM, {"time_steps": 4}),
    "we": ("WE-Spikingformer nilif 1x4", spiking_lm.WESpikingformerForMaskedLM, {}),
}


def build_pairs(names):
    """name -> (label, spiking model, ANN model, is causal, ANN under bf16 autocast)."""
    pairs = {}
    for name in names:
        family, bf16 = name.removesuffix("-bf16"), name.endswith("-bf16")
        ann, ann_name = _ann(family)
        title, student_class, overrides = STUDENTS[family]
        dtype = "bfloat16" if bf16 else "float32"
        student = student_class.from_teacher(ann, train_matmul_dtype=dtype, **overrides)
        label = f"{title} vs {ann_name}" + (" (bf16 both)" if bf16 else "")
        pairs[name] = (label, student, ann, family != "we", bf16)
    return pairs


def train_step_seconds(model, optimizer, input_ids, autocast: bool = False) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def generate_seconds(model, prompt, new_tokens) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return time.perf_counter() - start


def alternate(measure_spiking, measure_ann, rounds: int, warmup: int = 2):
    for _ in range(warmup):
        measure_spiking()
        measure_ann()
    ratios, spiking_times, ann_times = [], [], []
    for _ in range(rounds):
        ann = measure_ann()
        spiking = measure_spiking()
        ratios.append(ann / spiking)
        spiking_times.append(spiking)
        ann_times.append(ann)
    return statistics.median(ratios), statistics.median(spiking_times), statistics.median(ann_times)


def saved_activation_bytes(model, input_ids, autocast: bool = False) -> int:
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)
    with hooks, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=PAIRS)
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--system-allocator", action="store_true", help="do not call keep_freed_memory()")
    parser.add_argument("--json", help="also write the table to this JSON file (scripts/plot_benchmarks.py)")
    args = parser.parse_args()
    kept = False if args.system_allocator else keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    input_ids = torch.randint(3, SHAPE["vocab_size"], (BATCH, LENGTH))
    prompt = torch.randint(3, SHAPE["vocab_size"], (1, 32))
    allocator = "freed memory kept" if kept else "system allocator defaults"
    print(
        f"torch {torch.__version__}, {args.threads} threads, fp32, batch {BATCH}x{LENGTH}, "
        f"median of {args.rounds}, {allocator}"
    )
    header = f"{'pair':<44} {'train tok/s (snn / ann)':>24} {'x ANN':>6} {'gen tok/s (snn / ann)':>22} {'x ANN':>6}"
    print(header + f" {'act. MB (snn / ann)':>20} {'x ANN':>6}")
    rows = []
    for label, spiking, ann, causal, bf16 in build_pairs(args.pairs).values():
        text, row = measure_pair(spiking, ann, causal and not bf16, args, input_ids, prompt, autocast=bf16)
        print(f"{label:<44} {text}", flush=True)
        rows.append({"pair": label, **row})
    if args.json:
        settings = {"torch": torch.__version__, "threads": args.threads, "rounds": args.rounds, "allocator": allocator}
        with open(args.json, "w") as handle:
            json.dump({"benchmark": "bench_models", "settings": settings, "rows": rows}, handle, indent=1)


def measure_pair(spiking, ann, causal, args, input_ids, prompt, autocast=False) -> tuple[str, dict]:
    """One table row (text and values): training speed, generation speed (causal models), saved activations."""
    spiking.train()
    ann.train()
    spiking_opt = torch.optim.AdamW(spiking.parameters(), lr=1e-4)
    ann_opt = torch.optim.AdamW(ann.parameters(), lr=1e-4)
    ratio, spiking_s, ann_s = alternate(
        lambda: train_step_seconds(spiking, spiking_opt, input_ids, autocast),
        lambda: train_step_seconds(ann, ann_opt, input_ids, autocast),
        args.rounds,
    )
    tokens = BATCH * LENGTH
    train_text = f"{tokens / spiking_s:>10.0f} / {tokens / ann_s:<10.0f} {ratio:>6.2f}"
    memory_snn = saved_activation_bytes(spiking, input_ids, autocast) / 2**20
    memory_ann = saved_activation_bytes(ann, input_ids, autocast) / 2**20
    gen_text = f"{'-':>22} {'-':>6}"
    gen_ratio = None
    if causal and not args.skip_generation:
        spiking.eval()
        ann.eval()
        gen_ratio, gen_spiking, gen_ann = alternate(
            lambda: generate_seconds(spiking, prompt, 64), lambda: generate_seconds(ann, prompt, 64), args.rounds
        )
        gen_text = f"{64 / gen_spiking:>9.1f} / {64 / gen_ann:<10.1f} {gen_ratio:>6.2f}"
    memory_text = f"{memory_snn:>8.1f} / {memory_ann:<9.1f} {memory_snn / memory_ann:>6.2f}"
    row = {"training": ratio, "generation": gen_ratio, "activations": memory_snn / memory_ann,
           "train_tokens_per_s": [tokens / spiking_s, tokens / ann_s],
           "activation_mb": [memory_snn, memory_ann]}  # fmt: skip
    return f"{train_text} {gen_text} {memory_text}", row


if __name__ == "__main__":
    main()
