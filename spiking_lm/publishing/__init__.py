"""Publishing a model folder: model cards filled from its ``results.json`` and upload to the Hugging Face Hub."""

from .cards import render_card, write_card
from .hub import push_folder

__all__ = ["push_folder", "render_card", "write_card"]
