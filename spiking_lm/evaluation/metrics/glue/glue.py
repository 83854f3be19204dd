"""GLUE's metrics as an `evaluate` metric module, shipped with spiking_lm because the hub copy cannot be
fetched offline. Load it with ``evaluate.load(path_to_this_folder, config_name=task)``.

Per task, as GLUE defines them: CoLA → Matthews correlation; SST-2, MNLI (matched/mismatched), QNLI, RTE, WNLI →
accuracy; MRPC, QQP → accuracy and F1 of the positive class; STS-B → Pearson and Spearman correlation.
"""

import datasets
import evaluate
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

TASKS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "mnli_matched", "mnli_mismatched", "qnli", "rte", "wnli")

INPUTS = """
Args:
    predictions: predicted labels (integers), or scores (floats) for stsb.
    references: gold labels (integers), or scores (floats) for stsb.
Returns:
    cola: {"matthews_correlation"}; mrpc, qqp: {"accuracy", "f1"}; stsb: {"pearson", "spearmanr"};
    every other task: {"accuracy"}.
"""


class Glue(evaluate.Metric):
    def _info(self):
        if self.config_name not in TASKS:
            raise KeyError(f"unknown GLUE task {self.config_name!r}; choose one of {', '.join(TASKS)}")
        kind = "float32" if self.config_name == "stsb" else "int64"
        return evaluate.MetricInfo(
            description="GLUE benchmark metrics (spiking_lm's offline copy).",
            citation="Wang et al., GLUE: A Multi-Task Benchmark and Analysis Platform for NLU, ICLR 2019.",
            inputs_description=INPUTS,
            features=datasets.Features({"predictions": datasets.Value(kind), "references": datasets.Value(kind)}),
            format="numpy",
        )

    def _compute(self, predictions, references):
        if self.config_name == "cola":
            return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
        if self.config_name == "stsb":
            return {
                "pearson": float(pearsonr(predictions, references)[0]),
                "spearmanr": float(spearmanr(predictions, references)[0]),
            }
        accuracy = float((predictions == references).mean())
        if self.config_name in ("mrpc", "qqp"):
            return {"accuracy": accuracy, "f1": float(f1_score(references, predictions))}
        return {"accuracy": accuracy}
