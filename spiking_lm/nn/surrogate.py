"""Surrogate gradients for the Heaviside spike function.

Forward is always Θ(x) = 1 if x ≥ 0 else 0. Backward replaces the Dirac delta by the derivative g'(x) of a
smooth primitive g. Each surrogate is a pair, following spikingjelly's layout: a lowercase
`torch.autograd.Function` (``atan.apply(x, alpha)``) and a CamelCase `nn.Module` (``ATan(alpha=2.0)``).
The derivative and primitive are also plain functions so that fused kernels can evaluate them and tests can
differentiate the primitive numerically.

This module imports only `torch` so that it can be copied beside a saved model's remote code.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "SURROGATES",
    "ATan",
    "Rectangle",
    "Sigmoid",
    "SurrogateFunction",
    "atan",
    "build_surrogate",
    "heaviside",
    "rectangle",
    "sigmoid",
    "surrogate_derivative",
]


def heaviside(x: torch.Tensor) -> torch.Tensor:
    """Θ(x): 1 where ``x >= 0``, else 0, in the dtype of ``x``."""
    return (x >= 0).to(x.dtype)


def atan_derivative(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """g'(x) = (α/2) / (1 + (π α x / 2)²)."""
    return (alpha / 2) / (1 + (math.pi / 2 * alpha * x) ** 2)


def atan_primitive(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """g(x) = arctan(π α x / 2) / π + 1/2."""
    return torch.atan(math.pi / 2 * alpha * x) / math.pi + 0.5


def sigmoid_derivative(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """g'(x) = α σ(αx) (1 − σ(αx))."""
    sig = torch.sigmoid(alpha * x)
    return alpha * sig * (1 - sig)


def sigmoid_primitive(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """g(x) = σ(αx)."""
    return torch.sigmoid(alpha * x)


def rectangle_derivative(x: torch.Tensor, width: float) -> torch.Tensor:
    """g'(x) = 1/a for |x| < a/2, else 0 (a = ``width``)."""
    return (x.abs() < width / 2).to(x.dtype) / width


def rectangle_primitive(x: torch.Tensor, width: float) -> torch.Tensor:
    """g(x) = clamp(x/a + 1/2, 0, 1)."""
    return torch.clamp(x / width + 0.5, 0.0, 1.0)


_DERIVATIVES = {"atan": atan_derivative, "sigmoid": sigmoid_derivative, "rectangle": rectangle_derivative}


def surrogate_derivative(name: str, x: torch.Tensor, param: float) -> torch.Tensor:
    """Evaluate the surrogate derivative of surrogate ``name`` with its parameter ``param`` at ``x``."""
    return _DERIVATIVES[name](x, param)


def _heaviside_function(name: str, derivative) -> type[torch.autograd.Function]:
    """An autograd Function: Θ forward, ``derivative(x, param)`` backward."""

    def forward(ctx, x: torch.Tensor, param: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.param = param
        return heaviside(x)

    def backward(ctx, grad_output: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_output * derivative(x, ctx.param), None

    namespace = {
        "forward": staticmethod(forward),
        "backward": staticmethod(backward),
        "derivative": staticmethod(derivative),
        "__doc__": f"Heaviside forward with the {name} surrogate gradient; ``{name}.apply(x, param)``.",
        "__module__": __name__,
    }
    return type(name, (torch.autograd.Function,), namespace)


atan = _heaviside_function("atan", atan_derivative)
sigmoid = _heaviside_function("sigmoid", sigmoid_derivative)
rectangle = _heaviside_function("rectangle", rectangle_derivative)


class SurrogateFunction(nn.Module):
    """Base class: ``forward(x)`` = Θ(x) with the surrogate gradient; ``derivative``/``primitive`` are exact.

    Attributes:
        name (`str`): registry name, used by fused kernels to evaluate the same derivative.
        param (`float`): the surrogate's single shape parameter (``alpha`` or ``width``).
    """

    name: str = ""
    param_name: str = "alpha"
    function: type[torch.autograd.Function] = atan
    _primitive = staticmethod(atan_primitive)

    def __init__(self, param: float):
        super().__init__()
        if not (isinstance(param, (int, float)) and math.isfinite(param) and param > 0):
            raise ValueError(f"surrogate '{self.name}': {self.param_name} must be a positive number, got {param!r}")
        self.param = float(param)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function.apply(x, self.param)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return self.function.derivative(x, self.param)

    def primitive(self, x: torch.Tensor) -> torch.Tensor:
        return self._primitive(x, self.param)

    def extra_repr(self) -> str:
        return f"{self.param_name}={self.param}"


class ATan(SurrogateFunction):
    """Arctangent surrogate, g'(x) = (α/2) / (1 + (π α x / 2)²). Default α = 2."""

    name = "atan"
    function = atan
    _primitive = staticmethod(atan_primitive)

    def __init__(self, alpha: float = 2.0):
        super().__init__(alpha)


class Sigmoid(SurrogateFunction):
    """Sigmoid surrogate, g'(x) = α σ(αx)(1 − σ(αx)). Default α = 4."""

    name = "sigmoid"
    function = sigmoid
    _primitive = staticmethod(sigmoid_primitive)

    def __init__(self, alpha: float = 4.0):
        super().__init__(alpha)


class Rectangle(SurrogateFunction):
    """Rectangular surrogate, g'(x) = 1/a on |x| < a/2. Default width a = 1."""

    name = "rectangle"
    param_name = "width"
    function = rectangle
    _primitive = staticmethod(rectangle_primitive)

    def __init__(self, width: float = 1.0):
        super().__init__(width)


SURROGATES: dict[str, type[SurrogateFunction]] = {"atan": ATan, "sigmoid": Sigmoid, "rectangle": Rectangle}


def build_surrogate(name: str | SurrogateFunction = "atan", **kwargs) -> SurrogateFunction:
    """Build a surrogate by registry name (``atan``, ``sigmoid``, ``rectangle``); a module passes through.

    Raises:
        ValueError: unknown name, unknown keyword, or a non-positive parameter.
    """
    if isinstance(name, SurrogateFunction):
        if kwargs:
            raise ValueError(f"cannot apply {sorted(kwargs)} to an already-built surrogate {name!r}")
        return name
    if name not in SURROGATES:
        raise ValueError(f"unknown surrogate {name!r}; valid names: {', '.join(sorted(SURROGATES))}")
    cls = SURROGATES[name]
    unknown = set(kwargs) - {cls.param_name}
    if unknown:
        raise ValueError(
            f"surrogate {name!r} got unknown argument(s) {sorted(unknown)}; it accepts '{cls.param_name}'"
        )
    return cls(**kwargs)
