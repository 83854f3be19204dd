"""Zero-shot suites through the real lm-evaluation-harness, on local JSONL fixtures in each task's format."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from spiking_lm.evaluation.harness import TASK_SUITES, evaluate_zero_shot, expand_tasks, write_local_tasks  # noqa: E402
from spiking_lm.evaluation.loading import load_model_and_tokenizer  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lm_eval"
ALL_TASKS = TASK_SUITES["qa"] + TASK_SUITES["commonsense"]


@pytest.fixture(scope="module")
def loaded(student_folder):
    return load_model_and_tokenizer(str(student_folder), "causal-lm")


@pytest.fixture(scope="module")
def suites(loaded):
    model, tokenizer = loaded
    return evaluate_zero_shot(model, tokenizer, "qa,commonsense", data_dir=FIXTURES, batch_size=4)


def test_every_task_of_both_suites_runs_on_its_own_format(suites):
    assert list(suites["scores"]) == ALL_TASKS
    for task in ALL_TASKS:
        documents = len((FIXTURES / f"{task}.jsonl").read_text().splitlines())
        assert suites["samples"][task] == documents
        for metric, value in suites["scores"][task].items():
            assert metric in ("acc", "acc_norm")
            assert value * documents == pytest.approx(round(value * documents))  # a fraction of the documents
    assert suites["probe_input_ids"].dim() == 2


def _loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context), keeping the last max_position_embeddings tokens as the model's input."""
    whole = tokenizer(context + continuation)["input_ids"]
    continuation_ids = whole[len(tokenizer(context)["input_ids"]) :]
    inputs = whole[-(model.config.max_position_embeddings + 1) :][:-1]
    with torch.no_grad():
        log_probs = model(input_ids=torch.tensor([inputs])).logits[0].log_softmax(-1)
    predictions = log_probs[-len(continuation_ids) :]
    return sum(predictions[i, token].item() for i, token in enumerate(continuation_ids))


def test_piqa_accuracy_equals_direct_scoring_of_each_choice(loaded, suites):
    model, tokenizer = loaded
    documents = [json.loads(line) for line in (FIXTURES / "piqa.jsonl").read_text().splitlines()]
    correct = 0
    for doc in documents:
        context = f"Question: {doc['goal']}\nAnswer:"
        scores = [_loglikelihood(model, tokenizer, context, " " + doc[key]) for key in ("sol1", "sol2")]
        correct += int(max(range(2), key=scores.__getitem__) == doc["label"])
    assert suites["scores"]["piqa"]["acc"] == pytest.approx(correct / len(documents))


def test_a_request_scores_the_same_alone_or_batched_with_others(loaded):
    model, tokenizer = loaded
    pairs = [("Question: what is water?\nAnswer:", " wet"), ("The king", " is dead"), ("To be", " or not to be"),
             ("Now is the winter", " of our discontent made glorious summer")]  # fmt: skip

    def scores(batch_size, order):
        wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device="cpu")
        requests = [Instance("loglikelihood", {}, pairs[i], idx=0) for i in order]
        return dict(zip(order, (ll for ll, _ in wrapped.loglikelihood(requests, disable_tqdm=True)), strict=True))

    alone = scores(1, [0, 1, 2, 3])
    batched = scores(4, [3, 1, 0, 2])
    for index in range(4):
        assert batched[index] == pytest.approx(alone[index], rel=1e-5, abs=1e-5)


def test_task_names_and_local_data_errors(tmp_path):
    assert expand_tasks("commonsense,piqa,arc_easy") == ["hellaswag", "piqa", "winogrande", "arc_easy"]
    with pytest.raises(ValueError, match="no tasks"):
        expand_tasks(" , ")
    with pytest.raises(FileNotFoundError, match="piqa.jsonl"):
        write_local_tasks(["piqa"], tmp_path, tmp_path / "tasks")
    with pytest.raises(ValueError, match="no task named"):
        write_local_tasks(["not_a_task"], FIXTURES, tmp_path / "tasks")


@pytest.mark.parametrize(
    "options,message",
    [({"num_fewshot": -1}, "num_fewshot must be >= 0, got -1"), ({"limit": 0}, "limit must be >= 1"),
     ({"batch_size": 0}, "batch_size must be >= 1")],
)  # fmt: skip
def test_bad_evaluation_settings_are_refused_before_anything_runs(options, message):
    with pytest.raises(ValueError, match=message):
        evaluate_zero_shot(None, None, "piqa", **options)


@pytest.mark.slow
def test_lm_eval_cli_runs_on_a_saved_folder_through_remote_code(student_folder, tmp_path):
    tasks = write_local_tasks(["piqa", "arc_easy"], FIXTURES, tmp_path / "tasks")
    command = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
               f"pretrained={student_folder},trust_remote_code=True", "--device", "cpu", "--tasks", ",".join(tasks),
               "--include_path", str(tmp_path / "tasks"), "--batch_size", "2",
               "--output_path", str(tmp_path / "out")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    written = next((tmp_path / "out").rglob("results_*.json"))
    results = json.loads(written.read_text())["results"]
    assert set(results) == {"piqa_local", "arc_easy_local"}
    assert 0 <= results["piqa_local"]["acc,none"] <= 1


def own_task(folder: Path) -> Path:
    """A task of the user's own: a YAML file and its JSONL data, the way lm-eval's --include_path reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"question": "Winter or summer?", "choices": ["winter", "summer"], "label": 0},
            {"question": "York or Lancaster?", "choices": ["York", "Lancaster"], "label": 1}]  # fmt: skip
    (folder / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = (f"task: shakespeare_choice\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
              f"    test: {folder / 'data.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
              "doc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n"
              "metric_list:\n  - metric: acc\n")  # fmt: skip
    (folder / "shakespeare_choice.yaml").write_text(config)
    return folder / "shakespeare_choice.yaml"


def test_eval_runs_a_task_of_the_users_own_by_include_path_or_yaml_path(student_folder, tmp_path, capsys):
    from spiking_lm.cli import main

    task_yaml = own_task(tmp_path / "tasks")
    results = tmp_path / "results.json"
    argv = ["eval", str(student_folder), "--results", str(results), "--batch-size", "2"]
    assert main([*argv, "--include-path", str(task_yaml.parent), "--tasks", "shakespeare_choice"]) == 0
    entry = json.loads(results.read_text())["evaluations"]["lm_eval"]
    assert entry["samples"] == {"shakespeare_choice": 2} if "samples" in entry else entry["settings"]["samples"]
    assert 0 <= entry["scores"]["shakespeare_choice"]["acc"] <= 1
    assert main([*argv, "--tasks", str(task_yaml)]) == 0  # the YAML file itself
    assert "shakespeare_choice" in json.loads(results.read_text())["evaluations"]["lm_eval"]["scores"]
    capsys.readouterr()
    assert main([*argv, "--tasks", "shakespeare_choice"]) == 2  # not known without its folder
    assert "unknown lm-eval task(s): 'shakespeare_choice'" in capsys.readouterr().err
    assert main([*argv, "--include-path", str(tmp_path / "none"), "--tasks", "shakespeare_choice"]) == 2
    assert "is not a folder of task YAML files" in capsys.readouterr().err
