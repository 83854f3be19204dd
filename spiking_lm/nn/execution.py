"""`SpikeExecution`: how a spiking model runs, in one object the model owns and passes down to its layers.

It holds the two run-time choices a user makes — the inference backend (``"dense"`` GEMMs or ``"event"``-driven
products, `spiking_lm.nn.event`) and the dtype of training GEMMs (``"float32"`` or ``"bfloat16"``) — and the
per-model memory that goes with them: the weight copies the event backend derives from each Linear (never saved,
rebuilt when a weight changes) and the attention mask built once per forward pass for every layer.

Layers receive it as the ``execution`` argument of their ``forward``; `None` means `DEFAULT_EXECUTION` (dense,
fp32), so a module used on its own needs no setup.

This module imports only `torch` so that it can travel with a saved model's code.
"""

from __future__ import annotations

import weakref

import torch

__all__ = [
    "DEFAULT_EXECUTION",
    "INFERENCE_BACKENDS",
    "MATMUL_DTYPES",
    "SpikeExecution",
    "WatchedSettings",
    "execution_or_default",
    "settings_version",
]

INFERENCE_BACKENDS = ("dense", "event")
MATMUL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""Names a config may give for the dtype of training matrix products (``train_matmul_dtype``)."""


class SpikeExecution:
    """Inference backend and training GEMM dtype of one model, with the caches they need.

    Args:
        inference_backend (`str`, *optional*, defaults to `"dense"`): one of `INFERENCE_BACKENDS`.
        train_matmul_dtype (`str`, *optional*, defaults to `"float32"`): a key of `MATMUL_DTYPES`.
    """

    def __init__(self, inference_backend: str = "dense", train_matmul_dtype: str = "float32"):
        self._reset_caches()
        self.inference_backend = inference_backend
        self.train_matmul_dtype = train_matmul_dtype

    def _reset_caches(self) -> None:
        self._derived = weakref.WeakKeyDictionary()  # first Linear of a group -> {kind: (tensors, versions, value)}
        self._fingerprints = weakref.WeakKeyDictionary()  # first Linear of a group -> (pass checked, fingerprint)
        self._pass = 0
        self._allowed = (None, None, None)  # (arguments, the mask object, the result) of the last call
        self._all_allowed = (None, None, False)  # (the allowed-keys tensor, its version, whether all are True)

    def new_sequence(self) -> None:
        """Called by a model at each forward pass that starts a sequence (no K/V cache yet): the event
        backend's weight copies are checked against the weights' contents once in it, which catches edits made
        through ``.data`` (invisible to the version counters). Decoding steps reuse that check."""
        self._pass += 1

    @property
    def inference_backend(self) -> str:
        return self._inference_backend

    @inference_backend.setter
    def inference_backend(self, backend: str) -> None:
        if backend not in INFERENCE_BACKENDS:
            raise ValueError(f"inference backend must be one of {INFERENCE_BACKENDS}, got {backend!r}")
        self._inference_backend = backend
        if backend == "dense":
            self._derived.clear()  # the event backend's weight copies are freed

    @property
    def train_matmul_dtype(self) -> str:
        return self._train_matmul_dtype

    @train_matmul_dtype.setter
    def train_matmul_dtype(self, name: str) -> None:
        if name not in MATMUL_DTYPES:
            raise ValueError(f"train_matmul_dtype must be one of {tuple(MATMUL_DTYPES)}, got {name!r}")
        self._train_matmul_dtype = name

    @property
    def matmul_dtype(self) -> torch.dtype:
        """The dtype spike-fed GEMMs and attention products train in."""
        return MATMUL_DTYPES[self._train_matmul_dtype]

    def uses_event_path(self, linear) -> bool:
        """Whether this call of ``linear`` takes the event path: asked for, in eval mode, without autograd, on a
        plain `nn.Linear` (a wrapped one, e.g. with a LoRA adapter, runs its own forward on the dense path)."""
        if self._inference_backend != "event" or linear.training or torch.is_grad_enabled():
            return False
        if getattr(linear, "int8_weights", False):  # a W8 Linear (`Int8Linear`): its own exact int8 path
            return True
        return type(linear).forward is torch.nn.Linear.forward and "forward" not in vars(linear)

    def derived(self, linears, kind: str, build):
        """``build(weight, bias)`` of the Linears' concatenated ``[W₁; W₂; …]`` and ``[b₁; b₂; …]`` (`None` if none
        has a bias; zeros stand in for a missing one), kept per ``kind`` until a weight or bias changes (in place
        or replaced): the tensors it was built from are held, so identity plus version catches both."""
        tensors = [lin.weight for lin in linears] + [lin.bias for lin in linears]
        versions = [None if tensor is None else tensor._version for tensor in tensors]
        caches = self._derived.setdefault(linears[0], {})
        if self._contents_changed(linears[0], tensors):
            caches.clear()
        cached = caches.get(kind)
        if cached is None or cached[1] != versions or any(a is not b for a, b in zip(cached[0], tensors, strict=True)):
            weight = torch.cat([lin.weight.detach() for lin in linears])
            bias = None
            if any(lin.bias is not None for lin in linears):
                bias = torch.cat([lin.weight.new_zeros(lin.out_features) if lin.bias is None else lin.bias.detach()
                                  for lin in linears])  # fmt: skip
            cached = (tensors, versions, build(weight, bias))
            caches[kind] = cached
        return cached[2]

    def _contents_changed(self, first, tensors) -> bool:
        """Whether the weights' contents changed since the copies were built (checked once per sequence)."""
        checked = self._fingerprints.get(first)
        if checked is not None and checked[0] == self._pass:
            return False
        fingerprint = contents_fingerprint(tensors)
        self._fingerprints[first] = (self._pass, fingerprint)
        return checked is not None and not all(torch.equal(a, b) for a, b in zip(checked[1], fingerprint, strict=True))

    def derived_bytes(self) -> int:
        """Bytes held by the event backend's weight copies."""
        total = 0
        for caches in self._derived.values():
            for _, _, value in caches.values():
                parts = value if isinstance(value, tuple) else (value,)
                total += sum(t.numel() * t.element_size() for t in parts if torch.is_tensor(t))
        return total

    def allowed_keys(self, build, attention_mask, *arguments) -> torch.Tensor:
        """``build(attention_mask, *arguments)``, computed once per forward pass: every layer asks with the same
        mask object and lengths (the mask is remembered by identity and version, so a new or modified mask always
        rebuilds)."""
        if torch.compiler.is_compiling():  # traced: symbolic lengths must not meet remembered concrete ones
            return build(attention_mask, *arguments)
        version = None if attention_mask is None else attention_mask._version
        key = (*arguments, version)
        if self._allowed[0] == key and self._allowed[1] is attention_mask:
            return self._allowed[2]
        allowed = build(attention_mask, *arguments)
        self._allowed = (key, attention_mask, allowed)
        return allowed

    def allows_all(self, allowed: torch.Tensor) -> bool:
        """Whether the boolean ``allowed`` (from `allowed_keys`) is all True, worked out once per tensor: every
        layer of a forward pass gets the same one, and decoding without padding may then skip its masking."""
        if torch.compiler.is_compiling():  # traced: no branch on the data
            return False
        if self._all_allowed[0] is not allowed or self._all_allowed[1] != allowed._version:
            self._all_allowed = (allowed, allowed._version, bool(allowed.all()))
        return self._all_allowed[2]

    def __getstate__(self):  # caches are never copied or pickled with a model
        return {"inference_backend": self._inference_backend, "train_matmul_dtype": self._train_matmul_dtype}

    def __setstate__(self, state):
        self._inference_backend = state["inference_backend"]
        self._train_matmul_dtype = state["train_matmul_dtype"]
        self._reset_caches()

    def __repr__(self):
        backend, dtype = self._inference_backend, self._train_matmul_dtype
        return f"SpikeExecution(inference_backend={backend!r}, train_matmul_dtype={dtype!r})"


def contents_fingerprint(tensors) -> list[torch.Tensor]:
    """Per tensor, its row sums and column sums: any edit that changes a product beyond rounding changes them
    (one changed element moves its row and its column; elements moved within a row move their columns).
    Two vectorized reductions, about a tenth of reading the weights through a GEMM."""
    prints = []
    for tensor in tensors:
        if tensor is None:
            continue
        values = tensor.detach()
        values = values.reshape(values.shape[0], -1) if values.dim() > 1 else values.view(1, -1)
        prints += [values.sum(1), values.sum(0)]
    return prints


DEFAULT_EXECUTION = SpikeExecution()

_SETTINGS_VERSION = [0]


class WatchedSettings:
    """Mixin of the modules whose settings a decoding step's plan reads (`spiking_lm.nn.decode_step`): neurons,
    W8 Linears, attention. Every attribute assigned on one (a flag, a neuron constant, a spike mode, `train`/`eval`,
    a replaced buffer or submodule) advances `settings_version`, after which every such plan is made again."""

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        _SETTINGS_VERSION[0] += 1


def settings_version() -> int:
    """How many attributes `WatchedSettings` modules have been assigned so far (in this process)."""
    return _SETTINGS_VERSION[0]


def execution_or_default(execution: SpikeExecution | None) -> SpikeExecution:
    return DEFAULT_EXECUTION if execution is None else execution
