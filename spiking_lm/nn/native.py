"""Native CPU kernels for W8 decoding, built once per machine with the C compiler and called through `ctypes`.

Decoding a spiking model multiplies a few rows of spike counts by int8 weights. Done with torch operations that is
a search for the spiking inputs, a copy of their weight rows (`index_select`) and an int8 GEMM on the copy — three
passes over the selected rows and ~15 small operations per Linear. `spike_products` does it in one call: the counts
and the inputs that spiked in one pass, then every selected int8 row of every matrix of a `ProductPlan` read once,
its count × weight products added into int32 sums (exact), and the fp32 scale, offset constant and bias applied per
output — the same fp32 operations in the same order as the torch path, so the outputs are bit for bit the same
(the source is compiled with ``-ffp-contract=off``: no fused multiply-add).

The shared library is compiled on first use with ``$CC`` (else the first of `COMPILERS` found) and OpenMP into
``$SPIKING_LM_CACHE/native`` (default ``~/.cache/spiking_lm/native``), named by a hash of the source, the flags and
the CPU, and reused after. Where no compiler works, or ``SPIKING_LM_NATIVE=0``, `native_library` returns `None`
(with one logged warning if the build failed) and the callers take their torch path: the same results, slower.

Decoding SFSA also multiplies the event backend's int8 K/V cache in place (`int8_attention_scores`,
`int8_attention_context`) instead of widening the whole cache to fp32 at every step, and decoding-size neurons fire
in one call each: LIF recurrences (`lif_steps`) instead of four torch operations per time step, the integer
neurons at T = 1 (`integer_fire`) instead of three. The int8 LM head's product for a few rows (`int8_matrix_rows`)
is one pass over its table with the CPU's int8 dot-product instructions (AVX-512 VNNI), where the GEMM's fixed
costs and layout made it slower.

This module imports only `torch` so that it can travel with a saved model's code.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile

import torch

from .native_source import SOURCE

__all__ = ["FIRES", "MATRIX_MAX_ROWS", "NATIVE_MAX_ROWS", "ProductPlan", "counts_product", "fire_table",
           "int8_attention_context", "int8_attention_scores", "int8_matrix_rows", "integer_fire", "lif_steps",
           "native_library", "run_counts_product", "run_sfsa_decode", "sfsa_decode", "spike_products"]  # fmt: skip

logger = logging.getLogger(__name__)

NATIVE_MAX_ROWS = 8
"""Up to this many rows of counts `spike_products` beats copying the selected rows for an int8 GEMM (measured
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
        "spike_products": (i64, [ptr, i64, i64, i32, f32, f32, f32, i64, f32, f32, i32, ptr, i64, ptr, i32]),
        "int8_attention_scores": (None, [ptr, ptr, i64, i64, i64, i64, i64, f32, ptr, i32]),
        "int8_attention_context": (None, [ptr, ptr, i64, i64, i64, i64, i64, ptr, i32]),
        "sfsa_decode": (i64, [ptr, f32, ptr, ptr, *[i64] * 9, *[f32] * 6, ptr, ptr, f32, f32, ptr, ptr, ptr, i32]),
        "counts_product": (i64, [ptr, i64, i64, f32, ptr, i64, ptr, ptr, ptr, i32]),
        "int8_matrix_rows": (i64, [ptr, i64, i64, ptr, i64, ptr, ptr, ptr, i32]),
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


class ProductPlan:
    """What `spike_products` needs of int8 matrices fed the same counts, checked and laid out once: their
    ``qweights`` ``(in, out_m)`` and per-output fp32 ``scales``, ``shifts`` and ``biases`` (`None` for none), the
    addresses in one int64 table for the C function; the tensors are held while the plan lives."""

    def __init__(self, qweights, scales, shifts, biases):
        in_features = qweights[0].shape[0] if qweights[0].dim() == 2 else -1
        entries, self._held = [], []
        for qweight, *vectors in zip(qweights, scales, shifts, biases, strict=True):
            _check(qweight, torch.int8, 2)
            if qweight.shape[0] != in_features:
                raise ValueError(f"int8 weights of {tuple(qweight.shape)} (in, out) do not share {in_features} inputs")
            out_features = qweight.shape[1]
            addresses = []
            for vector in vectors:  # a per-output fp32 vector, or NULL
                vector = _vector(vector, out_features)
                self._held.append(vector)
                addresses.append(0 if vector is None else vector.data_ptr())
            self._held.append(qweight)
            entries += [qweight.data_ptr(), out_features, *addresses]
        self.in_features = in_features
        self.outs = [qweight.shape[1] for qweight in qweights]
        self.total = sum(self.outs)
        self.table = torch.tensor(entries, dtype=torch.int64)

    def run(self, x: torch.Tensor, fire: int, parameters, steps: int, unit: float, offset: float = 0.0):
        """`spike_products` for arguments it would accept, unchecked (decoding checks them once per block): ``x``
        contiguous fp32 on the CPU ``(R, in)``, ``fire`` a `FIRES` code, ``steps`` dividing R."""
        rows = x.shape[0]
        result = torch.empty(rows * self.total)
        found = native_library().spike_products(x.data_ptr(), rows, self.in_features, fire, *parameters, steps, offset,
                                                unit, int(offset != 0), self.table.data_ptr(), len(self.outs),
                                                result.data_ptr(), torch.get_num_threads())  # fmt: skip
        return None if found < 0 else (_pieces(result, rows, self), found)


FIRES = {None: 0, "integer": 1, "lif": 2}
"""How `spike_products` makes spikes of its input: none (they are spike values), `integer_fire`, `lif_steps`."""


def spike_products(x: torch.Tensor, plan: ProductPlan, offset: float, unit: float, fire=None, parameters=(0, 0, 0),
                   steps: int = 1) -> tuple[list[torch.Tensor], int] | None:  # fmt: skip
    """``((counts @ qweight) * scale + shift) + bias`` in fp32 ``(R, out)`` for every matrix of ``plan``, from the
    spike counts round((x − offset) / unit) of fp32 ``x`` ``(R, in)`` (contiguous), reading only the weight rows some
    row's counts select, each of them once (the outputs contiguous pieces of one buffer), and how many inputs were
    selected. ``x`` holds spike values, or with ``fire`` (`FIRES`) the membrane a neuron fires on first
    (``parameters``: lower, upper, scale of `integer_fire`, or beta, threshold of `lif_steps` over ``steps`` blocks
    of rows). `None` where a value is not finite or its count does not fit an int8 (the caller's torch path then
    decides). On the CPU, the library built."""
    _check(x, torch.float32, 2)
    rows = x.shape[0]
    if x.shape[1] != plan.in_features:
        raise ValueError(f"inputs {tuple(x.shape)} do not match weights of {plan.in_features} inputs")
    if fire not in FIRES or rows % max(steps, 1):
        raise ValueError(f"fire must be one of {list(FIRES)} on rows that {steps} time steps divide, got {fire!r} "
                         f"on {rows} rows")  # fmt: skip
    return plan.run(x, FIRES[fire], parameters, steps, unit, offset)


def _pieces(result: torch.Tensor, rows: int, plan: ProductPlan) -> list[torch.Tensor]:
    """The matrices' outputs ``(rows, out_m)``, side by side in ``result``."""
    if len(plan.outs) == 1:
        return [result.view(rows, plan.total)]
    if len(set(plan.outs)) == 1:  # Q, K, V: one view
        return list(result.view(len(plan.outs), rows, plan.outs[0]).unbind(0))
    pieces = result.split([rows * out for out in plan.outs])
    return [piece.view(rows, out) for piece, out in zip(pieces, plan.outs, strict=True)]


def counts_product(
    x: torch.Tensor, unit: float, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor | None:
    """``F.linear(x, qweightᵀ) * scale + bias`` in fp32 ``(R, out)``, bit for bit, for contiguous fp32 ``x``
    ``(R, in)`` whose values are integer counts times the power of two ``unit`` (SFSA's context), int8 ``qweight``
    ``(in, out)`` and fp32 ``scale``/``bias`` ``(out,)``: exact integer sums of counts × int8 weights, the int8
    rows of the counted inputs read once each. `None` where a value is not such a count or a row's counts could
    make an fp32 partial sum inexact (Σ|k|·127 ≥ 2²⁴: the caller's F.linear then decides)."""
    _check(x, torch.float32, 2)
    _check(qweight, torch.int8, 2)
    if x.shape[1] != qweight.shape[0] or math.frexp(unit)[0] != 0.5:
        raise ValueError(f"counts_product takes inputs (R, {qweight.shape[0]}) in a power-of-two unit, got "
                         f"{tuple(x.shape)} in {unit!r}")  # fmt: skip
    out = qweight.shape[1]
    return run_counts_product(x, unit, qweight, *(_vector(vector, out) for vector in (scale, bias)))


def run_counts_product(x: torch.Tensor, unit: float, qweight: torch.Tensor, scale: torch.Tensor, bias=None):
    """`counts_product` for arguments it would accept, unchecked (decoding checks them once per block)."""
    rows, out = x.shape[0], qweight.shape[1]
    result = torch.empty(rows, out)
    status = native_library().counts_product(x.data_ptr(), rows, x.shape[1], unit, qweight.data_ptr(), out,
                                             scale.data_ptr(), None if bias is None else bias.data_ptr(),
                                             result.data_ptr(), torch.get_num_threads())  # fmt: skip
    return None if status < 0 else result


MATRIX_MAX_ROWS = 4
"""Up to this many rows `int8_matrix_rows` beats `torch._int_mm` (int8 LM head, 50272 × 768: 0.8 vs 1.2 ms a row,
2.3 vs 2.9 ms for four; at eight no faster, in isolation or decoding at batch 8: docs/benchmarks.md)."""


def int8_matrix_rows(
    x: torch.Tensor, qweight: torch.Tensor, row_scale: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor | None:
    """``torch._int_mm(x, qweightᵀ).float() * row_scale * scale`` in fp32 ``(R, out)``, bit for bit, for int8 ``x``
    ``(R, in)`` and ``qweight`` ``(out, in)`` and fp32 ``row_scale`` ``(R, 1)`` and ``scale`` ``(out,)`` (the int8
    LM head): exact int32 sums, each weight row read once for all the rows. `None` where it is not faster than the
    GEMM (more than `MATRIX_MAX_ROWS` rows, a library built without int8 dot-product instructions: AVX-512 VNNI)
    or where the kernel does not read the tensors as they are (off the CPU, a strided ``qweight``, scales not fp32)."""
    library = native_library()
    on_cpu = x.device.type == qweight.device.type == scale.device.type == "cpu"
    readable = on_cpu and qweight.is_contiguous() and scale.dtype == torch.float32
    if library is None or x.shape[0] > MATRIX_MAX_ROWS or not readable:
        return None
    _check(x, torch.int8, 2)
    _check(qweight, torch.int8, 2)
    rows, out = x.shape[0], qweight.shape[0]
    if x.shape[1] != qweight.shape[1] or row_scale.shape != (rows, 1):
        shapes = ", ".join(str(tuple(t.shape)) for t in (x, qweight, row_scale))
        raise ValueError(f"int8_matrix_rows takes x (R, in), qweight (out, in) and row_scale (R, 1), got {shapes}")
    row_scale, scale = _vector(row_scale.view(rows), rows), _vector(scale, out)
    result = torch.empty(rows, out)
    status = library.int8_matrix_rows(x.data_ptr(), rows, x.shape[1], qweight.data_ptr(), out, row_scale.data_ptr(),
                                      scale.data_ptr(), result.data_ptr(), torch.get_num_threads())  # fmt: skip
    return None if status < 0 else result


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


def fire_table(fire) -> torch.Tensor:
    """`sfsa_decode`'s ``fire`` as the table its C function reads: three ``(fire, parameters)`` of
    `spike_products`, integer or LIF."""
    if len(fire) != 3 or any(kind not in ("integer", "lif") for kind, _ in fire):
        raise ValueError(f"sfsa_decode fires Q, K and V with integer or LIF neurons, got {fire!r}")
    return torch.tensor([[float(FIRES[kind]), *parameters] for kind, parameters in fire], dtype=torch.float32)


def sfsa_decode(query, unit, keys, values, qk_scale, score_scale, beta, threshold, root, value_unit, appended=None,
                fire=None):  # fmt: skip
    """Decoding SFSA in one call (the C source says how): fp32 query spikes ``(T, B, H, Lq, d)`` of ``unit``
    (contiguous), an int8 K/V cache ``(B·T·H, Lk, d)`` laid out as `int8_attention_scores`'s keys (or keys of
    0/1 spikes as `pack_bits` words, int64 ``(B·T·H, Lk, ⌈d/64⌉)``, for 0/1 queries: overlaps by AND and
    popcount), the attention LIF's ``beta`` and ``threshold`` (soft reset). Returns ``(attention spikes
    (T, B, H, Lq, Lk), context (T, B, Lq, H·d))`` — the fp32 operations of the composition, in its order — or
    `None` where a value is not an int8 count, or not 0/1 against keys as bits (the caller's composition then
    runs; nothing was written). ``appended``: ``(K, V, K unit, V unit)``,
    one new position's fp32 spike values ``(T, B, H, 1, d)`` (contiguous), whose counts are first written into the
    cache's last row (the caller's buffers: ``keys`` and ``values`` include it). ``fire``: the query and the
    appended K and V are membranes, which neurons fire on first: three ``(fire, parameters)`` of `spike_products`
    (``"integer"`` or ``"lif"``) for Q, K and V, or their `fire_table`, in one call with the rest."""
    _check(query, torch.float32, 5)
    steps, batch, heads, lq, d = query.shape
    words = -(-d // 64) if keys.dtype == torch.int64 else 0  # keys as bits
    if keys.shape[:2] != values.shape[:2] or keys.shape[0] != steps * batch * heads or values.shape[2] != d \
            or keys.shape[2] != (words or d):  # fmt: skip
        raise ValueError(f"a K/V cache of {tuple(keys.shape)} and {tuple(values.shape)} does not match queries "
                         f"of {tuple(query.shape)} (T, B, H, Lq, d)")  # fmt: skip
    if appended is not None:
        for new in appended[:2]:
            _check(new, torch.float32, 5)
            if new.shape != (steps, batch, heads, 1, d) or lq != 1:
                raise ValueError(f"an appended position of {tuple(new.shape)} does not match queries of "
                                 f"{tuple(query.shape)}")  # fmt: skip
    how = None
    if fire is not None:
        if appended is None:
            raise ValueError("firing in sfsa_decode needs an appended position")
        how = fire if torch.is_tensor(fire) else fire_table(fire)
        _check(how, torch.float32, 2)
    _group_stride(keys, torch.int64 if words else torch.int8), _group_stride(values)  # rows contiguous, or raise
    scalars = (unit, qk_scale, score_scale, beta, threshold, root, value_unit)
    return run_sfsa_decode(query, keys, values, scalars, appended or (None, None, 1.0, 1.0), how)


def run_sfsa_decode(query, keys, values, scalars, appended, how=None):
    """`sfsa_decode` for arguments it would accept, unchecked (decoding checks them once per block): ``scalars``
    ``(unit, qk_scale, score_scale, beta, threshold, root, value_unit)``, ``appended`` ``(K, V, K unit, V unit)``
    or ``(None, None, 1, 1)``, ``how`` a `fire_table` or `None`."""
    steps, batch, heads, lq, d = query.shape
    unit, *constants = scalars
    new_key, new_value, key_unit, value_unit = appended
    weights = torch.empty(steps, batch, heads, lq, keys.shape[1])
    context = torch.empty(steps, batch, lq, heads * d)
    status = native_library().sfsa_decode(
        query.data_ptr(), unit, keys.data_ptr(), values.data_ptr(), steps, batch, heads, lq, keys.shape[1], d,
        -(-d // 64) if keys.dtype == torch.int64 else 0, keys.stride(0), values.stride(0), *constants,
        None if new_key is None else new_key.data_ptr(), None if new_value is None else new_value.data_ptr(),
        key_unit, value_unit, None if how is None else how.data_ptr(), weights.data_ptr(), context.data_ptr(),
        torch.get_num_threads(),
    )  # fmt: skip
    return None if status < 0 else (weights, context)


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


def _vector(vector: torch.Tensor | None, size: int) -> torch.Tensor | None:
    """A per-output fp32 vector of ``size`` as the kernels read it (contiguous), or `None` (NULL); else a clear
    error."""
    if vector is not None and (vector.dtype != torch.float32 or vector.shape != (size,)):
        raise ValueError(f"expected an fp32 vector of {size}, got {vector.dtype} {tuple(vector.shape)}")
    return None if vector is None else vector.contiguous()


def _group_stride(cache: torch.Tensor, dtype: torch.dtype = torch.int8) -> int:
    """The distance between groups of a cache ``(G, L, d)`` of ``dtype`` whose rows are contiguous."""
    if cache.dtype != dtype or cache.shape[1] > 1 and cache.stride(1) != cache.shape[2] or cache.stride(2) != 1:
        kind = str(dtype).removeprefix("torch.")
        raise ValueError(f"expected an {kind} cache (G, L, d) with contiguous rows, got {cache.dtype} "
                         f"strides {cache.stride()}")  # fmt: skip
    return cache.stride(0)


def _check(tensor: torch.Tensor, dtype: torch.dtype, dims: int) -> None:
    """The kernels read raw memory: a tensor of another dtype, layout or device is refused with a clear error."""
    if tensor.dtype != dtype or tensor.dim() != dims or not tensor.is_contiguous() or tensor.device.type != "cpu":
        raise ValueError(f"the native kernels expect a contiguous {dims}-d CPU {dtype} tensor, got a "
                         f"{tensor.dim()}-d {tensor.device.type} {tensor.dtype} one (contiguous: "
                         f"{tensor.is_contiguous()})")  # fmt: skip
