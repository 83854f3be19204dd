import json
from pathlib import Path

import pytest
import yaml

from spiking_lm.distill import SpADConfig
from spiking_lm.recipes import DataSettings, load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
TRAINING_RECIPES = sorted(p for p in RECIPES.rglob("*.yaml") if "accelerate" not in p.parts)
ACCELERATE_CONFIGS = sorted((RECIPES / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", TRAINING_RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses_into_its_configs(path):
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# ") and str(path.relative_to(RECIPES.parent)) in first_line
    assert "spiking-lm distill" in first_line or "spiking_lm.cli distill" in first_line
    recipe = load_recipe(path)
    assert isinstance(recipe.data, DataSettings)
    config = recipe.student_class.config_class(**recipe.student_overrides())  # validates every student field
    assert config.model_type == recipe.student["architecture"]
    # Every training key is a SpADConfig field; bf16 is left out because this CPU cannot build it.
    training = {k: v for k, v in recipe.training.items() if k != "bf16"}
    args = SpADConfig(**training, use_cpu=True)
    assert args.output_dir == recipe.training["output_dir"]


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_configs_open_with_their_launch_command(path):
    text = path.read_text()
    assert text.startswith("# ") and "accelerate launch --config_file " + str(path.relative_to(RECIPES.parent)) in text
    config = yaml.safe_load(text)
    assert config["distributed_type"] in ("NO", "MULTI_GPU", "DEEPSPEED")
    if config["distributed_type"] == "DEEPSPEED":
        json_path = RECIPES.parent / config["deepspeed_config"]["deepspeed_config_file"]
        assert json.loads(json_path.read_text())["zero_optimization"]["stage"] in (2, 3)


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_unknown_keys_are_named(tmp_path):
    base = "student: {architecture: bispikclm}\n"
    with pytest.raises(ValueError, match=r"section 'student': unknown key\(s\) \['colour'\]"):
        load_recipe(write(tmp_path, "student: {architecture: bispikclm, colour: red}\n"))
    with pytest.raises(ValueError, match=r"section 'training': unknown key\(s\) \['learning_rat'\]"):
        load_recipe(write(tmp_path, base + "training: {learning_rat: 0.1}\n"))
    with pytest.raises(ValueError, match=r"section 'data': unknown key\(s\) \['sorce'\]"):
        load_recipe(write(tmp_path, base + "data: {sorce: x}\n"))
    with pytest.raises(ValueError, match=r"section '<top level>': unknown key\(s\) \['model'\]"):
        load_recipe(write(tmp_path, base + "model: x\n"))
    with pytest.raises(ValueError, match="student.architecture='gpt2' is invalid"):
        load_recipe(write(tmp_path, "student: {architecture: gpt2}\n"))
    with pytest.raises(FileNotFoundError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_command_line_overrides(tmp_path):
    path = write(tmp_path, "student: {architecture: bispikclm, time_steps: 4}\ntraining: {max_steps: 10}\n")
    recipe = load_recipe(path, ["--student.time_steps", "2", "--training.max_steps", "3", "--data.block_size", "64"])
    assert recipe.student["time_steps"] == 2 and recipe.training["max_steps"] == 3 and recipe.data.block_size == 64
    with pytest.raises(ValueError, match="must look like --section.key"):
        load_recipe(path, ["--max_steps", "3"])
    with pytest.raises(ValueError, match="unknown key"):
        load_recipe(path, ["--training.max_stepz", "3"])
