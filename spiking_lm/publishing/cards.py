"""Model cards filled from a model folder's ``results.json`` (`spiking-lm card DIR`)."""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

from ..evaluation.results import RESULTS_FILE, load_results, write_text_atomically
from ..models.auto import ARCHITECTURES
from .metadata import card_metadata

TEMPLATES = resources.files("spiking_lm.model_cards")
"""The templates of the repository's top-level ``model_cards/``, shipped inside the package as
``spiking_lm.model_cards`` (pyproject's package-dir mapping), so an installed package finds them too."""
DEFAULT_TEMPLATE = "spiking_lm.md.j2"
FIRING_PLOT = "firing_rates.png"  # written beside the model by `spiking-lm energy`
INTEGER_NEURONS = ("ilif", "nilif", "asn", "nasn")
ATTENTION = {
    "wssa": "winner-take-all spiking self-attention (WSSA)",
    "cwssa": "causal winner-take-all spiking self-attention (CWSSA)",
    "sfsa": "softmax-free spiking self-attention (SFSA)",
    "ssa": "spiking self-attention (SSA)",
}
HEADS = {  # saved class suffix -> (Auto class, pipeline tag, what the model does, usage lines)
    "ForCausalLM": ("AutoModelForCausalLM", "text-generation", "causal language model", [
        'inputs = tokenizer("ROMEO.", return_tensors="pt")',
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20, do_sample=False)[0]))",
    ]),
    "ForMaskedLM": ("AutoModelForMaskedLM", "fill-mask", "masked language model", [
        'inputs = tokenizer(f"The capital of France is {tokenizer.mask_token}.", return_tensors="pt")',
        "print(model(**inputs).logits.shape)",
    ]),
    "ForSequenceClassification": ("AutoModelForSequenceClassification", "text-classification",
                                  "sequence classifier", [
        'inputs = tokenizer("a gripping, beautifully made film", return_tensors="pt")',
        "print(model(**inputs).logits.softmax(-1))",
    ]),
}  # fmt: skip


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _count(value) -> str:
    return f"{value:,.0f}"


def _score_rows(evaluations: dict) -> list[dict]:
    rows = []
    for name, entry in sorted(evaluations.items()):
        scores = entry.get("scores") or {}
        if name == "lm_eval":
            for task, metrics in scores.items():
                rows += [{"benchmark": task, "metric": m, "value": _format(v)} for m, v in sorted(metrics.items())]
        elif name == "perplexity":
            data = entry["settings"].get("data")
            rows.append({"benchmark": f"perplexity ({data})", "metric": "perplexity",
                         "value": _format(scores["perplexity"])})  # fmt: skip
        else:  # GLUE nests its scores by split: {"validation": {"accuracy": ...}}
            rows += [{"benchmark": name, "metric": m, "value": _format(v)} for m, v in _flat_scores(scores)]
    return rows


def _flat_scores(scores: dict, prefix: str = "") -> list[tuple[str, float]]:
    """``{"validation": {"accuracy": 0.9}}`` → ``[("validation accuracy", 0.9)]``; non-numbers are left out."""
    flat = []
    for key, value in sorted(scores.items()):
        if isinstance(value, dict):
            flat += _flat_scores(value, f"{prefix}{key} ")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat.append((f"{prefix}{key}", value))
    return flat


def _energy_summary(evaluations: dict) -> dict | None:
    """The energy report to show: the dedicated `energy` run if any, else the first evaluation's probe."""
    ordered = sorted(evaluations.items(), key=lambda item: (item[0] != "energy", item[0]))
    for name, entry in ordered:
        report = entry.get("energy")
        if not report:
            continue
        per_token = report["per_token"]
        rates = ", ".join(f"{layer['name']} {layer['firing_rate']:.3f}" for layer in report["layers"]
                          if layer.get("firing_rate") is not None)  # fmt: skip
        return {
            "source": "`spiking-lm energy`" if name == "energy" else f"the `{name}` inputs",
            "tokens": report["tokens"],
            "mac_pj": report["constants"]["mac_pj"],
            "ac_pj": report["constants"]["ac_pj"],
            "snn_macs": _count(per_token["macs"]),
            "snn_acs": _count(per_token["acs"]),
            "snn_mj": _format(per_token["snn_energy_mj"]),
            "ann_macs": _count(per_token["ann_macs"]),
            "ann_mj": _format(per_token["ann_energy_mj"]),
            "baseline": report["ann_baseline"],
            # results files written before the two conventions counted as `measured` and hold no `conventions`
            "convention": report.get("convention", "measured"),
            "ratio": _format(report["ratio"]) if report["ratio"] is not None else "-",
            "conventions": {
                name: _format(figures["ratio"]) if figures["ratio"] is not None else "-"
                for name, figures in report.get("conventions", {}).items()
            },  # fmt: skip
            "firing_rate": _format(report["firing_rate"]) if report["firing_rate"] is not None else "-",
            "layer_rates": rates or "-",
        }
    return None


def render_card(folder, repo_id: str | None = None, template: str | Path | None = None,
                license: str = "apache-2.0") -> str:  # fmt: skip
    """The model card of the saved model in ``folder``, filled from its config and ``results.json``.

    Args:
        repo_id: the Hub id the usage snippet loads from (default: the folder's absolute path, so that the
            snippet runs as written on this machine).
        template: a Jinja template file (default `model_cards/spiking_lm.md.j2`).
    """
    import jinja2

    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} is not a saved model folder: {config_file} is missing")
    config = json.loads(config_file.read_text())
    results = load_results(folder / RESULTS_FILE)
    saved_class = (config.get("architectures") or [""])[0]
    suffix = next((s for s in HEADS if saved_class.endswith(s)), "ForCausalLM")
    auto_class, pipeline_tag, description, usage_lines = HEADS[suffix]
    if repo_id is not None:
        from .hub import check_repo_id

        check_repo_id(repo_id)
    source = repo_id or str(folder.resolve())
    usage = "\n".join([
        f"from transformers import {auto_class}, AutoTokenizer",
        "",
        f'model = {auto_class}.from_pretrained("{source}", trust_remote_code=True)',
        f'tokenizer = AutoTokenizer.from_pretrained("{source}", trust_remote_code=True)  # reads the config',
        *usage_lines,
    ])  # fmt: skip
    weights = folder / "model.safetensors"
    parameters = _parameter_count(weights) if weights.is_file() else "?"
    training = results.get("training")
    evaluations = results.get("evaluations", {})
    metadata = card_metadata(config, pipeline_tag, training, evaluations, repo_id or folder.name, license)
    energy = _energy_summary(evaluations)
    if energy is not None:
        energy["plot"] = FIRING_PLOT if (folder / FIRING_PLOT).is_file() else None
    entry = ARCHITECTURES.get(config["model_type"])
    architecture = entry.name if entry is not None else config["model_type"]
    template_path = Path(template) if template else TEMPLATES.joinpath(DEFAULT_TEMPLATE)
    if not template_path.is_file():
        raise FileNotFoundError(f"model card template {template_path} does not exist")
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return environment.from_string(template_path.read_text()).render(
        config=config,
        title=f"{architecture} ({config['num_hidden_layers']} layers, T={config['time_steps']}, "
        f"{config['neuron_type']} neurons)",
        architecture_name=architecture,
        attention_name=ATTENTION.get(config.get("attention_type"), config.get("attention_type")),
        task_description=description,
        pipeline_tag=pipeline_tag,
        parameters=parameters,
        integer_neurons=INTEGER_NEURONS,
        training=training,
        metadata=metadata,
        scores=_score_rows(evaluations),
        energy=energy,
        usage=usage,
    )


def _parameter_count(weights: Path) -> str:
    from safetensors import safe_open

    total = 0
    with safe_open(str(weights), framework="pt") as stream:
        for name in stream.keys():  # noqa: SIM118 (safe_open is not iterable)
            total += math.prod(stream.get_slice(name).get_shape())
    return f"{total / 1e6:.1f}M" if total >= 1e5 else f"{total:,}"


def write_card(folder, repo_id: str | None = None, template=None) -> Path:
    """Render the card and write it to ``folder/README.md`` (atomically: a failure leaves the old card);
    returns the path."""
    path = Path(folder) / "README.md"
    write_text_atomically(path, render_card(folder, repo_id, template))
    return path
