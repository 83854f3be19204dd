"""What every trainer in the toolkit shares: checkpoints that are marked complete only once fully written, and
mixed precision taken from the `TrainingArguments` a user already sets.

`SpikingTrainer` (task loss only: `spiking-lm train`, GLUE fine-tuning) and `spiking_lm.distill.SpADTrainer` both
build on `SpikingTrainerMixin`; `last_complete_checkpoint` finds where a killed run resumes.
"""

from __future__ import annotations

from pathlib import Path

from transformers import Trainer

__all__ = [
    "COMPLETE_MARKER",
    "CompleteCheckpointMixin",
    "SpikingTrainer",
    "SpikingTrainerMixin",
    "last_complete_checkpoint",
]

COMPLETE_MARKER = "CHECKPOINT_COMPLETE"


def last_complete_checkpoint(output_dir) -> str | None:
    """The newest ``checkpoint-N`` in ``output_dir`` whose writing finished (it holds `COMPLETE_MARKER`)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    complete = [p for p in folder.glob("checkpoint-*") if (p / COMPLETE_MARKER).exists() and p.name[11:].isdigit()]
    return str(max(complete, key=lambda p: int(p.name[11:]))) if complete else None


class CompleteCheckpointMixin:
    """Marks a checkpoint complete only after the Trainer wrote all of it, so that a crash mid-save leaves the
    previous checkpoint as the one to resume from (the Trainer writes ``checkpoint-N`` in place)."""

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            (folder / COMPLETE_MARKER).write_text(f"{self.state.global_step}\n")


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


class SpikingTrainer(SpikingTrainerMixin, Trainer):
    """The plain `Trainer` with completion-marked checkpoints and bf16 spike GEMMs under ``bf16=True``."""
