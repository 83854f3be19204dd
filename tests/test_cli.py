"""The `spiking-lm` command line on a local tiny teacher (the hub cannot be reached)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from spiking_lm.cli import main


def recipe(tmp_path, teacher_folder, training="max_steps: 4"):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"teacher: {teacher_folder}\nstudent: {{architecture: bispikclm, time_steps: 2}}\n"
        f"data: {{source: {teacher_folder / 'corpus.txt'}, block_size: 32}}\n"
        f"training: {{output_dir: {tmp_path / 'run'}, per_device_train_batch_size: 4, {training}, "
        "report_to: none, use_cpu: true, disable_tqdm: true, logging_steps: 1}\n"
    )
    return path


def test_help_lists_every_subcommand():
    result = subprocess.run([sys.executable, "-m", "spiking_lm.cli", "--help"], capture_output=True, text=True)
    listed = set(re.findall(r"^    (\w+)", result.stdout, re.M))
    assert {
        "quickstart",
        "distill",
        "train",
        "glue",
        "eval",
        "perplexity",
        "energy",
        "card",
        "push",
        "quantize",
    } <= listed


def test_distill_saves_a_loadable_student(tmp_path, teacher_folder):
    assert main(["distill", str(recipe(tmp_path, teacher_folder)), "--training.max_steps", "3"]) == 0
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert student.config.model_type == "bispikclm" and student.config.time_steps == 2
    assert (tmp_path / "run" / "final" / "tokenizer.json").exists()
    training = json.loads((tmp_path / "run" / "final" / "results.json").read_text())["training"]
    assert training["method"] == "SpAD distillation" and training["steps"] == 3


def test_distill_resumes_from_its_last_checkpoint(tmp_path, teacher_folder):
    path = recipe(tmp_path, teacher_folder, training="max_steps: 4, save_steps: 2")
    assert main(["distill", str(path)]) == 0
    assert (tmp_path / "run" / "checkpoint-4" / "model.safetensors").exists()
    assert main(["distill", str(path), "--training.max_steps", "6", "--resume"]) == 0
    assert (tmp_path / "run" / "checkpoint-6").exists()


def test_train_without_teacher_trains_its_own_tokenizer(tmp_path, teacher_folder):
    path = tmp_path / "train.yaml"
    path.write_text(
        "student: {architecture: wd_spikingformer, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 4,"
        " intermediate_size: 64, max_position_embeddings: 64}\n"
        f"data: {{source: {teacher_folder / 'corpus.txt'}, block_size: 32, vocab_size: 300}}\n"
        f"training: {{output_dir: {tmp_path / 'run'}, max_steps: 2, report_to: none, use_cpu: true}}\n"
    )
    assert main(["train", str(path)]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert model.config.vocab_size == 300


def test_bad_input_is_a_clear_error(tmp_path, teacher_folder, capsys):
    code = main(["distill", str(tmp_path / "nope.yaml")])
    assert code == 2 and "spiking-lm: error: recipe not found" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    path = recipe(tmp_path, teacher_folder)
    path.write_text(path.read_text().replace(str(teacher_folder / "corpus.txt"), str(empty)))
    code = main(["distill", str(path)])
    assert code == 2 and "the dataset is empty" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "runs_models"), [(["perplexity", "m"], True), (["eval", "m"], True),
                                                    (["energy", "m"], True), (["glue", "m", "--task", "rte"], True),
                                                    (["card", "m"], False), (["neurons"], False)])  # fmt: skip
def test_commands_that_run_models_keep_freed_memory_for_reuse(argv, runs_models, monkeypatch):
    import spiking_lm.cli as cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True))
    handler = "_" + {"eval": "zero_shot"}.get(argv[0], argv[0])
    monkeypatch.setattr(cli, handler, lambda args: 0)  # the command itself is tested elsewhere
    assert main(argv) == 0
    assert calls == ([True] if runs_models else [])


def test_quantize_writes_a_loadable_w8_folder(tmp_path, student_folder, teacher_folder, capsys):
    from transformers import AutoTokenizer

    out = tmp_path / "w8"
    assert main(["quantize", str(student_folder), str(out), "--lm-head"]) == 0
    printed = capsys.readouterr().out
    # q, k, v, out (fed SFSA's integer context), fc1, fc2 in each of 2 blocks
    assert printed.startswith(f"wrote {out}: 12 Linears in int8, weights ") and " MB -> " in printed
    model = AutoModelForCausalLM.from_pretrained(out)
    assert (model.config.weight_quantization, model.config.quantized_lm_head) == ("int8", "int8-shared")
    assert AutoTokenizer.from_pretrained(out)("winter")["input_ids"]
    assert main(["card", str(out)]) == 0  # the card says what the weights are
    assert "| weights | W8: the 12 Linears fed spike counts in int8" in (out / "README.md").read_text()
    assert main(["quantize", str(teacher_folder), str(tmp_path / "no")]) == 2  # an ANN: a clear error, nothing written
    assert "holds a OPTForCausalLM, not a spiking_lm model" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
    assert main(["quantize", str(student_folder), str(student_folder)]) == 2
    assert "is the source folder" in capsys.readouterr().err


def run_cli(argv, capsys):
    code = main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


def test_a_rerun_into_a_used_output_dir_is_refused_unless_resumed_or_overwritten(tmp_path, teacher_folder, capsys):
    path = str(recipe(tmp_path, teacher_folder, training="max_steps: 2, save_steps: 2"))
    assert main(["distill", path]) == 0
    code, line = run_cli(["distill", path], capsys)
    assert code == 2 and "holds an earlier run (checkpoint-2, final)" in line and "--resume" in line
    code, line = run_cli(["distill", path, "--resume", "--student.time_steps", "3", "--training.max_steps", "4"],
                         capsys)  # fmt: skip
    assert code == 2 and "another configuration (time_steps: 2 there, 3 now)" in line
    assert main(["distill", path, "--overwrite", "--training.max_steps", "1", "--training.save_steps", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-1"]


def test_train_is_reproducible_with_its_seed(tmp_path, teacher_folder):
    from safetensors.torch import load_file

    weights = []
    for run in ("a", "b"):
        path = tmp_path / f"{run}.yaml"
        path.write_text(
            "student: {architecture: bispikclm, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 4, "
            "intermediate_size: 64, max_position_embeddings: 64, time_steps: 2}\n"
            f"data: {{source: {teacher_folder / 'corpus.txt'}, block_size: 32, vocab_size: 300}}\n"
            f"training: {{output_dir: {tmp_path / run}, max_steps: 2, report_to: none, use_cpu: true, seed: 7}}\n"
        )
        torch.manual_seed(len(run) * 1000 + ord(run))  # whatever the global state, the recipe's seed decides
        assert main(["train", str(path)]) == 0
        weights.append(load_file(tmp_path / run / "final" / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_ctrl_c_in_a_recipe_run_saves_a_checkpoint_and_says_how_to_resume(tmp_path, teacher_folder, capsys,
                                                                          monkeypatch):  # fmt: skip
    from spiking_lm.training import StopOnInterrupt

    original = StopOnInterrupt.on_step_end

    def pressed_at_step_1(self, args, state, control, **kwargs):
        self.interrupted = True  # what the SIGINT handler sets (signals are tested in test_training.py)
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(StopOnInterrupt, "on_step_end", pressed_at_step_1)
    path = str(recipe(tmp_path, teacher_folder, training="max_steps: 5"))
    code, line = run_cli(["distill", path], capsys)
    checkpoint = tmp_path / "run" / "checkpoint-1"
    assert (
        code == 130
        and line == f"spiking-lm: interrupted at step 1; saved {checkpoint}: rerun with --resume to continue"
    )
    assert not (tmp_path / "run" / "final").exists()
    monkeypatch.setattr(StopOnInterrupt, "on_step_end", original)
    assert main(["distill", path, "--resume"]) == 0
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


def test_a_saved_folders_tokenizer_loads_without_the_package_and_knows_the_models_length(tmp_path, teacher_folder):
    assert main(["distill", str(recipe(tmp_path, teacher_folder)), "--training.max_steps", "1"]) == 0
    final = tmp_path / "run" / "final"
    script = ("import sys; sys.modules['spiking_lm'] = None\nfrom transformers import AutoTokenizer\n"
              f"tokenizer = AutoTokenizer.from_pretrained({str(final)!r}, trust_remote_code=True)\n"
              "ids = tokenizer('to be or not', truncation=True)['input_ids']\n"
              "print(tokenizer.model_max_length, len(ids))\n")  # fmt: skip
    # stdin is a pipe that stays open: a prompt for remote code would wait for an answer and time out here
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            stdin=subprocess.PIPE, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr
    length, tokens = result.stdout.split()[-2:]
    assert int(length) == 64 and int(tokens) > 0  # the student's max_position_embeddings


def test_recipes_run_from_anywhere_and_by_name(tmp_path, teacher_folder, monkeypatch, capsys):
    from spiking_lm.recipes import load_recipe

    project = tmp_path / "project"  # a recipe naming its inputs relative to itself
    project.mkdir()
    (project / "corpus.txt").write_text((teacher_folder / "corpus.txt").read_text())
    (project / "teacher").symlink_to(teacher_folder)
    (project / "recipe.yaml").write_text(
        "teacher: teacher\nstudent: {architecture: bispikclm, time_steps: 2}\n"
        "data: {source: corpus.txt, block_size: 32}\n"
        "training: {output_dir: run, max_steps: 1, report_to: none, use_cpu: true}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recipe = load_recipe("../project/recipe.yaml")
    assert recipe.teacher == str((project / "teacher").resolve()) and recipe.data.source == str(project / "corpus.txt")
    assert recipe.training["output_dir"] == "run"  # outputs stay relative to where the command runs
    assert main(["distill", "../project/recipe.yaml"]) == 0
    assert (elsewhere / "run" / "final" / "model.safetensors").exists()

    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out
    assert "quickstart" in listed and "distill/bispikclm-125m_from_opt-125m" in listed and "cpu_ddp.yaml" in listed
    shipped = load_recipe("quickstart")  # by name, from a directory without recipes/
    assert shipped.student["architecture"] == "bispikclm" and shipped.teacher == "outputs/quickstart/teacher"
    assert load_recipe("bispikclm-125m_from_opt-125m").teacher == "facebook/opt-125m"
    code, line = run_cli(["distill", "no-such-recipe"], capsys)
    assert code == 2 and "neither a file nor a shipped recipe: distill/bispikclm-125m_from_opt-125m" in line


def test_shipped_launch_configs_find_their_deepspeed_json_from_any_directory(tmp_path, monkeypatch):
    from spiking_lm.distributed import _shipped_config

    monkeypatch.chdir(tmp_path)
    resolved = _shipped_config("recipes/accelerate/zero2.json")  # as deepspeed_zero2.yaml names it
    assert json.loads(Path(resolved).read_text())["zero_optimization"]["stage"] == 2
    with pytest.raises(ValueError, match="mine.json' does not exist"):
        _shipped_config("configs/mine.json")
