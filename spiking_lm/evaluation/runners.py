"""The evaluation runs behind `spiking-lm energy`, `perplexity` and `eval`: each measures, writes its report and
records it in the model's results file (the CLI only parses arguments)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data import load_texts, shakespeare_files
from ..energy import estimate_energy, format_table, plot_firing_rates
from .loading import energy_probe, load_model_and_tokenizer
from .perplexity import corpus_token_ids, sliding_window_perplexity
from .results import default_results_path, finite, model_output_folder, record_evaluation


def probe_texts(data: str | None, split: str = "test", text_column: str = "text") -> list[str]:
    """Documents to measure on: ``data`` (files or a dataset name), or the shipped held-out Shakespeare play."""
    if data is None:
        return load_texts(shakespeare_files()[1])
    texts = load_texts(data, split, text_column)
    return texts if isinstance(texts, list) else [row[text_column] for row in texts]


def probe_batch(texts: list[str], tokenizer, sequences: int, length: int) -> torch.Tensor:
    """``sequences`` consecutive blocks of ``length`` tokens from the corpus, shape ``(sequences, length)``."""
    if sequences < 1 or length < 1:
        raise ValueError(f"sequences and length must be >= 1, got {sequences} and {length}")
    ids = corpus_token_ids(texts, tokenizer)
    needed = sequences * length
    if ids.numel() < needed:
        raise ValueError(f"the corpus has {ids.numel()} tokens, fewer than {sequences} x {length}")
    return ids[:needed].view(sequences, length)


def run_energy(model_path: str, data=None, sequences: int = 4, length: int = 128, teacher: str | None = None,
               output_dir=None, results=None, trust_remote_code: bool = False) -> dict:  # fmt: skip
    """`spiking-lm energy`: count operations on real text, print the table, write JSON + PNG + results."""
    model, tokenizer = load_model_and_tokenizer(model_path, "auto", trust_remote_code)
    positions = getattr(model.config, "max_position_embeddings", length)
    if length > positions:
        print(f"--length {length} is beyond the model's {positions} positions: counting on {positions} tokens")
        length = positions
    input_ids = probe_batch(probe_texts(data), tokenizer, sequences, length)
    baseline = None
    if teacher is not None:
        baseline, _ = load_model_and_tokenizer(teacher, "auto")  # with its head, as the model has its own
        if baseline.config.vocab_size != model.config.vocab_size:
            raise ValueError(
                f"baseline {teacher!r} has vocabulary {baseline.config.vocab_size}, the model "
                f"{model.config.vocab_size}: they cannot read the same tokens"
            )
    report = finite(estimate_energy(model, input_ids, ann_baseline=baseline).to_dict())
    print(format_table(report))
    output_dir = Path(output_dir) if output_dir else model_output_folder(model_path)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "energy.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    plot = plot_firing_rates(report, output_dir / "firing_rates.png")
    settings = {"data": data or "shakespeare (held out)", "sequences": sequences, "length": length,
                "baseline": teacher}  # fmt: skip
    path = results or default_results_path(model_path)
    record_evaluation(path, model, model_path, "energy", {}, report, settings)
    print(f"\nwrote {output_dir / 'energy.json'}, {plot} and {path}")
    return report


def run_perplexity(model_path: str, data=None, split: str = "test", text_column: str = "text",
                   window: int | None = None, stride: int | None = None, results=None,
                   trust_remote_code: bool = False) -> dict:  # fmt: skip
    """`spiking-lm perplexity`: sliding-window perplexity, with the energy of the first window beside it."""
    model, tokenizer = load_model_and_tokenizer(model_path, "causal-lm", trust_remote_code)
    scores = sliding_window_perplexity(model, corpus_token_ids(probe_texts(data, split, text_column), tokenizer),
                                       window, stride)  # fmt: skip
    energy = energy_probe(model, scores.pop("first_window"))
    settings = {"data": data or "shakespeare (held out)", "split": split, "window": scores.pop("window"),
                "stride": scores.pop("stride")}  # fmt: skip
    path = results or default_results_path(model_path)
    record_evaluation(path, model, model_path, "perplexity", scores, energy, settings)
    print(f"perplexity {scores['perplexity']:.4f} over {scores['tokens']} tokens (window {settings['window']}, "
          f"stride {settings['stride']}); {energy_line(energy)}; results in {path}")  # fmt: skip
    return scores


def run_zero_shot(model_path: str, tasks: str, data_dir=None, batch_size: int = 8, limit: int | None = None,
                  num_fewshot: int = 0, results=None, trust_remote_code: bool = False,
                  include_path=None) -> dict:  # fmt: skip
    """`spiking-lm eval`: lm-eval tasks on the model, a score table, and the energy of the first batch."""
    from .harness import evaluate_zero_shot

    model, tokenizer = load_model_and_tokenizer(model_path, "causal-lm", trust_remote_code)
    output = evaluate_zero_shot(model, tokenizer, tasks, data_dir, batch_size, limit, num_fewshot,
                                include_path=include_path)  # fmt: skip
    probe = output["probe_input_ids"]
    energy = energy_probe(model, probe) if probe is not None else None
    settings = {"tasks": tasks, "data_dir": str(data_dir) if data_dir else None, "include_path": include_path,
                "batch_size": batch_size, "limit": limit, "num_fewshot": num_fewshot,
                "samples": output["samples"]}  # fmt: skip
    path = results or default_results_path(model_path)
    record_evaluation(path, model, model_path, "lm_eval", output["scores"], energy, settings)
    print(f"{'task':<16} {'samples':>7} {'acc':>8} {'acc_norm':>9}")
    for task, metrics in output["scores"].items():
        norm = metrics.get("acc_norm")
        print(f"{task:<16} {output['samples'].get(task, 0):>7} {metrics.get('acc', float('nan')):>8.4f} "
              f"{'-' if norm is None else f'{norm:.4f}':>9}")  # fmt: skip
    print(f"{energy_line(energy)}; results in {path}")
    return output["scores"]


def energy_line(energy: dict | None) -> str:
    """One line summarizing an energy report for the console."""
    if energy is None:
        return "no energy report (not a spiking model)"
    per_token = energy["per_token"]
    return (f"energy/token {per_token['snn_energy_mj']:.4g} mJ vs ANN {per_token['ann_energy_mj']:.4g} mJ "
            f"(ratio {energy['ratio']:.4f})")  # fmt: skip
