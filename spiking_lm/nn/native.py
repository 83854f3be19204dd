"""Native CPU kernels for W8 decoding, built once per machine with the C compiler and called through `ctypes`.

Decoding a spiking model multiplies a few rows of spike counts by int8 weights. Done with torch operations that is
a search for the spiking inputs, a copy of their weight rows (`index_select`) and an int8 GEMM on the copy — three
passes over the selected rows and ~15 small operations per Linear. `spike_counts` and `int8_rows_product` do it in
two calls: the counts and the inputs that spiked in one pass, then every selected int8 row read once, its
count × weight products added into int32 sums (exact), and the fp32 scale, offset constant and bias applied per
output — the same fp32 operations in the same order as the torch path, so the outputs are bit for bit the same
(the source is compiled with ``-ffp-contract=off``: no fused multiply-add).

The shared library is compiled on first use with ``$CC`` (else the first of `COMPILERS` found) and OpenMP into
``$SPIKING_LM_CACHE/native`` (default ``~/.cache/spiking_lm/native``), named by a hash of the source, the flags and
the CPU, and reused after. Where no compiler works, or ``SPIKING_LM_NATIVE=0``, `native_library` returns `None`
(with one logged warning if the build failed) and the callers take their torch path: the same results, slower.

Decoding SFSA also multiplies the event backend's int8 K/V cache in place (`int8_attention_scores`,
`int8_attention_context`) instead of widening the whole cache to fp32 at every step, and decoding-size neurons fire
in one call each: LIF recurrences (`lif_steps`) instead of four torch operations per time step, the integer
neurons at T = 1 (`integer_fire`) instead of three.

This module imports only `torch` so that it can travel with a saved model's code.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile

import torch

from .native_source import SOURCE

__all__ = ["NATIVE_MAX_ROWS", "int8_attention_context", "int8_attention_scores", "int8_rows_product", "integer_fire",
           "lif_steps", "native_library", "spike_counts"]  # fmt: skip

logger = logging.getLogger(__name__)

NATIVE_MAX_ROWS = 8
"""Up to this many rows of counts `int8_rows_product` beats copying the selected rows for an int8 GEMM (measured
in docs/w8.md: 6 % faster `nilif` decoding at batch 8 than leaving 8 rows to the GEMM, 14 % for `lif` T=4 at
batch 1); with more rows the GEMM's int8 dot-product instructions win."""

FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared")

_state = {"library": None, "tried": False}


def _cpu_identity() -> str:
    """What ``-march=native`` compiles for: the machine and its CPU flags."""
    identity = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            identity += next((line for line in handle if line.startswith(("flags", "Features"))), "")
    except OSError:
        identity += platform.processor()
    return identity


COMPILERS = ("cc", "gcc", "clang", "c++", "g++")
"""Tried in this order where ``$CC`` is not set (the source is also valid GNU C++)."""


def _compiler() -> str:
    if os.environ.get("CC"):
        return os.environ["CC"]
    found = next((name for name in COMPILERS if shutil.which(name)), None)
    if found is None:
        raise OSError(f"no C compiler found (tried {', '.join(COMPILERS)}; set CC)")
    return found


def _build() -> ctypes.CDLL:
    compiler = _compiler()
    key = hashlib.sha256("\0".join((SOURCE, compiler, *FLAGS, _cpu_identity())).encode()).hexdigest()[:16]
    cache = os.environ.get("SPIKING_LM_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "spiking_lm"))
    folder = os.path.join(cache, "native")
    path = os.path.join(folder, f"spiking_lm_native_{key}.so")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            source = os.path.join(scratch, "kernels.c")
            with open(source, "w", encoding="utf-8") as handle:
                handle.write(SOURCE)
            built = os.path.join(scratch, "kernels.so")
            subprocess.run([compiler, *FLAGS, source, "-o", built], check=True, capture_output=True, text=True)
            os.replace(built, path)  # atomic: a concurrent process finds the whole file or none
    library = ctypes.CDLL(path)
    for name, (result, arguments) in _signatures().items():
        function = getattr(library, name)
        function.restype, function.argtypes = result, arguments
    return library


def _signatures() -> dict:
    """``{function: (result type, argument types)}`` of the C source, for `ctypes`."""
    i64, ptr, f32, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int
    return {
        "spike_counts": (i64, [ptr, i64, i64, f32, f32, i32, ptr, ptr]),
        "int8_rows_product": (None, [ptr, i64, i64, ptr, i64, ptr, i64, ptr, ptr, ptr, ptr, i32]),
        "int8_attention_scores": (None, [ptr, ptr, i64, i64, i64, i64, i64, f32, ptr, i32]),
        "int8_attention_context": (None, [ptr, ptr, i64, i64, i64, i64, i64, ptr, i32]),
        "lif_steps": (None, [ptr, i64, i64, f32, f32, ptr, i32]),
        "integer_fire": (None, [ptr, i64, f32, f32, f32, ptr]),
    }


def native_library() -> ctypes.CDLL | None:
    """The compiled kernels, or `None` where they cannot be built or ``SPIKING_LM_NATIVE=0`` (module docstring)."""
    if not _state["tried"]:
        _state["tried"] = True
        if os.environ.get("SPIKING_LM_NATIVE", "1") != "0":
            try:
                _state["library"] = _build()
            except (OSError, subprocess.CalledProcessError) as error:
                detail = getattr(error, "stderr", "") or error
                logger.warning("spiking_lm's native decoding kernels could not be built (%s); decoding uses torch "
                               "operations (the same results, slower)", str(detail).strip()[:300])  # fmt: skip
    return _state["library"]


def spike_counts(values: torch.Tensor, offset: float, unit: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(counts, selected)`` for fp32 spike values ``(R, in)`` (contiguous): int8 counts round((x − offset) / unit)
    and the int32 indices of the inputs some row selects; `None` if a value is not finite or its count does not fit
    an int8 (the caller's real-valued path then runs), or without the native library."""
    native = native_library()
    if native is None:
        return None
    _check(values, torch.float32, 2)
    rows, in_features = values.shape
    counts = torch.empty(rows, in_features, dtype=torch.int8)
    selected = torch.empty(in_features, dtype=torch.int32)
    found = native.spike_counts(values.data_ptr(), rows, in_features, offset, unit, int(offset != 0),
                                counts.data_ptr(), selected.data_ptr())  # fmt: skip
    return None if found < 0 else (counts, selected[:found])


def int8_rows_product(counts, selected, qweight, scale, shift=None, bias=None) -> torch.Tensor:
    """``((counts @ qweight) * scale + shift) + bias`` in fp32 ``(R, out)``, from int8 ``counts`` ``(R, in)``,
    ``selected`` (`spike_counts`) and int8 ``qweight`` ``(in, out)``, reading only the selected rows of
    ``qweight``; ``shift`` and ``bias`` may be `None`. On the CPU, the library built."""
    _check(counts, torch.int8, 2)
    _check(qweight, torch.int8, 2)
    _check(selected, torch.int32, 1)
    rows = counts.shape[0]
    out_features = qweight.shape[1]
    if qweight.shape[0] != counts.shape[1]:
        raise ValueError(f"counts {tuple(counts.shape)} do not match a weight of {tuple(qweight.shape)} (in, out)")
    result = torch.empty(rows, out_features)

    def address(vector):  # a per-output fp32 vector, or NULL
        if vector is None:
            return None
        if vector.dtype != torch.float32 or vector.shape != (out_features,):
            raise ValueError(f"expected an fp32 vector of {out_features}, got {vector.dtype} {tuple(vector.shape)}")
        return vector.data_ptr()

    # contiguous copies, if any, are held here until the call returns
    scale, shift, bias = (vector if vector is None else vector.contiguous() for vector in (scale, shift, bias))
    native_library().int8_rows_product(counts.data_ptr(), rows, counts.shape[1], selected.data_ptr(), selected.numel(),
                                       qweight.data_ptr(), out_features, address(scale), address(shift),
                                       address(bias), result.data_ptr(), torch.get_num_threads())  # fmt: skip
    return result


def int8_attention_scores(query_counts: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """``(query_counts @ keysᵀ) * scale`` in fp32 ``(G, Lq, Lk)`` from contiguous int8 ``query_counts``
    ``(G, Lq, d)`` and an int8 key cache ``(G, Lk, d)`` whose rows are contiguous (the groups may be further apart:
    a growing cache's view): exact int32 overlap counts, scaled once."""
    _check(query_counts, torch.int8, 3)
    groups, lq, d = query_counts.shape
    lk = keys.shape[1]
    stride = _group_stride(keys)
    scores = torch.empty(groups, lq, lk)
    native_library().int8_attention_scores(query_counts.data_ptr(), keys.data_ptr(), groups, lq, lk, d, stride,
                                           scale, scores.data_ptr(), torch.get_num_threads())  # fmt: skip
    return scores


def int8_attention_context(spikes: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``spikes @ values`` in fp32 ``(G, Lq, d)`` for contiguous 0/1 fp32 ``spikes`` ``(G, Lq, Lk)`` and an int8
    value cache ``(G, Lk, d)`` laid out as `int8_attention_scores`'s keys: the selected rows added in int32
    (exact)."""
    _check(spikes, torch.float32, 3)
    groups, lq, lk = spikes.shape
    d = values.shape[-1]
    stride = _group_stride(values)
    context = torch.empty(groups, lq, d)
    native_library().int8_attention_context(spikes.data_ptr(), values.data_ptr(), groups, lq, lk, d, stride,
                                            context.data_ptr(), torch.get_num_threads())  # fmt: skip
    return context


def lif_steps(x: torch.Tensor, beta: float, threshold: float) -> torch.Tensor | None:
    """The soft-reset LIF recurrence over the first dim of fp32 ``x`` ``(T, ...)``, without autograd: 0/1 spikes,
    contiguous, bit for bit those of the torch recurrence; `None` without the library."""
    steps = x.shape[0]
    return _fire("lif_steps", x, (steps, x.numel() // max(steps, 1), beta, threshold), (torch.get_num_threads(),))


def integer_fire(x: torch.Tensor, lower: float, upper: float, scale: float) -> torch.Tensor | None:
    """``clamp(round(x), lower, upper) * scale`` for fp32 ``x``, contiguous, bit for bit the torch operations;
    `None` without the library."""
    return _fire("integer_fire", x, (x.numel(), lower, upper, scale))


def _fire(kernel: str, x: torch.Tensor, arguments: tuple, trailing: tuple = ()) -> torch.Tensor | None:
    """``kernel(x, *arguments, spikes, *trailing)`` of an elementwise neuron kernel, its spikes contiguous in x's
    shape; `None` without the library."""
    native = native_library()
    if native is None:
        return None
    x = x.contiguous()
    _check(x, torch.float32, x.dim())
    spikes = torch.empty_like(x)
    getattr(native, kernel)(x.data_ptr(), *arguments, spikes.data_ptr(), *trailing)
    return spikes


def _group_stride(cache: torch.Tensor) -> int:
    """The distance between groups of a cache ``(G, L, d)`` whose rows are contiguous."""
    if cache.dtype != torch.int8 or cache.shape[1] > 1 and cache.stride(1) != cache.shape[2] or cache.stride(2) != 1:
        raise ValueError(f"expected an int8 cache (G, L, d) with contiguous rows, got {cache.dtype} "
                         f"strides {cache.stride()}")  # fmt: skip
    return cache.stride(0)


def _check(tensor: torch.Tensor, dtype: torch.dtype, dims: int) -> None:
    """The kernels read raw memory: a tensor of another dtype, layout or device is refused with a clear error."""
    if tensor.dtype != dtype or tensor.dim() != dims or not tensor.is_contiguous() or tensor.device.type != "cpu":
        raise ValueError(f"the native kernels expect a contiguous {dims}-d CPU {dtype} tensor, got a "
                         f"{tensor.dim()}-d {tensor.device.type} {tensor.dtype} one (contiguous: "
                         f"{tensor.is_contiguous()})")  # fmt: skip
