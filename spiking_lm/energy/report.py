"""Presenting an energy report: a text table and a per-layer firing-rate plot."""

from __future__ import annotations

from pathlib import Path


def format_table(report: dict) -> str:
    """The report (an `EnergyReport.to_dict()`) as an aligned text table, per layer then totals."""
    lines = [f"{'layer':<34} {'firing rate':>11} {'MACs':>14} {'ACs (' + report['convention'] + ')':>18} "
             f"{'energy (mJ)':>12}"]  # fmt: skip
    for layer in report["layers"]:
        rate = "-" if layer["firing_rate"] is None else f"{layer['firing_rate']:.4f}"
        lines.append(
            f"{layer['name'][:34]:<34} {rate:>11} {layer['macs']:>14,} {layer['acs']:>18,} "
            f"{layer['snn_energy_mj']:>12.4g}"
        )
    per_token = report["per_token"]
    ratio = "-" if report["ratio"] is None else f"{report['ratio']:.4f}"
    constants = report["constants"]
    lines += [
        "",
        f"spiking model: {report['macs']:,} MACs + {report['acs']:,} ACs{_int8_part(report)} = "
        f"{report['snn_energy_mj']:.4g} mJ ({per_token['snn_energy_mj']:.4g} mJ/token), mean firing rate "
        f"{report['firing_rate'] or 0:.4f}",
        f"ANN baseline ({report['ann_baseline']}): {report['ann_macs']:,} MACs = {report['ann_energy_mj']:.4g} mJ "
        f"({per_token['ann_energy_mj']:.4g} mJ/token)",
        f"SNN / ANN energy: {ratio}  ({report['convention']} convention; E_MAC {constants['mac_pj']} pJ, "
        f"E_AC {constants['ac_pj']} pJ; {report['sequences']} sequence(s), {report['tokens']} tokens)",
    ]
    for name, figures in report["conventions"].items():
        other = "-" if figures["ratio"] is None else f"{figures['ratio']:.4f}"
        lines.append(
            f"  {name} convention: {figures['acs']:,} ACs, {figures['snn_energy_mj']:.4g} mJ, SNN / ANN {other}"
        )
    return "\n".join(lines)


def _int8_part(report: dict) -> str:
    """`` + N int8 ACs (x pJ)`` for a W8 model, whose spikes add int8 weights into int32 sums; else empty."""
    if not report.get("int8_acs"):
        return ""
    return f" + {report['int8_acs']:,} int8 ACs at {report['constants']['int_ac_pj']} pJ"


def plot_firing_rates(report: dict, path) -> Path:
    """Bar chart of the per-layer firing rates of ``report`` saved as a PNG at ``path`` (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError as error:
        raise ImportError("the firing-rate plot needs matplotlib: pip install 'spiking_lm[plot]'") from error
    layers = [layer for layer in report["layers"] if layer["firing_rate"] is not None]
    figure, axis = plt.subplots(figsize=(max(4.0, 0.5 * len(layers) + 2), 3.2))
    axis.bar([layer["name"] for layer in layers], [layer["firing_rate"] for layer in layers], color="#4c72b0")
    axis.set_ylabel("firing rate (spikes / neuron / step)")
    axis.set_title(f"per-layer firing rate (mean {report['firing_rate'] or 0:.3f})")
    axis.tick_params(axis="x", labelrotation=45)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
