"""The package reads in layers: nn → models → {distill, energy, evaluation} → publishing → recipes → cli, with
nothing pointing back up, and `spiking_lm.nn` importing only torch, transformers and itself (it travels as a
saved model's remote code)."""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "spiking_lm"
LAYERS = {
    "nn": 0,
    "models": 1,
    "data": 1,
    "memory": 1,
    "distributed": 1,
    "training": 2,
    "distill": 3,
    "energy": 3,
    "evaluation": 3,
    "publishing": 4,
    "recipes": 5,
    "recipe_runner": 5,
    "quickstart": 5,
    "cli": 6,
}
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "metrics" not in p.parts)


def part_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def package_imports(path: Path):
    """The top-level spiking_lm parts this file imports (relative imports resolved) and its other imports."""
    package = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)[:-1]
    ours, others = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
                names = [base] if len(base) > 1 else [[*base, alias.name] for alias in node.names]
            else:
                names = [node.module.split(".")]
            for name in names:
                (ours.add(name[1]) if name[0] == "spiking_lm" and len(name) > 1 else others.add(name[0]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name.split(".")
                (ours.add(name[1]) if name[0] == "spiking_lm" and len(name) > 1 else others.add(name[0]))
    return ours, others


@pytest.mark.parametrize("path", [p for p in MODULES if part_of(p) != "__init__"], ids=lambda p: p.stem)
def test_no_import_points_back_up(path):
    own = LAYERS[part_of(path)]
    ours, _ = package_imports(path)
    upward = sorted(name for name in ours if LAYERS[name] > own)
    assert not upward, f"{path.relative_to(PACKAGE)} imports {upward} from a higher layer"


@pytest.mark.parametrize("path", sorted((PACKAGE / "nn").glob("*.py")), ids=lambda p: p.stem)
def test_nn_imports_only_torch_transformers_and_itself(path):
    ours, others = package_imports(path)
    assert ours <= {"nn"}, ours
    # safetensors: a requirement of transformers itself, so wherever the remote code runs it is there too
    assert others <= {"torch", "transformers", "safetensors", "__future__", *sys.stdlib_module_names}, others


def test_every_nn_module_a_model_needs_travels_with_its_remote_code():
    from spiking_lm.nn.modeling_utils import REMOTE_CODE_MODULES

    assert {p.stem for p in (PACKAGE / "nn").glob("*.py")} - {"__init__"} == set(REMOTE_CODE_MODULES)


def test_distillation_reads_the_student_through_its_outputs_and_class_attributes():
    source = "\n".join(p.read_text() for p in (PACKAGE / "distill").glob("*.py"))
    for coupling in ("register_forward_hook(record", "SpikingNeuron", "GradientCheckpointingLayer", "model_type =="):
        assert coupling not in source, coupling


def test_no_module_is_over_400_lines_without_a_reason_at_its_top():
    long = [p for p in MODULES if len(p.read_text().splitlines()) > 400]
    assert all("over 400 lines" in p.read_text()[:2000] for p in long), long
