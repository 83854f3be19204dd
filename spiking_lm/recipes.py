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
import importlib.metadata
import inspect
import os
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from .distill.config import SpADConfig
from .models.auto import ARCHITECTURES

__all__ = ["DataSettings", "Recipe", "find_recipe", "load_recipe", "shipped_recipes"]
SECTIONS = ("teacher", "student", "data", "training")
BOOL_TAG, FLOAT_TAG = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
SHIPPED = resources.files("spiking_lm.recipe_files")  # the repository's recipes/, inside the installed package


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

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "max_documents"):
            value = getattr(self, name)
            if value is None and name == "max_documents":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{name}={value!r} is invalid: must be an integer >= 1")
        probability = self.mlm_probability
        if isinstance(probability, bool) or not isinstance(probability, (int, float)) or not 0 < probability < 1:
            raise ValueError(f"data.mlm_probability={probability!r} is invalid: must be a number in (0, 1)")


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
    """``package:<module>`` → the folder its ``get_model_path()`` returns (a model shipped in a PyPI package).

    Only a module of an installed distribution is imported, and never from the current directory or the
    script's folder: a recipe cannot make the toolkit run a stray ``<module>.py`` lying next to it.
    """
    if not name.startswith("package:"):
        return name
    module_name = name.split(":", 1)[1]
    top = module_name.split(".")[0]
    if not module_name or top not in importlib.metadata.packages_distributions():
        raise ValueError(f"teacher {name!r}: {top!r} is not a module of an installed distribution "
                         "(pip install the package that ships the teacher)")  # fmt: skip
    local = {"", ".", os.getcwd(), os.path.dirname(os.path.abspath(sys.argv[0] or "."))}
    saved = sys.path[:]
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") not in local and entry not in local]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"teacher {name!r}: cannot import {module_name!r} (pip install it first)") from error
    finally:
        sys.path[:] = saved
    if not hasattr(module, "get_model_path"):
        raise ValueError(f"teacher {name!r}: module {module_name!r} has no get_model_path()")
    return str(module.get_model_path())


class RecipeLoader(yaml.SafeLoader):
    """YAML read the way a recipe's author means it (YAML 1.2 core rules): ``no``/``off``/``yes``/``on`` stay
    strings (``save_strategy: no``), only ``true``/``false`` are booleans, and ``1e-3`` is a float."""


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in (BOOL_TAG, FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
RecipeLoader.add_implicit_resolver(
    FLOAT_TAG,
    re.compile(r"^[-+]?(?:(?:[0-9][0-9_]*)?\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+)$"
               r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)  # fmt: skip


def read_yaml(text: str):
    """Parse recipe YAML with `RecipeLoader`; a syntax error becomes a ValueError naming the line."""
    try:
        return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - RecipeLoader is a SafeLoader
    except yaml.YAMLError as error:
        raise ValueError(f"not valid YAML: {' '.join(str(error).split())}") from None


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
        raw.setdefault(section, {})[key] = read_yaml(value)


def shipped_recipes() -> dict[str, Path]:
    """The recipes shipped with the package, by name (``quickstart``, ``distill/bispikclm-125m_from_opt-125m``,
    ...), and the accelerate/DeepSpeed launch configs (``accelerate/cpu_ddp.yaml``, ...) by file name."""
    root = Path(str(SHIPPED))
    found = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.suffix == ".yaml" and not relative.startswith("accelerate/"):
            found[relative[: -len(".yaml")]] = path
        elif relative.startswith("accelerate/") and path.suffix in (".yaml", ".json"):
            found[relative] = path
    return found


def find_recipe(name_or_path) -> Path:
    """A recipe file: ``name_or_path`` itself when it exists, else the shipped recipe of that name (with or
    without ``.yaml``, with or without its ``distill/`` folder)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    name = str(name_or_path).removesuffix(".yaml").removeprefix("recipes/")
    for candidate in (name, f"distill/{name}"):
        if candidate in shipped:
            return shipped[candidate]
    names = ", ".join(key for key in shipped if not key.startswith("accelerate/"))
    raise FileNotFoundError(f"recipe not found: {name_or_path} (neither a file nor a shipped recipe: {names})")


def _next_to(recipe_dir: Path, value):
    """A relative path in a recipe names a file next to the recipe when one is there; anything else (a Hub id,
    an output folder, a path relative to the current directory) is kept as written."""
    if not isinstance(value, str) or not value or Path(value).is_absolute() or value.startswith("package:"):
        return value
    beside = recipe_dir / value
    return str(beside.resolve()) if beside.exists() else value


def _resolve_inputs(raw: dict, recipe_dir: Path) -> None:
    """Resolve the recipe's input paths (teacher, data source and tokenizer, DeepSpeed config) against its folder."""
    if "teacher" in raw:
        raw["teacher"] = _next_to(recipe_dir, raw["teacher"])
    data, training = raw.get("data") or {}, raw.get("training") or {}
    for section, key in ((data, "tokenizer"), (training, "deepspeed")):
        if key in section:
            section[key] = _next_to(recipe_dir, section[key])
    if "source" in data:
        source = data["source"]
        data["source"] = (
            [_next_to(recipe_dir, s) for s in source] if isinstance(source, list) else _next_to(recipe_dir, source)
        )


def load_recipe(path, overrides: list[str] | None = None) -> Recipe:
    """Parse and validate a recipe file, or a shipped recipe by name (`shipped_recipes`); ``overrides`` are
    ``["--section.key", "value", ...]``. Relative input paths inside it (teacher, data source and tokenizer,
    DeepSpeed config) are read next to the recipe when they exist there, else from the current directory;
    ``output_dir`` is always relative to the current directory.

    Raises:
        FileNotFoundError: neither a file nor a shipped recipe.
        ValueError: an unknown section, key or architecture, or a value its config rejects.
    """
    path = find_recipe(path)
    try:
        raw = read_yaml(path.read_text()) or {}
    except ValueError as error:
        raise ValueError(f"recipe {path}: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"recipe {path} must be a mapping of sections {SECTIONS}")
    _check_keys("<top level>", raw, set(SECTIONS))
    _resolve_inputs(raw, path.parent)
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
