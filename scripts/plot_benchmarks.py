"""Charts for docs/benchmarks.md from the JSON files the benchmark scripts write (``--json``).

    python scripts/bench_models.py --json docs/data/bench_models.json
    python scripts/bench_neurons.py --json docs/data/bench_neurons.json
    python scripts/bench_inference.py --shapes 125m --rounds 2 --json docs/data/bench_inference.json
    python scripts/plot_benchmarks.py            # docs/data/*.json -> docs/images/*.png

Each chart shows ratios against the baseline its script measured in the same run (1.0 = as fast as the ANN).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _bars(ax, labels, series: dict[str, list], title: str, ylabel: str) -> None:
    width = 0.8 / len(series)
    for index, (name, values) in enumerate(series.items()):
        positions = [i + (index - (len(series) - 1) / 2) * width for i in range(len(labels))]
        heights = [0 if v is None else v for v in values]
        bars = ax.bar(positions, heights, width, label=name)
        for bar, value in zip(bars, values, strict=True):
            if value is not None:
                ax.annotate(f"{value:.2f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom",
                            fontsize=7)  # fmt: skip
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend(fontsize=8)


def plot_models(data: dict, target: Path) -> None:
    rows = data["rows"]
    labels = [row["pair"].replace(" vs ", "\nvs ") for row in rows]
    series = {key: [row[key] for row in rows] for key in ("training", "generation", "activations")}
    fig, ax = plt.subplots(figsize=(9, 4))
    _bars(ax, labels, series, "Spiking model / same-shape ANN (bench_models.py)", "ratio (speed: higher is faster)")
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)


def plot_neurons(data: dict, target: Path) -> None:
    rows = [row for row in data["rows"] if "eager" not in row["neuron"]]
    labels = [f"{row['neuron']}\n{row['shape']}" for row in rows]
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.7), 4))
    _bars(ax, labels, {"x GELU": [row["x_gelu"] for row in rows]}, "Neuron forward+backward / GELU", "x GELU")
    ax.tick_params(axis="x", labelrotation=60)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)


def plot_inference(data: dict, target: Path) -> None:
    rows = data["rows"]
    batches = sorted({row["batch"] for row in rows})
    models = list(dict.fromkeys(row["model"] for row in rows))
    speed = {(row["model"], row["batch"]): row["tokens_per_s"] for row in rows}
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        ax.barh(models, [speed.get((model, batch), 0) for model in models])
        for y, model in enumerate(models):
            ax.annotate(f"{speed.get((model, batch), 0):.1f}", (speed.get((model, batch), 0), y), va="center",
                        fontsize=7)  # fmt: skip
        ax.set_title(f"greedy decoding, batch {batch} (tok/s)", fontsize=10)
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)


PLOTS = {"bench_models": plot_models, "bench_neurons": plot_neurons, "bench_inference": plot_inference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DOCS / "data")
    parser.add_argument("--out", type=Path, default=DOCS / "images")
    args = parser.parse_args()
    files = sorted(args.data.glob("*.json"))
    if not files:
        raise SystemExit(f"plot_benchmarks: error: no benchmark JSON files in {args.data}")
    args.out.mkdir(parents=True, exist_ok=True)
    for path in files:
        data = json.loads(path.read_text())
        plot = PLOTS.get(data.get("benchmark"))
        if plot is None:
            raise SystemExit(f"plot_benchmarks: error: {path} is not a benchmark file (no known 'benchmark' key)")
        target = args.out / f"{data['benchmark']}.png"
        plot(data, target)
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
