"""What every trainer in the toolkit shares: checkpoints that are marked complete only once fully written.

`SpikingTrainer` (task loss only: `spiking-lm train`, GLUE fine-tuning) and `spiking_lm.distill.SpADTrainer` both
build on `CompleteCheckpointMixin`; `last_complete_checkpoint` finds where a killed run resumes.
"""

from __future__ import annotations

from pathlib import Path

from transformers import Trainer

__all__ = ["COMPLETE_MARKER", "CompleteCheckpointMixin", "SpikingTrainer", "last_complete_checkpoint"]

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


class SpikingTrainer(CompleteCheckpointMixin, Trainer):
    """The plain `Trainer` with completion-marked checkpoints."""
