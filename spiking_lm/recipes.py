"""Recipes: YAML files whose sections map one-to-one onto configuration fields.

    teacher: facebook/opt-125m          # hub name, local folder, or package:<module> (its get_model_path())
    student: {architecture: bispikclm, time_steps: 4, ...}   # any field of that architecture's config
    data: {source: ..., block_size: 512, ...}                # fields of `DataSettings`
    training: {output_dir: ..., max_steps: ..., ...}         # fields of `SpADConfig` (a TrainingArguments)

An unknown section or key is an error naming it. Command-line overrides use ``--section.key value``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .distill.config import SpADConfig
from .models.auto import ARCHITECTURES

__all__ = ["DataSettings", "Recipe", "load_recipe"]
SECTIONS = ("teacher", "student", "data", "training")


@dataclass
class DataSettings:
    """Where the text comes from and how it becomes training blocks."""

    source: str | list[str] = "shakespeare"  # local file/folder(s), a `datasets` name, or the shipped corpus
    split: str = "train"
    text_column: str = "text"
    streaming: bool = False
    max_documents: int | None = None  # stop reading after this many documents (streamed corpora)
    block_size: int = 512
    tokenizer: str | None = None  # default: the teacher's; without a teacher, a BPE trained on the data
    vocab_size: int = 8192  # for a tokenizer trained here
    mlm_probability: float = 0.15  # masked-LM students only


@dataclass
class Recipe:
    teacher: str | None
    student: dict
    data: DataSettings
    training: dict = field(default_factory=dict)

    @property
    def student_class(self):
        return ARCHITECTURES[self.student["architecture"]].student_class

    def student_overrides(self) -> dict:
        return {key: value for key, value in self.student.items() if key != "architecture"}

    def training_config(self, training: dict | None = None) -> SpADConfig:
        """The training section as `SpADConfig` (``training`` replaces the section's keys when given)."""
        return SpADConfig(**(self.training if training is None else training))


def resolve_teacher(name: str) -> str:
    """``package:<module>`` → the folder its ``get_model_path()`` returns (a model shipped in a PyPI package)."""
    if not name.startswith("package:"):
        return name
    module_name = name.split(":", 1)[1]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"teacher {name!r}: cannot import {module_name!r} (pip install it first)") from error
    return str(module.get_model_path())


def _config_fields(config_class) -> set[str]:
    fields = set()
    for klass in config_class.__mro__:
        if "__init__" in vars(klass) and klass.__module__.startswith("spiking_lm"):
            fields |= set(inspect.signature(klass.__init__).parameters) - {"self", "kwargs"}
    return fields | {"num_labels", "id2label", "label2id", "problem_type"}


def _check_keys(section: str, values: dict, allowed: set[str]) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"recipe section '{section}': unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _apply_overrides(raw: dict, overrides: list[str]) -> None:
    if len(overrides) % 2:
        raise ValueError(f"overrides come in pairs '--section.key value', got {overrides}")
    for flag, value in zip(overrides[::2], overrides[1::2], strict=True):
        if not flag.startswith("--") or "." not in flag:
            raise ValueError(f"override {flag!r} must look like --section.key (e.g. --training.max_steps)")
        section, key = flag[2:].split(".", 1)
        if section not in SECTIONS or section == "teacher":
            raise ValueError(f"override {flag!r}: unknown section {section!r}; use student, data or training")
        raw.setdefault(section, {})[key] = yaml.safe_load(value)


def load_recipe(path, overrides: list[str] | None = None) -> Recipe:
    """Parse and validate a recipe file; ``overrides`` are ``["--section.key", "value", ...]``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: an unknown section, key or architecture, or a value its config rejects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"recipe {path} must be a mapping of sections {SECTIONS}")
    _check_keys("<top level>", raw, set(SECTIONS))
    _apply_overrides(raw, overrides or [])
    student = dict(raw.get("student") or {})
    architecture = student.get("architecture")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"student.architecture={architecture!r} is invalid: must be one of {sorted(ARCHITECTURES)}")
    _check_keys("student", student, _config_fields(ARCHITECTURES[architecture].config_class) | {"architecture"})
    data = dict(raw.get("data") or {})
    _check_keys("data", data, {f.name for f in dataclasses.fields(DataSettings)})
    training = dict(raw.get("training") or {})
    _check_keys("training", training, {f.name for f in dataclasses.fields(SpADConfig) if f.init})
    teacher = raw.get("teacher")
    if teacher is not None and not isinstance(teacher, str):
        raise ValueError(f"teacher must be a hub name, a folder or package:<module>, got {teacher!r}")
    return Recipe(teacher=teacher, student=student, data=DataSettings(**data), training=training)
