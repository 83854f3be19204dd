"""Compile dispatch: run a kernel eagerly or compiled by `torch.compile`, by backend name.

Backends:
    ``"torch"``: eager PyTorch, always available.
    ``"inductor"``: `torch.compile`; errors are raised, never hidden.
    ``"auto"`` (default): inductor for tensors of at least `AUTO_COMPILE_MIN_NUMEL` elements, eager below (tiny
    tensors gain nothing from a compiled kernel and would pay its guard overhead). If compiling a kernel
    fails, ``"auto"`` logs a warning and runs that kernel eagerly for the rest of the process; if it only
    reached the recompile limit (`KERNEL_RECOMPILE_LIMIT` variants per kernel, raised from dynamo's 8: a process
    that builds many models), the variants compiled so far keep running compiled and only new ones run eagerly.

Compiled kernels receive their scalar parameters as 0-d tensors, so one graph per number of time steps
serves every neuron configuration.

This module imports only `torch` so that it can travel with a saved model's code.
"""

from __future__ import annotations

import logging
import os
import types

import torch

__all__ = ["AUTO_COMPILE_MIN_NUMEL", "BACKENDS", "check_backend", "run_differentiable", "run_kernel"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "inductor")
AUTO_COMPILE_MIN_NUMEL = int(os.environ.get("SPIKING_LM_COMPILE_MIN_NUMEL", 1 << 17))

_compiled_kernels: dict = {}
_compiled_inference_kernels: dict = {}
_broken_kernels: set = set()
_limited_kernels: set = set()
KERNEL_RECOMPILE_LIMIT = 64  # compiled variants per kernel before new ones run eagerly (see `_call_compiled`)
RECOMPILE_LIMIT_ERRORS = ("FailOnRecompileLimitHit", "FailOnCacheLimitHit")  # torch ≥ 2.7 / older names


def check_backend(backend: str) -> str:
    """Return ``backend`` if valid, else raise `ValueError` listing the valid backends."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    return backend


def _compiled(kernel, training: bool = True):
    """The compiled ``kernel``. Calls that train nothing (autograd off, an input x that needs no gradient) go to a twin
    with its own code object, hence its own dynamo cache and automatic-dynamic state: decoding with the cache (one
    token at a time, growing lengths) turned batch and length dynamic in every kernel it called, and kernels then
    compiled for training in the same process came out dynamic too (WE-Spikingformer fell from 0.95 to 0.73× in
    the benchmark table after the other models had generated)."""
    table = _compiled_kernels if training else _compiled_inference_kernels
    if kernel not in table:
        options = getattr(kernel, "inductor_options", None)  # inductor config a kernel asks for (see kernels.py)
        target = kernel if training else _twin(kernel)
        table[kernel] = torch.compile(target, dynamic=None, fullgraph=True, options=options)
    return table[kernel]


def _twin(function):
    """``function`` with a copy of its code object (same behaviour, separate dynamo state)."""
    code = function.__code__.replace(co_name=f"{function.__code__.co_name}_inference")
    twin = types.FunctionType(code, function.__globals__, code.co_name, function.__defaults__, function.__closure__)
    twin.__kwdefaults__ = function.__kwdefaults__
    twin.__dict__.update(function.__dict__)
    return twin


def as_graph_inputs(args, like: torch.Tensor) -> tuple:
    """Numbers become 0-d tensors so that one compiled graph serves every neuron configuration (dynamo would
    otherwise specialize on each value and recompile); tensors are detached so grad-mode never forks a graph."""
    converted = []
    for arg in args:
        if isinstance(arg, (int, float)) and not isinstance(arg, bool):
            arg = torch.tensor(arg, dtype=like.dtype, device=like.device)
        elif torch.is_tensor(arg):
            arg = arg.detach()
        converted.append(arg)
    return tuple(converted)


def _hit_recompile_limit(error: Exception) -> bool:
    return type(error).__name__ in RECOMPILE_LIMIT_ERRORS or "recompile limit" in str(error)


def _call_compiled(function, args: tuple, training: bool = True):
    """The compiled ``function(*args)``, run with dynamo's `recompile_limit` raised to `KERNEL_RECOMPILE_LIMIT`
    for the call: dynamo allows 8 variants per function by default, and one of these kernels meets more in a
    process that trains, evaluates and generates (dtypes, head layouts, T = 1 and T > 1, grad modes, several
    models). Set and restored around the call (a few µs), so dynamo's setting for other code is unchanged."""
    config = torch._dynamo.config
    limit = config.recompile_limit
    if limit >= KERNEL_RECOMPILE_LIMIT:
        return _compiled(function, training)(*args)
    config.recompile_limit = KERNEL_RECOMPILE_LIMIT
    try:
        return _compiled(function, training)(*args)
    finally:
        config.recompile_limit = limit


def _run(function, backend: str, x: torch.Tensor, args: tuple, graph_inputs):
    """The backend rule of the module docstring; ``graph_inputs`` prepares the arguments of a compiled call."""
    if backend == "torch" or torch.compiler.is_compiling():
        return function(x, *args)
    if backend == "auto" and (function in _broken_kernels or x.numel() < AUTO_COMPILE_MIN_NUMEL):
        return function(x, *args)
    training = torch.is_grad_enabled() or x.requires_grad  # x: an activation (parameters always need gradients)
    compiled_args = graph_inputs((x, *args), x)
    if backend == "inductor":
        return _call_compiled(function, compiled_args, training)
    try:
        return _call_compiled(function, compiled_args, training)
    except Exception as error:  # noqa: BLE001 - "auto" promises an eager fallback; the reason is logged
        if _hit_recompile_limit(error):  # the compiled variants stay; new ones run eagerly
            if function not in _limited_kernels:
                _limited_kernels.add(function)
                logger.warning(
                    "%s reached torch._dynamo's recompile limit (many shapes or configurations in one process): "
                    "the variants compiled so far stay compiled, new ones run eagerly",
                    function.__name__,
                )
            return function(x, *args)
        _broken_kernels.add(function)
        logger.warning("torch.compile of %s failed (%s); it runs eagerly from now on", function.__name__, error)
        return function(x, *args)


def run_kernel(kernel, backend: str, x: torch.Tensor, *args):
    """Run the no-grad kernel ``kernel(x, *args)`` on the chosen backend."""
    return _run(kernel, backend, x, args, as_graph_inputs)


def run_differentiable(function, backend: str, x: torch.Tensor, *args):
    """Like `run_kernel`, for a function autograd differentiates (compiled forward and backward via AOTAutograd);
    its tensors keep their autograd history."""
    return _run(function, backend, x, args, lambda arguments, _: arguments)
