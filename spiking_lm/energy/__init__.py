"""Energy and operation counting for spiking models: `estimate_energy`, `energy_mj` and the
45 nm constants `E_MAC_PJ` / `E_AC_PJ` (and `E_INT_AC_PJ` for the int8 weights of W8 models)."""

from .counting import (
    CONVENTIONS,
    E_AC_PJ,
    E_INT_AC_PJ,
    E_MAC_PJ,
    EnergyReport,
    LayerOperations,
    OperationCounter,
    count_operations,
    energy_mj,
    estimate_energy,
)
from .report import format_table, plot_firing_rates

__all__ = [
    "CONVENTIONS",
    "E_AC_PJ",
    "E_INT_AC_PJ",
    "E_MAC_PJ",
    "EnergyReport",
    "LayerOperations",
    "OperationCounter",
    "count_operations",
    "energy_mj",
    "estimate_energy",
    "format_table",
    "plot_firing_rates",
]
