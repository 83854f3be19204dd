"""GLUE: fine-tune a spiking `…ForSequenceClassification` model on a task and score it with GLUE's metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, TrainingArguments
from transformers.utils import logging

from ..data import encode_examples, save_tokenizer
from .loading import check_model_reference, energy_probe
from .results import default_results_path, record_evaluation

logger = logging.get_logger(__name__)
METRIC_MODULE = Path(__file__).resolve().parent / "metrics" / "glue"
HUB_DATASET = "nyu-mll/glue"
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


@dataclass(frozen=True)
class GlueTask:
    text_keys: tuple[str, ...]  # one sentence or a pair
    num_labels: int  # 1 = regression (STS-B)
    eval_splits: tuple[str, ...]
    metrics: tuple[str, ...]  # what GLUE reports for the task (the shipped metric module computes them)

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


GLUE_TASKS = {
    "cola": GlueTask(("sentence",), 2, ("validation",), ("matthews_correlation",)),
    "sst2": GlueTask(("sentence",), 2, ("validation",), ("accuracy",)),
    "mrpc": GlueTask(("sentence1", "sentence2"), 2, ("validation",), ("accuracy", "f1")),
    "qqp": GlueTask(("question1", "question2"), 2, ("validation",), ("accuracy", "f1")),
    "stsb": GlueTask(("sentence1", "sentence2"), 1, ("validation",), ("pearson", "spearmanr")),
    "mnli": GlueTask(("premise", "hypothesis"), 3, ("validation_matched", "validation_mismatched"), ("accuracy",)),
    "qnli": GlueTask(("question", "sentence"), 2, ("validation",), ("accuracy",)),
    "rte": GlueTask(("sentence1", "sentence2"), 2, ("validation",), ("accuracy",)),
}


def glue_task(name: str) -> GlueTask:
    if name not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; choose one of {', '.join(GLUE_TASKS)} (or 'all')")
    return GLUE_TASKS[name]


def load_glue_metric(task: str):
    """GLUE's metric for ``task`` from the module shipped in this package (works offline)."""
    import evaluate

    return evaluate.load(str(METRIC_MODULE), config_name="mnli" if task.startswith("mnli") else task)


def _local_split_file(folder: Path, split: str) -> Path:
    for suffix in LOCAL_SUFFIXES:
        path = folder / f"{split}{suffix}"
        if path.is_file():
            return path
    raise FileNotFoundError(f"no {split} data in {folder}: expected {split}.jsonl (or .json/.csv/.tsv/.parquet)")


def load_glue_splits(task: str, data_dir=None) -> dict:
    """``{"train": Dataset, <eval split>: Dataset, ...}`` from ``data_dir/<task>/<split>.jsonl`` (the hub
    dataset's columns) or from the hub dataset ``nyu-mll/glue``."""
    from datasets import load_dataset

    spec = glue_task(task)
    splits = ("train", *spec.eval_splits)
    if data_dir is None:
        loaded = load_dataset(HUB_DATASET, task)
        return {split: loaded[split] for split in splits}
    folder = Path(data_dir) / task
    if not folder.is_dir():
        raise FileNotFoundError(f"GLUE data folder {folder} does not exist")
    datasets = {}
    for split in splits:
        path = _local_split_file(folder, split)
        kind = {".jsonl": "json", ".tsv": "csv"}.get(path.suffix, path.suffix[1:])
        options = {"delimiter": "\t"} if path.suffix == ".tsv" else {}
        datasets[split] = load_dataset(kind, data_files={split: str(path)}, split=split, **options)
    for split, dataset in datasets.items():
        missing = [key for key in (*spec.text_keys, "label") if key not in dataset.column_names]
        if missing:
            raise ValueError(f"{task} {split} data lacks the columns {missing} (has {dataset.column_names})")
        if len(dataset) == 0:
            raise ValueError(f"{task} {split} data is empty")
    return datasets


def _predictions(logits: np.ndarray, spec: GlueTask) -> np.ndarray:
    return logits.squeeze(-1) if spec.is_regression else logits.argmax(-1)


@dataclass
class GlueSettings:
    """How `run_glue` fine-tunes: data (``data_dir`` = local folder, else the hub), optimization and output."""

    data_dir: str | None = None
    output_dir: str = "outputs/glue"
    epochs: float = 3.0
    learning_rate: float = 2e-5
    batch_size: int = 32
    max_length: int = 128
    max_train_samples: int | None = None
    seed: int = 42


def run_glue(model_path: str, task: str, settings: GlueSettings | None = None, results=None,
             progress: bool = True) -> dict:  # fmt: skip
    """Fine-tune ``model_path`` on GLUE ``task`` and score every evaluation split; returns
    ``{split: {metric: value}}`` and records them (with an energy probe on the first evaluation batch) in the
    results file. The fine-tuned model is saved to ``settings.output_dir/<task>/final``."""
    from ..training import SpikingTrainer

    settings = settings or GlueSettings()
    spec = glue_task(task)
    check_model_reference(model_path)
    splits = load_glue_splits(task, settings.data_dir)
    if settings.max_train_samples is not None:
        splits["train"] = splits["train"].select(range(min(settings.max_train_samples, len(splits["train"]))))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    problem = "regression" if spec.is_regression else "single_label_classification"
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=spec.num_labels, problem_type=problem
    )
    if tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    segments = True if getattr(model.config, "type_vocab_size", 0) > 1 else None  # BERT-style token types
    encoded = {
        split: encode_examples(
            dataset,
            tokenizer,
            spec.text_keys,
            settings.max_length,
            regression=spec.is_regression,
            token_type_ids=segments,
        )  # fmt: skip
        for split, dataset in splits.items()
    }
    metric = load_glue_metric(task)

    def compute_metrics(prediction):
        return metric.compute(predictions=_predictions(prediction.predictions, spec), references=prediction.label_ids)

    run_dir = Path(settings.output_dir) / task
    args = TrainingArguments(output_dir=str(run_dir), num_train_epochs=settings.epochs,
                             learning_rate=settings.learning_rate, per_device_train_batch_size=settings.batch_size,
                             per_device_eval_batch_size=settings.batch_size, seed=settings.seed, save_strategy="no",
                             report_to="none", logging_steps=50, disable_tqdm=not progress,
                             use_cpu=not torch.cuda.is_available())  # fmt: skip
    trainer = SpikingTrainer(model=model, args=args, train_dataset=encoded["train"], data_collator=
                             DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics)  # fmt: skip
    trainer.train()
    scores = {}
    for split in spec.eval_splits:
        metrics = trainer.evaluate(encoded[split], metric_key_prefix="eval")
        scores[split] = {key[5:]: value for key, value in metrics.items() if key[5:] in spec.metrics}
    final = run_dir / "final"
    trainer.save_model(final)
    save_tokenizer(tokenizer, final, model.config)
    (final / "training_args.bin").unlink(missing_ok=True)
    first_split = encoded[spec.eval_splits[0]]
    batch = DataCollatorWithPadding(tokenizer)(
        [first_split[i] for i in range(min(settings.batch_size, len(first_split)))]
    )
    model.eval()
    energy = energy_probe(model, batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device))
    recorded = {**asdict(settings), "data_dir": settings.data_dir or HUB_DATASET,
                "train_samples": len(splits["train"]), "fine_tuned_model": str(final)}  # fmt: skip
    path = results or default_results_path(model_path)
    record_evaluation(path, model, model_path, f"glue/{task}", scores, energy, recorded)
    return scores
