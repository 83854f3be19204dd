"""The one results file: every evaluation command records its scores here, beside an energy report, the
model's configuration and the library versions, so that a model card (and a reader) has one source.

Layout of ``results.json``::

    {"model": {"name_or_path", "class", "config"}, "versions": {...}, "training": {"teacher", "data", ...},
     "evaluations": {"perplexity": {...}, "lm_eval": {...}, "glue/sst2": {...}, "energy": {...}}}

Each evaluation entry holds ``scores``, ``energy`` (an `EnergyReport` dict), ``settings`` and ``timestamp``.
Keys are sorted and floats are written as computed, so rerunning an evaluation on the same input rewrites
the same file except for the timestamps.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import tempfile
from pathlib import Path

RESULTS_FILE = "results.json"
TRACKED_LIBRARIES = ("spiking_lm", "torch", "transformers", "accelerate", "datasets", "evaluate", "lm_eval")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape a result (absent ones are left out)."""
    versions = {}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def model_output_folder(model_name_or_path: str) -> Path:
    """Where reports about a model go: its own folder when local, else ``results/<repo id with __>`` here."""
    folder = Path(model_name_or_path)
    return folder if folder.is_dir() else Path("results") / model_name_or_path.replace("/", "__")


def default_results_path(model_name_or_path: str) -> Path:
    """``results.json`` in `model_output_folder`."""
    return model_output_folder(model_name_or_path) / RESULTS_FILE


def load_results(path) -> dict:
    """The results file at ``path``, or an empty skeleton if it does not exist yet."""
    path = Path(path)
    if not path.exists():
        return {"evaluations": {}}
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a valid results file: {error}") from error
    if not isinstance(results, dict) or not isinstance(results.get("evaluations", {}), dict):
        raise ValueError(f"{path} is not a valid results file: it must hold a JSON object with an "
                         f"'evaluations' object, found {type(results).__name__}")  # fmt: skip
    return results


def finite(value):
    """``value`` with every NaN/±inf float replaced by `None` (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def portable(value):
    """``value`` with every absolute local path replaced by its last component: a results file travels with
    its model (to the Hub), and a path on this machine means nothing there and tells who made it."""
    if isinstance(value, str):
        return Path(value).name if os.path.isabs(value) and "\n" not in value else value
    if isinstance(value, dict):
        return {key: portable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(item) for item in value]
    return value


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a failure leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_atomically(path: Path, results: dict) -> None:
    text = json.dumps(portable(results), indent=2, sort_keys=True, allow_nan=False) + "\n"
    write_text_atomically(path, text)


def record_training(path, training: dict) -> dict:
    """Record how the model in this folder was made (``teacher``, ``data``, ``method``, ``steps``, ...)."""
    path = Path(path)
    results = load_results(path)
    results["training"] = finite(training)
    _write_atomically(path, results)
    return results


def record_evaluation(path, model, model_name_or_path: str, name: str, scores: dict, energy: dict | None,
                      settings: dict) -> dict:  # fmt: skip
    """Add (or replace) evaluation ``name`` in the results file at ``path``; returns the whole file's content.

    The write is atomic (temporary file + rename), so an interrupted run leaves the previous file intact.
    """
    path = Path(path)
    results = load_results(path)
    results["model"] = {
        "name_or_path": str(model_name_or_path),
        "class": type(model).__name__,
        "config": json.loads(model.config.to_json_string(use_diff=False)),
    }
    results["versions"] = library_versions()
    results.setdefault("evaluations", {})[name] = {
        "scores": finite(scores),
        "energy": finite(energy),
        "settings": finite(settings),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    _write_atomically(path, results)
    return results
