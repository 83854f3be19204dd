"""What every trainer in the toolkit shares: checkpoints that are marked complete only once fully written, and
mixed precision taken from the `TrainingArguments` a user already sets.

`SpikingTrainer` (task loss only: `spiking-lm train`, GLUE fine-tuning) and `spiking_lm.distill.SpADTrainer` both
build on `SpikingTrainerMixin`; `last_complete_checkpoint` finds where a killed run resumes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from pathlib import Path

from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import rotate_checkpoints

__all__ = [
    "COMPLETE_MARKER",
    "CompleteCheckpointMixin",
    "SpikingTrainer",
    "SpikingTrainerMixin",
    "last_complete_checkpoint",
    "publish_folder",
]

COMPLETE_MARKER = "CHECKPOINT_COMPLETE"
STAGING = ".incoming"  # checkpoints are written under output_dir/.incoming/ and published by a rename


def publish_folder(staged: Path, target: Path) -> None:
    """Move the fully written folder ``staged`` to ``target`` by renames: ``target`` is at every moment
    either the old folder or the new one, never a mixture (an old ``target`` is moved aside, then deleted)."""
    staged, target = Path(staged), Path(target)
    old = target.with_name(f".old-{target.name}")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staged, target)
    shutil.rmtree(old, ignore_errors=True)
    if staged.parent.name == STAGING:
        with contextlib.suppress(OSError):  # the staging folder goes once empty
            staged.parent.rmdir()


def last_complete_checkpoint(output_dir) -> str | None:
    """The newest ``checkpoint-N`` in ``output_dir`` whose writing finished (it holds `COMPLETE_MARKER`)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    complete = [p for p in folder.glob("checkpoint-*") if (p / COMPLETE_MARKER).exists() and p.name[11:].isdigit()]
    return str(max(complete, key=lambda p: int(p.name[11:]))) if complete else None


class CompleteCheckpointMixin:
    """Checkpoints that are whole or absent: the Trainer writes ``checkpoint-N`` into a staging folder, the
    folder is marked complete and then renamed into place, and only then are old checkpoints rotated out
    (``save_total_limit``), so a kill at any moment leaves the last complete checkpoint to resume from."""

    _staging = False

    def _get_output_dir(self, trial):
        folder = super()._get_output_dir(trial)
        return os.path.join(folder, STAGING) if self._staging else folder

    def _save_checkpoint(self, model, trial):
        run_dir = Path(self._get_output_dir(trial=trial))
        name = f"checkpoint-{self.state.global_step}"
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotate once this one is whole
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging, self.args.save_total_limit = False, limit
        self.accelerator.wait_for_everyone()  # every rank's shards and RNG states are written
        if self.args.should_save:
            staged = run_dir / STAGING / name
            (staged / COMPLETE_MARKER).write_text(f"{self.state.global_step}\n")
            publish_folder(staged, run_dir / name)
            if self.state.best_model_checkpoint and STAGING in Path(self.state.best_model_checkpoint).parts:
                self.state.best_model_checkpoint = str(run_dir / Path(self.state.best_model_checkpoint).name)
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)  # fmt: skip
        self.accelerator.wait_for_everyone()


class StopOnInterrupt(TrainerCallback):
    """Ctrl-C (SIGINT) during training: finish the current step, save a checkpoint, stop. A second Ctrl-C
    interrupts at once. Active inside `SpikingTrainerMixin.train` of a single-process run in the main thread
    (a launcher forwards signals to each rank itself)."""

    def __init__(self):
        self.interrupted = False

    @contextlib.contextmanager
    def installed(self, args):
        self.interrupted = False
        previous = signal.getsignal(signal.SIGINT)
        usable = args.world_size == 1 and threading.current_thread() is threading.main_thread()
        if not usable or previous in (signal.SIG_IGN, None):  # ignored (e.g. under nohup): leave it so
            yield
            return

        def handle(signum, frame):
            self.interrupted = True
            signal.signal(signal.SIGINT, previous)  # a second Ctrl-C does what it did before: stop at once

        signal.signal(signal.SIGINT, handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True
        return control


def apply_training_precision(model, args) -> None:
    """``TrainingArguments(bf16=True)`` trains a spiking model's spike-fed GEMMs in bf16 too: its
    ``train_matmul_dtype`` follows (spikes are exact in bf16; no separate knob). Other models are left alone."""
    if getattr(args, "bf16", False) and hasattr(model, "set_train_matmul_dtype"):
        model.set_train_matmul_dtype("bfloat16")


class SpikingTrainerMixin(CompleteCheckpointMixin):
    """Completion-marked checkpoints, and bf16 spike GEMMs when the arguments ask for bf16."""

    def __init__(self, model=None, args=None, **kwargs):
        apply_training_precision(model, args)
        super().__init__(model=model, args=args, **kwargs)
        self.interrupt = StopOnInterrupt()
        self.add_callback(self.interrupt)

    def train(self, *args, **kwargs):
        with self.interrupt.installed(self.args):
            return super().train(*args, **kwargs)

    @property
    def interrupted(self) -> bool:
        """Whether the last `train` stopped early on Ctrl-C (after saving a checkpoint)."""
        return self.interrupt.interrupted


class SpikingTrainer(SpikingTrainerMixin, Trainer):
    """The plain `Trainer` with completion-marked checkpoints and bf16 spike GEMMs under ``bf16=True``."""
