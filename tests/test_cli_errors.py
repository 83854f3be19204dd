"""Every CLI mistake ends with one line `spiking-lm: error: ...` naming its cause, exit code 2 for bad input and
1 for a failure while running; `--debug` shows the traceback instead."""

import json
import os
import subprocess
import sys

import pytest

from spiking_lm.cli import main
from spiking_lm.data import train_bpe_tokenizer


def write(path, text):
    path.write_text(text)
    return str(path)


def distill_recipe(tmp_path, teacher_folder, data="", training="", teacher=None):
    return write(
        tmp_path / f"recipe{len(list(tmp_path.glob('recipe*.yaml')))}.yaml",
        f"teacher: {teacher or teacher_folder}\nstudent: {{architecture: bispikclm, time_steps: 2}}\n"
        f"data: {{source: {teacher_folder / 'corpus.txt'}, block_size: 32{data}}}\n"
        f"training: {{output_dir: {tmp_path / 'run'}, max_steps: 1, report_to: none, use_cpu: true{training}}}\n",
    )


def run_cli(argv, capsys):
    """(exit code, the last line on stderr) of ``spiking-lm ARGV``; argparse's own errors exit through SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


def bad_inputs(tmp_path, teacher_folder, student_folder):
    """(argv, code, what the line must say) for each mistake."""
    not_json = write(tmp_path / "list.json", "[1, 2]")
    broken_yaml = write(tmp_path / "broken.yaml", "student: {architecture: bispikclm\n")
    non_spiking = str(teacher_folder)
    other_tokenizer = tmp_path / "other_tokenizer"
    train_bpe_tokenizer(["an entirely different corpus of words " * 40], vocab_size=300).save_pretrained(
        other_tokenizer
    )
    return [
        (["energy", str(tmp_path / "missing")], 2, "does not exist"),
        (["energy", str(student_folder), "--length", "0"], 2, "'0' must be >= 1"),
        (["energy", str(student_folder), "--sequences", "x"], 2, "'x' is not an integer"),
        (["energy", non_spiking], 2, "needs a spiking_lm model"),
        (["perplexity", str(student_folder), "--window", "0"], 2, "'0' must be >= 1"),
        (["perplexity", str(student_folder), "--stride", "-4"], 2, "'-4' must be >= 1"),
        (["eval", str(student_folder), "--limit", "0"], 2, "'0' must be >= 1"),
        (["eval", str(student_folder), "--num-fewshot", "-1"], 2, "'-1' must be >= 0"),
        (["eval", str(student_folder), "--batch-size", "0"], 2, "'0' must be >= 1"),
        (["glue", str(student_folder), "--task", "sst2", "--epochs", "0"], 2, "must be a finite number > 0"),
        (["card", str(tmp_path)], 2, "config.json"),
        (["card", str(student_folder), "--template", str(tmp_path / "none.j2")], 2, "does not exist"),
        (["perplexity", str(student_folder), "--results", not_json], 2, "must hold a JSON object"),
        (["push", str(student_folder), "../evil"], 2, "repo_id"),
        (["card", str(student_folder), "--repo-id", "a/b/c", "--print"], 2, "repo_id"),
        (
            ["eval", str(student_folder), "--tasks", "arc_eas", "--limit", "1"],
            2,
            "unknown lm-eval task(s): 'arc_eas' (did you mean arc_easy",
        ),
        (["glue", str(student_folder), "--task", "sst3"], 2, "unknown GLUE task 'sst3'"),
        (["quickstart", "--output-dir", not_json, "--smoke"], 2, "is a file, not a folder"),
        (["distill", str(tmp_path / "nope.yaml")], 2, "recipe not found"),
        (["distill", broken_yaml], 2, "not valid YAML"),
        (["distill", distill_recipe(tmp_path, teacher_folder, data=", block_size: 0")], 2, "block_size=0"),
        (["distill", distill_recipe(tmp_path, teacher_folder, data=", block_size: 12.5")], 2, "block_size=12.5"),
        (
            ["distill", distill_recipe(tmp_path, teacher_folder, data=", block_size: 100")],
            2,
            "max_position_embeddings=64",
        ),
        (["distill", distill_recipe(tmp_path, teacher_folder, teacher=tmp_path / "no_teacher")], 2, "teacher folder"),
        (["distill", distill_recipe(tmp_path, teacher_folder, training=", sta_weight: .nan")], 2, "sta_weight=nan"),
        (["distill", distill_recipe(tmp_path, teacher_folder), "--resume"], 2, "no complete checkpoint"),
        (["distill", distill_recipe(tmp_path, teacher_folder), "--student.nonsense", "1"], 2, "unknown key"),
        (["distill", distill_recipe(tmp_path, teacher_folder), "--training.max_steps"], 2, "pairs"),
        (
            ["distill", distill_recipe(tmp_path, teacher_folder, data=f", tokenizer: {other_tokenizer}")],
            2,
            "another vocabulary than the teacher's",
        ),
    ]


def test_every_bad_input_ends_in_one_error_line(tmp_path, teacher_folder, student_folder, capsys):
    failures = []
    for argv, code, phrase in bad_inputs(tmp_path, teacher_folder, student_folder):
        got_code, line = run_cli(argv, capsys)
        if got_code != code or not line.startswith("spiking-lm: error: ") or phrase not in line:
            failures.append((argv, got_code, line))
    assert not failures, "\n".join(map(str, failures))
    assert not (teacher_folder / "energy.json").exists()  # nothing written into the non-spiking model's folder


def test_a_failure_while_running_exits_1(tmp_path, student_folder, capsys, monkeypatch):
    import spiking_lm.evaluation.runners as runners

    def broken(*args, **kwargs):
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(runners, "run_perplexity", broken)
    assert run_cli(["perplexity", str(student_folder)], capsys) == (
        1,
        "spiking-lm: error: the disk is full (--debug shows the traceback)",
    )


def test_debug_shows_the_traceback(tmp_path):
    missing = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["--debug", "energy", missing])
    env = {**os.environ, "SPIKING_LM_DEBUG": "1"}
    result = subprocess.run([sys.executable, "-m", "spiking_lm.cli", "energy", missing], capture_output=True,
                            text=True, env=env)  # fmt: skip
    assert result.returncode == 1 and "Traceback" in result.stderr
    result = subprocess.run([sys.executable, "-m", "spiking_lm.cli", "energy", missing], capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"spiking-lm: error: model folder {missing!r} does not exist "
                                                  "(--debug shows the traceback)"]  # fmt: skip


def test_results_file_that_is_not_an_object_is_named(tmp_path):
    from spiking_lm.evaluation.results import load_results

    path = tmp_path / "results.json"
    for content in ("[1, 2]", '"text"', '{"evaluations": [1]}'):
        path.write_text(content)
        with pytest.raises(ValueError, match=r"results.json is not a valid results file"):
            load_results(path)
    path.write_text(json.dumps({"evaluations": {}}))
    assert load_results(path) == {"evaluations": {}}
