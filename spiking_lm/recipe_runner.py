"""Running a recipe: `distill` (SpAD from an HF teacher) or `train` (task loss only, no teacher)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, DataCollatorForLanguageModeling, TrainingArguments
from transformers.utils import logging

from .data import BlockDataset, load_texts, pack_blocks, shakespeare_files, train_bpe_tokenizer
from .distill import SpADTrainer
from .distill.calibration import calibrate_output_norms
from .distill.trainer import load_teacher
from .distributed import configure_backend, gathered
from .evaluation.results import RESULTS_FILE, record_training
from .memory import keep_freed_memory
from .recipes import Recipe, resolve_teacher
from .training import SpikingTrainer, last_complete_checkpoint

logger = logging.get_logger(__name__)


def _documents(data) -> list[str]:
    if data.source == "shakespeare":
        return load_texts(shakespeare_files()[0])
    texts = load_texts(data.source, data.split, data.text_column, data.streaming)
    if isinstance(texts, list):
        return texts[: data.max_documents]
    documents = []
    for row in texts:
        documents.append(row[data.text_column])
        if data.max_documents is not None and len(documents) >= data.max_documents:
            break
    if not documents:
        raise ValueError(f"dataset {data.source!r} ({data.split}) has no documents: the dataset is empty")
    return documents


def _dataset_and_collator(recipe: Recipe, tokenizer, masked: bool):
    blocks = pack_blocks(_documents(recipe.data), tokenizer, recipe.data.block_size)
    if not masked:
        return BlockDataset(blocks), None
    if tokenizer.mask_token is None:
        raise ValueError("a masked-LM student needs a tokenizer with a mask token")
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=recipe.data.mlm_probability)
    return [{"input_ids": block} for block in blocks], collator


def _resume_point(resume: bool, output_dir: str) -> str | None:
    if not resume:
        return None
    checkpoint = last_complete_checkpoint(output_dir)
    if checkpoint is None:
        raise ValueError(f"--resume: no complete checkpoint in {output_dir}")
    logger.info("resuming from %s", checkpoint)
    return checkpoint


def _finish(trainer, tokenizer, recipe: Recipe, method: str) -> Path:
    """Save the trained model and tokenizer to ``output_dir/final`` with a results file saying how it was made
    (every rank calls it: under ZeRO-3 the weights are gathered from all ranks before rank 0 writes them)."""
    final = Path(trainer.args.output_dir) / "final"
    trainer.save_model(final)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(final)
        (final / "training_args.bin").unlink(missing_ok=True)  # a pickle; the folder is meant to be shared
        training = {"method": method, "teacher": recipe.teacher, "data": str(recipe.data.source),
                    "steps": trainer.state.global_step, "block_size": recipe.data.block_size}  # fmt: skip
        record_training(final / RESULTS_FILE, training)
    return final


def run_distill(recipe: Recipe, resume: bool = False) -> Path:
    """Distill ``recipe.teacher`` into a student of ``recipe.student``; returns the saved student folder."""
    if recipe.teacher is None:
        raise ValueError("a distillation recipe needs a 'teacher'")
    keep_freed_memory()
    teacher_path = resolve_teacher(recipe.teacher)
    args = recipe.training_config(configure_backend(recipe.training))
    student_class = recipe.student_class
    teacher = load_teacher(teacher_path, student_class.teacher_head, args.saa_weight > 0)  # ZeRO-3: partitioned
    tokenizer = AutoTokenizer.from_pretrained(recipe.data.tokenizer or teacher_path)
    dataset, collator = _dataset_and_collator(recipe, tokenizer, student_class.teacher_head == "masked-lm")
    with gathered(teacher):
        student = student_class.from_teacher(teacher, **recipe.student_overrides())
        if student.output_norms:  # start from the teacher's sublayer output scale
            count = min(len(dataset), args.per_device_train_batch_size)
            calibrate_output_norms(student, teacher, torch.stack([dataset[i]["input_ids"] for i in range(count)]))
    trainer = SpADTrainer(model=student, args=args, teacher=teacher, train_dataset=dataset, data_collator=collator)
    trainer.train(resume_from_checkpoint=_resume_point(resume, args.output_dir))
    return _finish(trainer, tokenizer, recipe, "SpAD distillation")


def run_train(recipe: Recipe, resume: bool = False) -> Path:
    """Train a spiking model from its config with the task loss alone (no teacher)."""
    keep_freed_memory()
    config = recipe.student_class.config_class(**recipe.student_overrides())
    if recipe.data.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(recipe.data.tokenizer)
    else:
        tokenizer = train_bpe_tokenizer(_documents(recipe.data), recipe.data.vocab_size)
    if config.vocab_size != len(tokenizer):
        logger.warning("setting student vocab_size=%d to match the tokenizer", len(tokenizer))
        config.vocab_size = len(tokenizer)
    student = recipe.student_class(config)
    distillation_only = sorted(key for key in recipe.training if not hasattr(TrainingArguments, key))
    if distillation_only:
        raise ValueError(f"training keys {distillation_only} only apply to distillation; remove them for 'train'")
    args = TrainingArguments(**configure_backend(recipe.training))
    masked = recipe.student_class.teacher_head == "masked-lm"
    dataset, collator = _dataset_and_collator(recipe, tokenizer, masked)
    trainer = SpikingTrainer(model=student, args=args, train_dataset=dataset, data_collator=collator)
    trainer.train(resume_from_checkpoint=_resume_point(resume, args.output_dir))
    return _finish(trainer, tokenizer, recipe, "task loss")
