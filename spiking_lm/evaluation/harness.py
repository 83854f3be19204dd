"""Zero-shot suites through lm-evaluation-harness, in process, on the model object.

`evaluate_zero_shot` wraps the model in lm-eval's own `HFLM` and runs `simple_evaluate` on the tasks as lm-eval
names them. Without the hub, point ``data_dir`` at a folder of ``<task>.jsonl`` files in each task's own format
(the fields of its hub dataset): the task's own YAML (prompt, choices, metrics, preprocessing) is kept and only
its data source is replaced. `write_local_tasks` writes the same configs as YAML files, for lm-eval's CLI
(``lm_eval --include_path DIR``).
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path

import torch

TASK_SUITES = {
    "qa": ["arc_easy", "arc_challenge", "boolq", "headqa_en", "openbookqa"],
    "commonsense": ["hellaswag", "piqa", "winogrande"],
}
LOCAL_SUFFIX = "_local"


def expand_tasks(tasks: str | list[str]) -> list[str]:
    """``"qa,piqa"`` / ``["commonsense"]`` → lm-eval task names, shorthands (`TASK_SUITES`) expanded, in order."""
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    expanded = []
    for name in (name.strip() for name in names):
        for task in TASK_SUITES.get(name, [name]):
            if task and task not in expanded:
                expanded.append(task)
    if not expanded:
        raise ValueError("no tasks given: name lm-eval tasks or the suites " + ", ".join(TASK_SUITES))
    return expanded


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: str | None = None):
    """lm-eval's task index (built once per ``include_path``: it scans every task YAML), with the tasks of the
    YAML files under ``include_path`` added."""
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise FileNotFoundError(f"--include-path {include_path} is not a folder of task YAML files")
    return TaskManager(include_path=include_path)


def check_task_names(names: list[str], include_path: str | None = None) -> None:
    """Refuse names lm-eval does not know (a task, group or tag, or a task YAML file), suggesting close ones."""
    known = set(_task_manager(include_path).all_tasks)
    unknown = [name for name in names if name not in known and not Path(name).is_file()]
    if unknown:
        hints = {name: difflib.get_close_matches(name, known, 3) for name in unknown}
        said = "; ".join(f"{name!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
                         for name, close in hints.items())  # fmt: skip
        raise ValueError(f"unknown lm-eval task(s): {said}; `lm_eval ls tasks` lists them, or use qa / commonsense")


def _task_yaml(task: str) -> Path:
    """The YAML file lm-eval defines ``task`` in."""
    manager = _task_manager()
    entry = manager.task_index.get(task)
    if entry is None or not getattr(entry, "yaml_path", None):
        raise ValueError(f"lm-eval has no task named {task!r}")
    return Path(entry.yaml_path)


def local_data_file(task: str, data_dir) -> Path:
    path = Path(data_dir) / f"{task}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no local data for task {task!r}: expected {path}")
    return path


def _local_overrides(task: str, data_file: Path) -> dict:
    """Keys that replace a task's hub dataset with one local JSONL file, evaluated as the test split."""
    return {
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(data_file.resolve())}},
        "training_split": None,
        "validation_split": None,
        "test_split": "test",
        "fewshot_split": None,
    }


def local_task_config(task: str, data_dir) -> dict:
    """lm-eval's config of ``task`` (functions resolved) reading ``data_dir/<task>.jsonl`` instead of the hub."""
    from lm_eval.tasks._yaml_loader import load_yaml

    task_yaml = _task_yaml(task)
    data_file = local_data_file(task, data_dir)
    config = load_yaml(task_yaml)
    config.pop("tag", None)  # its groups refer to the hub tasks
    config.update(_local_overrides(task, data_file))
    return config


def write_local_tasks(tasks: list[str], data_dir, output_dir) -> list[str]:
    """Write ``<task>_local.yaml`` files for lm-eval's CLI (``--include_path output_dir``); returns their names.

    Each includes lm-eval's own YAML of the task by absolute path and overrides its data source only.
    """
    import yaml

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for task in expand_tasks(tasks):
        task_yaml = _task_yaml(task)
        overrides = _local_overrides(task, local_data_file(task, data_dir))
        config = {"include": str(task_yaml), "task": task + LOCAL_SUFFIX, "tag": [], **overrides}
        (output_dir / f"{task}{LOCAL_SUFFIX}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        names.append(task + LOCAL_SUFFIX)
    return names


class _FirstBatch:
    """Keeps the input ids of the model's first forward call (for the energy probe beside the scores)."""

    def __init__(self, model):
        self.input_ids = None
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        if self.input_ids is None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.input_ids = None if ids is None else ids.detach().clone()


def evaluate_zero_shot(model, tokenizer, tasks, data_dir=None, batch_size: int = 8, limit: int | None = None,
                       num_fewshot: int = 0, seed: int = 1234, include_path=None) -> dict:  # fmt: skip
    """Run lm-eval ``tasks`` (names or `TASK_SUITES` shorthands) on ``model``; returns
    ``{"scores": {task: {metric: value}}, "samples": {task: n}, "probe_input_ids": first batch}``.

    Args:
        data_dir: folder of ``<task>.jsonl`` files to use instead of the hub datasets.
        batch_size: requests per forward pass. Each request's score does not depend on its batch neighbours
            (spiking models keep no state across calls; causal attention ignores right padding).
        limit: evaluate only the first ``limit`` documents of each task.
        include_path: a folder of lm-eval task YAML files whose tasks ``tasks`` may name (lm-eval's
            ``--include_path``); a task may also be given as the path of its YAML file.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 (documents per task), got {limit}")
    if num_fewshot < 0:
        raise ValueError(f"num_fewshot must be >= 0, got {num_fewshot}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    include_path = None if include_path is None else str(Path(include_path).resolve())
    names = expand_tasks(tasks)
    check_task_names(names, include_path)
    task_specs = [local_task_config(name, data_dir) for name in names] if data_dir else names
    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    probe = _FirstBatch(model)
    try:
        with torch.no_grad():
            output = simple_evaluate(
                model=wrapped,
                tasks=task_specs,
                num_fewshot=num_fewshot,
                limit=limit,
                task_manager=_task_manager(include_path),
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
                log_samples=False,
            )
    finally:
        probe.handle.remove()
    scores = {}
    for task, metrics in output["results"].items():
        scores[task] = {
            key.split(",")[0]: value
            for key, value in metrics.items()
            if "," in key and isinstance(value, (int, float)) and not key.split(",")[0].endswith("_stderr")
        }
    samples = {task: counts.get("effective", counts.get("original")) for task, counts in output["n-samples"].items()}
    return {"scores": scores, "samples": samples, "probe_input_ids": probe.input_ids}
