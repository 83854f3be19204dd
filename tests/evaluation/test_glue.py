"""GLUE: the shipped metric module against hand-computed values, and `spiking-lm glue` end to end on tiny local
fixtures of each input type (single sentence, sentence pair, regression, and MNLI's two evaluation splits)."""

import json
import math
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerFast

import spiking_lm
from spiking_lm.cli import main
from spiking_lm.evaluation.glue import GlueSettings, load_glue_metric, load_glue_splits, run_glue

pytest.importorskip("sklearn")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "glue"


def test_accuracy_and_f1_match_hand_counts():
    # predictions 1,0,1,1 against 1,0,0,1: 3 of 4 right; TP=2, FP=1, FN=0 -> P=2/3, R=1, F1=0.8
    scores = load_glue_metric("mrpc").compute(predictions=[1, 0, 1, 1], references=[1, 0, 0, 1])
    assert scores == pytest.approx({"accuracy": 0.75, "f1": 0.8})
    assert load_glue_metric("sst2").compute(predictions=[1, 0, 1, 1], references=[1, 0, 0, 1]) == {"accuracy": 0.75}
    assert load_glue_metric("mnli_mismatched").compute(predictions=[2, 0, 1], references=[2, 1, 1]) == pytest.approx(
        {"accuracy": 2 / 3}
    )


def test_matthews_correlation_matches_its_formula():
    # TP=2, TN=1, FP=1, FN=0: (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 2 / sqrt(12)
    scores = load_glue_metric("cola").compute(predictions=[1, 0, 1, 1], references=[1, 0, 0, 1])
    assert scores["matthews_correlation"] == pytest.approx(2 / math.sqrt(12))


def test_pearson_and_spearman_match_their_formulas():
    predictions, references = [1.0, 2.0, 3.5, 0.5], [1.5, 2.0, 3.0, 1.0]
    mean_p, mean_r = sum(predictions) / 4, sum(references) / 4
    covariance = sum((p - mean_p) * (r - mean_r) for p, r in zip(predictions, references, strict=True))
    pearson = (
        covariance
        / math.sqrt(sum((p - mean_p) ** 2 for p in predictions))
        / math.sqrt(sum((r - mean_r) ** 2 for r in references))
    )
    scores = load_glue_metric("stsb").compute(predictions=predictions, references=references)
    assert scores["pearson"] == pytest.approx(pearson, rel=1e-5)
    assert scores["spearmanr"] == pytest.approx(1.0)  # the two rankings agree exactly


def glue_tokenizer() -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer trained on the fixtures' words, with BERT's special tokens ([PAD] = 0)."""
    texts = []
    for path in FIXTURES.rglob("*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            texts += [value for key, value in row.items() if isinstance(value, str)]
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=special))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")  # fmt: skip


FAMILIES = {  # a saved model of each family, with any head: `glue` puts a classifier on it
    "we_spikingformer": (spiking_lm.WESpikingformerConfig, spiking_lm.WESpikingformerForMaskedLM),
    "wd_spikingformer": (spiking_lm.WDSpikingformerConfig, spiking_lm.WDSpikingformerForCausalLM),
    "bispikclm": (spiking_lm.BiSpikCLMConfig, spiking_lm.BiSpikCLMForCausalLM),
}


def family_folder(folder: Path, family: str) -> Path:
    fast = glue_tokenizer()
    config_class, model_class = FAMILIES[family]
    options = {"time_steps": 2} if family == "bispikclm" else {}
    config = config_class(vocab_size=len(fast), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=64, pad_token_id=0, **options)  # fmt: skip
    torch.manual_seed(0)
    model_class(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory):
    """A tiny WE-Spikingformer masked LM with the fixtures' WordLevel tokenizer."""
    return family_folder(tmp_path_factory.mktemp("encoder"), "we_spikingformer")


def _direct_predictions(final: Path, rows: list[dict], keys: tuple[str, ...]) -> torch.Tensor:
    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    texts = [[row[key] for row in rows] for key in keys]
    batch = tokenizer(*texts, padding=True, return_tensors="pt", return_token_type_ids=True)  # as the run encodes
    with torch.no_grad():
        return model(**batch).logits


def test_glue_command_fine_tunes_and_scores_every_input_type(encoder_folder, tmp_path, capsys):
    results = tmp_path / "results.json"
    args = ["glue", str(encoder_folder), "--task", "sst2,mrpc,stsb,mnli", "--data-dir", str(FIXTURES),
            "--output-dir", str(tmp_path / "glue"), "--epochs", "3", "--learning-rate", "1e-3",
            "--batch-size", "4", "--results", str(results)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "matthews" not in printed and "pearson" in printed and "validation_mismatched" in printed
    evaluations = json.loads(results.read_text())["evaluations"]
    assert set(evaluations) == {"glue/sst2", "glue/mrpc", "glue/stsb", "glue/mnli"}
    assert set(evaluations["glue/mrpc"]["scores"]["validation"]) == {"accuracy", "f1"}
    assert set(evaluations["glue/stsb"]["scores"]["validation"]) == {"pearson", "spearmanr"}
    assert set(evaluations["glue/mnli"]["scores"]) == {"validation_matched", "validation_mismatched"}
    assert evaluations["glue/sst2"]["energy"]["acs"] > 0  # the energy report sits beside the score

    # The recorded accuracy is the fine-tuned model's own accuracy on the validation file, counted directly.
    rows = [json.loads(line) for line in (FIXTURES / "sst2" / "validation.jsonl").read_text().splitlines()]
    predictions = _direct_predictions(tmp_path / "glue" / "sst2" / "final", rows, ("sentence",)).argmax(-1)
    correct = sum(int(p == row["label"]) for p, row in zip(predictions.tolist(), rows, strict=True))
    assert evaluations["glue/sst2"]["scores"]["validation"]["accuracy"] == pytest.approx(correct / len(rows))
    stsb_rows = [json.loads(line) for line in (FIXTURES / "stsb" / "validation.jsonl").read_text().splitlines()]
    scores = _direct_predictions(tmp_path / "glue" / "stsb" / "final", stsb_rows, ("sentence1", "sentence2"))
    assert scores.shape == (len(stsb_rows), 1)  # regression head


def test_bad_glue_input_is_named(encoder_folder, tmp_path):
    with pytest.raises(ValueError, match="unknown GLUE task 'sts'"):
        run_glue(str(encoder_folder), "sts", GlueSettings(data_dir=str(FIXTURES)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_glue_splits("rte", tmp_path)
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.jsonl").write_text('{"text": "no sentence column", "label": 1}\n')
    (tmp_path / "sst2" / "validation.jsonl").write_text('{"sentence": "fine", "label": 1}\n')
    with pytest.raises(ValueError, match=r"lacks the columns \['sentence'\]"):
        load_glue_splits("sst2", tmp_path)


@pytest.mark.parametrize("family", ["wd_spikingformer", "bispikclm"])
def test_glue_fine_tunes_a_classifier_on_every_decoder_family(family, tmp_path):
    folder = family_folder(tmp_path / "model", family)
    results = tmp_path / "results.json"
    args = ["glue", str(folder), "--task", "sst2", "--data-dir", str(FIXTURES), "--output-dir", str(tmp_path / "glue"),
            "--epochs", "2", "--learning-rate", "1e-3", "--batch-size", "4", "--results", str(results)]  # fmt: skip
    assert main(args) == 0
    final = tmp_path / "glue" / "sst2" / "final"
    classifier = AutoModelForSequenceClassification.from_pretrained(final)
    assert type(classifier).__name__ == FAMILIES[family][1].__name__.replace("CausalLM", "SequenceClassification")
    rows = [json.loads(line) for line in (FIXTURES / "sst2" / "validation.jsonl").read_text().splitlines()]
    predictions = _direct_predictions(final, rows, ("sentence",)).argmax(-1)
    correct = sum(int(p == row["label"]) for p, row in zip(predictions.tolist(), rows, strict=True))
    accuracy = json.loads(results.read_text())["evaluations"]["glue/sst2"]["scores"]["validation"]["accuracy"]
    assert accuracy == pytest.approx(correct / len(rows))
