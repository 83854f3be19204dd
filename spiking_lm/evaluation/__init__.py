"""Evaluation and reporting: perplexity, lm-eval zero-shot suites, GLUE, the results file, model cards and
Hub upload. Heavy optional libraries (lm-eval, matplotlib, scikit-learn) are imported only when used."""

from .perplexity import corpus_token_ids, sliding_window_perplexity
from .results import RESULTS_FILE, load_results, record_evaluation, record_training

__all__ = [
    "RESULTS_FILE",
    "corpus_token_ids",
    "load_results",
    "record_evaluation",
    "record_training",
    "sliding_window_perplexity",
]
