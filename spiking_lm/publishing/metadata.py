"""The Hub metadata of a model card: the YAML block the Hub reads for its widgets, search and evaluation table
(``library_name``, ``pipeline_tag``, ``base_model``, ``datasets``, ``language``, ``tags`` and a ``model-index``
with every score in ``results.json`` and the SNN/ANN energy ratio)."""

from __future__ import annotations

from pathlib import Path

import yaml

GLUE_DATASET = "nyu-mll/glue"


def hub_id(value) -> str | None:
    """``value`` if it reads as a Hub id (``owner/name``, not a local path), else `None`."""
    if not isinstance(value, str) or value.count("/") != 1 or Path(value).exists() or " " in value:
        return None
    return value if all(part and not part.startswith(".") for part in value.split("/")) else None


def _metric(kind: str, value, name: str | None = None) -> dict | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return {"type": kind, "value": float(value), **({"name": name} if name else {})}


def _result(task_type: str, task_name: str, dataset: dict, metrics: list) -> dict | None:
    metrics = [metric for metric in metrics if metric is not None]
    if not metrics:
        return None
    return {"task": {"type": task_type, "name": task_name}, "dataset": dataset, "metrics": metrics}


def model_index_results(evaluations: dict, pipeline_tag: str) -> list[dict]:
    """One model-index result per recorded evaluation (GLUE task, lm-eval task, perplexity) and the energy ratio."""
    results = []
    for name, entry in sorted(evaluations.items()):
        scores, settings = entry.get("scores") or {}, entry.get("settings") or {}
        if name.startswith("glue/"):
            task = name.split("/", 1)[1]
            for split, metrics in sorted(scores.items()):
                dataset = {"name": f"GLUE {task.upper()}", "type": GLUE_DATASET, "config": task, "split": split}
                results.append(_result("text-classification", f"GLUE {task}", dataset,
                                       [_metric(k, v) for k, v in sorted(metrics.items())]))  # fmt: skip
        elif name == "lm_eval":
            for task, metrics in sorted(scores.items()):
                dataset = {"name": task, "type": task}
                results.append(_result(pipeline_tag, f"zero-shot {task} (lm-evaluation-harness)", dataset,
                                       [_metric(k, v) for k, v in sorted(metrics.items())]))  # fmt: skip
        elif name == "perplexity":
            data = str(settings.get("data") or "text")
            dataset = {"name": data, "type": hub_id(data) or "text"}
            results.append(
                _result(pipeline_tag, "perplexity", dataset, [_metric("perplexity", scores.get("perplexity"))])
            )
    energy = next((entry.get("energy") for _, entry in sorted(evaluations.items(), key=lambda e: e[0] != "energy")
                   if entry.get("energy")), None)  # fmt: skip
    if energy and energy.get("ratio") is not None:
        convention = energy.get("convention", "measured")
        dataset = {"name": "evaluation inputs", "type": "text"}
        metric = _metric("energy_ratio", energy["ratio"], f"SNN / ANN energy ({convention} convention, 45 nm)")
        results.append(_result(pipeline_tag, "energy estimate", dataset, [metric]))
    return [result for result in results if result is not None]


def card_metadata(config: dict, pipeline_tag: str, training: dict | None, evaluations: dict, name: str,
                  license: str, language: str = "en") -> str:  # fmt: skip
    """The card's YAML metadata block (without the ``---`` fences)."""
    training = training or {}
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": pipeline_tag,
        "language": [language],
        "license": license,
        "tags": ["spiking-neural-network", "spiking_lm", config["model_type"], f"neuron-{config['neuron_type']}"],
    }
    if hub_id(training.get("teacher")):
        metadata["base_model"] = training["teacher"]
    datasets = [hub_id(training.get("data"))]
    datasets += [GLUE_DATASET for key in evaluations if key.startswith("glue/")][:1]
    if any(datasets):
        metadata["datasets"] = sorted({dataset for dataset in datasets if dataset})
    results = model_index_results(evaluations, pipeline_tag)
    if results:
        metadata["model-index"] = [{"name": name, "results": results}]
    return yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).rstrip("\n")
