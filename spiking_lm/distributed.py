"""Distributed back ends: what a run needs so that DeepSpeed works on a machine without CUDA.

`accelerate launch` with a DeepSpeed config (see ``recipes/accelerate/``) or a ``deepspeed:`` key in a
recipe's training section both reach `configure_backend`, which makes the Trainer's accelerator start DeepSpeed
over gloo when there is no GPU (it would otherwise ask for NCCL), so users never apply these workarounds by hand.
"""

from __future__ import annotations

import contextlib
import copy
import os
from importlib import resources
from pathlib import Path

import torch
from torch import nn


def deepspeed_requested(training: dict) -> bool:
    """Whether this run trains under DeepSpeed: a ``deepspeed`` training key, or `accelerate launch` with a
    DeepSpeed config (which exports ``ACCELERATE_USE_DEEPSPEED=true``)."""
    return bool(training.get("deepspeed")) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


def configure_backend(training: dict) -> dict:
    """Training keys for this process: unchanged without DeepSpeed, else with the DeepSpeed config file and,
    when CUDA is absent, a gloo process group that the Trainer is told to reuse.

    Call it before the `TrainingArguments` are built (they read the DeepSpeed config when created).
    """
    if not deepspeed_requested(training):
        if launched_world_size() > 1 and not torch.cuda.is_available() and "use_cpu" not in training:
            # `accelerate launch` / torchrun started several CPU processes: the Trainer joins them over gloo
            # only with use_cpu (without it each process would train its own copy)
            training = {**training, "use_cpu": True}
        return training
    training = dict(training)
    config_file = training.get("deepspeed") or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if not config_file:
        raise ValueError(
            "DeepSpeed was requested but no config was given: set training.deepspeed to a DeepSpeed JSON "
            "(e.g. recipes/accelerate/zero2.json) or launch with recipes/accelerate/deepspeed_zero2.yaml"
        )
    if isinstance(config_file, str) and not os.path.isfile(config_file):
        config_file = _shipped_config(config_file)
        os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = config_file  # what accelerate's plugin reads
    training["deepspeed"] = config_file
    if not torch.cuda.is_available():
        from accelerate import PartialState

        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend="gloo")
        training["accelerator_config"] = {**(training.get("accelerator_config") or {}), "use_configured_state": True}
        if training.get("bf16"):
            training["use_cpu"] = True
    return training


def _shipped_config(config_file: str) -> str:
    """A DeepSpeed JSON named as ``recipes/accelerate/NAME.json`` (as the shipped launch configs name them) from
    another directory: the copy shipped inside the package."""
    name = config_file.replace(os.sep, "/").split("recipes/", 1)[-1]
    shipped = Path(str(resources.files("spiking_lm.recipe_files"))) / name
    if not name.startswith("accelerate/") or not shipped.is_file():
        raise ValueError(f"DeepSpeed config file {config_file!r} does not exist (relative paths are read from the "
                         f"current directory, {os.getcwd()})")  # fmt: skip
    return str(shipped)


def launched_world_size() -> int:
    """How many processes the launcher (`accelerate launch`, torchrun) started: ``WORLD_SIZE``, else 1."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def check_launched_world(args) -> None:
    """Raise if the launcher started several processes but the Trainer's arguments did not join them into one
    distributed run: each process would silently train its own, unsynchronised copy."""
    launched = launched_world_size()
    if launched > 1 and args.world_size != launched:
        raise RuntimeError(
            f"launched as {launched} processes, but training would run as {args.world_size} independent "
            f"process(es) (parallel mode {args.parallel_mode.value}); remove training.use_cpu: false or launch "
            "with recipes/accelerate/cpu_ddp.yaml"
        )


def zero3_partitioned(module: nn.Module) -> bool:
    """Whether ``module``'s parameters are ZeRO-3 partitions (each rank holds a slice, tensors look empty)."""
    return any(hasattr(parameter, "ds_id") for parameter in module.parameters())


def gathered(module: nn.Module):
    """Context in which a ZeRO-3 partitioned module has its full parameters on every rank (read-only)."""
    if not zero3_partitioned(module):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)


def prepare_teacher(teacher: nn.Module, accelerator, device) -> nn.Module:
    """The frozen teacher, ready for forward passes on this rank.

    Under ZeRO-3 the teacher is wrapped in its own DeepSpeed engine (no optimizer) so its parameters stay
    partitioned across ranks and are gathered layer by layer during its forward pass, as the student's are.
    Under ZeRO-0/1/2, or without DeepSpeed, it is a plain replica on ``device``.
    """
    teacher = teacher.eval().requires_grad_(False)
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None or plugin.zero_stage != 3:
        return teacher.to(device)
    import deepspeed

    config = copy.deepcopy(plugin.deepspeed_config)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    hidden = teacher.config.hidden_size
    config["zero_optimization"].update(
        {
            "stage3_param_persistence_threshold": 10 * hidden,
            "stage3_prefetch_bucket_size": 0,
            "reduce_bucket_size": hidden * hidden,
        }
    )
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()  # DeepSpeedEngine.eval returns None
    return engine


def describe_backend() -> str:
    """How this run was spread, e.g. ``"DeepSpeed ZeRO-3, 2 processes over gloo"`` (for the closing message)."""
    from accelerate.state import AcceleratorState, PartialState

    if not PartialState._shared_state:
        return "1 process"
    state = PartialState()
    plugin = AcceleratorState().deepspeed_plugin if AcceleratorState._shared_state else None
    engine = f"DeepSpeed ZeRO-{plugin.zero_stage}" if plugin is not None else "DDP"
    if plugin is None and state.num_processes == 1:
        return "1 process"
    return f"{engine}, {state.num_processes} processes over {state.backend}"
