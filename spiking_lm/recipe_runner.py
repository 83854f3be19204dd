"""Running a recipe: `distill` (SpAD from an HF teacher) or `train` (task loss only, no teacher)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import AutoTokenizer, DataCollatorForLanguageModeling, TrainingArguments, set_seed
from transformers.utils import logging

from .data import BlockDataset, load_texts, pack_blocks, save_tokenizer, shakespeare_files, train_bpe_tokenizer
from .distill import SpADTrainer
from .distill.calibration import calibrate_output_norms
from .distill.trainer import load_teacher
from .distributed import check_launched_world, configure_backend, gathered
from .evaluation.loading import check_model_reference
from .evaluation.results import RESULTS_FILE, record_training
from .memory import keep_freed_memory
from .recipes import Recipe, resolve_teacher
from .training import STAGING, SpikingTrainer, last_complete_checkpoint, publish_folder

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


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after a checkpoint was saved; the message says where to resume from."""


# config keys that differ between two saves of the same model without changing it
UNCHECKED_CONFIG_KEYS = {"_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype",
                         "auto_map", "use_cache", "return_dict"}  # fmt: skip


def prepare_output_dir(output_dir: str, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder: without ``resume`` an ``output_dir`` holding checkpoints or a
    ``final/`` of an earlier run is an error, unless ``overwrite`` (which removes them first)."""
    folder = Path(output_dir)
    earlier = sorted(folder.glob("checkpoint-*")) + [p for p in (folder / "final", folder / STAGING) if p.exists()]
    if resume or not earlier:
        return
    if not overwrite:
        names = ", ".join(path.name for path in earlier[:3])
        raise ValueError(f"output_dir {folder} holds an earlier run ({names}): pass --resume to continue it, "
                         "--overwrite to replace it, or choose another output_dir")  # fmt: skip
    for path in earlier:
        shutil.rmtree(path)


def _resume_point(resume: bool, output_dir: str, student) -> str | None:
    """The checkpoint to resume from, checked to hold a model of ``student``'s configuration."""
    if not resume:
        return None
    checkpoint = last_complete_checkpoint(output_dir)
    if checkpoint is None:
        raise ValueError(f"--resume: no complete checkpoint in {output_dir}")
    saved = type(student.config).from_pretrained(checkpoint).to_dict()
    current = student.config.to_dict()
    differing = sorted(key for key in set(saved) | set(current)
                       if key not in UNCHECKED_CONFIG_KEYS and saved.get(key) != current.get(key))  # fmt: skip
    if differing:
        details = ", ".join(f"{key}: {saved.get(key)!r} there, {current.get(key)!r} now" for key in differing[:4])
        raise ValueError(f"--resume: {checkpoint} holds a student of another configuration ({details}); "
                         "resume with the recipe that made it, or train into another output_dir")  # fmt: skip
    logger.info("resuming from %s", checkpoint)
    return checkpoint


def check_block_size(block_size: int, *configs) -> None:
    """``block_size`` must fit the positions of every model that reads the blocks (teacher and student)."""
    for config in configs:
        positions = getattr(config, "max_position_embeddings", None)
        if positions is not None and block_size > positions:
            raise ValueError(f"data.block_size={block_size} is longer than the {config.model_type} model's "
                             f"max_position_embeddings={positions}; use block_size <= {positions}")  # fmt: skip


def check_data_tokenizer(tokenizer, teacher, teacher_path: str, tokenizer_name: str) -> None:
    """A data tokenizer other than the teacher's own must produce the teacher's token ids."""
    vocabulary = len(tokenizer)
    if vocabulary > teacher.config.vocab_size:
        raise ValueError(f"data.tokenizer {tokenizer_name!r} has {vocabulary} tokens but the teacher only "
                         f"{teacher.config.vocab_size}: its ids do not index the teacher's embeddings")  # fmt: skip
    try:
        own = AutoTokenizer.from_pretrained(teacher_path)
    except (OSError, ValueError):
        return  # a teacher saved without a tokenizer: the size check above is all that can be checked
    if own.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"data.tokenizer {tokenizer_name!r} has another vocabulary than the teacher's own "
                         f"tokenizer ({teacher_path}): the teacher would read different tokens; "
                         "drop data.tokenizer to use the teacher's")  # fmt: skip


def _train(trainer, resume: bool, student) -> None:
    trainer.train(resume_from_checkpoint=_resume_point(resume, trainer.args.output_dir, student))
    if trainer.interrupted:
        checkpoint = last_complete_checkpoint(trainer.args.output_dir)
        raise TrainingInterrupted(f"interrupted at step {trainer.state.global_step}; saved {checkpoint}: "
                                  "rerun with --resume to continue")  # fmt: skip


def _finish(trainer, tokenizer, recipe: Recipe, method: str) -> Path:
    """Save the trained model and tokenizer to ``output_dir/final`` with a results file saying how it was made
    (every rank calls it: under ZeRO-3 the weights are gathered from all ranks before rank 0 writes them).
    The folder is written beside ``final`` and renamed into place, so ``final`` is never half old, half new."""
    final = Path(trainer.args.output_dir) / "final"
    staged = Path(trainer.args.output_dir) / STAGING / "final"
    if trainer.is_world_process_zero():
        shutil.rmtree(staged, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(staged)
    if trainer.is_world_process_zero():
        save_tokenizer(tokenizer, staged, trainer.model.config)
        (staged / "training_args.bin").unlink(missing_ok=True)  # a pickle; the folder is meant to be shared
        training = {"method": method, "teacher": recipe.teacher, "data": str(recipe.data.source),
                    "steps": trainer.state.global_step, "block_size": recipe.data.block_size}  # fmt: skip
        record_training(staged / RESULTS_FILE, training)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        publish_folder(staged, final)
    return final


def run_distill(recipe: Recipe, resume: bool = False, overwrite: bool = False) -> Path:
    """Distill ``recipe.teacher`` into a student of ``recipe.student``; returns the saved student folder."""
    if recipe.teacher is None:
        raise ValueError("a distillation recipe needs a 'teacher'")
    keep_freed_memory()
    teacher_path = resolve_teacher(recipe.teacher)
    check_model_reference(teacher_path, "teacher")
    args = recipe.training_config(configure_backend(recipe.training))
    check_launched_world(args)
    prepare_output_dir(args.output_dir, resume, overwrite)
    student_class = recipe.student_class
    teacher = load_teacher(teacher_path, student_class.teacher_head, args.saa_weight > 0)  # ZeRO-3: partitioned
    tokenizer = AutoTokenizer.from_pretrained(recipe.data.tokenizer or teacher_path)
    if recipe.data.tokenizer:
        check_data_tokenizer(tokenizer, teacher, teacher_path, recipe.data.tokenizer)
    check_block_size(recipe.data.block_size, teacher.config)
    dataset, collator = _dataset_and_collator(recipe, tokenizer, student_class.teacher_head == "masked-lm")
    set_seed(args.seed)  # the student's fresh parameters are drawn from the run's seed
    with gathered(teacher):
        student = student_class.from_teacher(teacher, **recipe.student_overrides())
        check_block_size(recipe.data.block_size, student.config)
        if student.output_norms:  # start from the teacher's sublayer output scale
            count = min(len(dataset), args.per_device_train_batch_size)
            calibrate_output_norms(student, teacher, torch.stack([dataset[i]["input_ids"] for i in range(count)]))
    trainer = SpADTrainer(model=student, args=args, teacher=teacher, train_dataset=dataset, data_collator=collator)
    _train(trainer, resume, student)
    return _finish(trainer, tokenizer, recipe, "SpAD distillation")


def run_train(recipe: Recipe, resume: bool = False, overwrite: bool = False) -> Path:
    """Train a spiking model from its config with the task loss alone (no teacher)."""
    keep_freed_memory()
    distillation_only = sorted(key for key in recipe.training if not hasattr(TrainingArguments, key))
    if distillation_only:
        raise ValueError(f"training keys {distillation_only} only apply to distillation; remove them for 'train'")
    args = TrainingArguments(**configure_backend(recipe.training))
    check_launched_world(args)
    prepare_output_dir(args.output_dir, resume, overwrite)
    config = recipe.student_class.config_class(**recipe.student_overrides())
    check_block_size(recipe.data.block_size, config)
    if recipe.data.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(recipe.data.tokenizer)
    else:
        tokenizer = train_bpe_tokenizer(_documents(recipe.data), recipe.data.vocab_size)
    if config.vocab_size != len(tokenizer):
        logger.warning("setting student vocab_size=%d to match the tokenizer", len(tokenizer))
        config.vocab_size = len(tokenizer)
    masked = recipe.student_class.teacher_head == "masked-lm"
    dataset, collator = _dataset_and_collator(recipe, tokenizer, masked)
    set_seed(args.seed)  # the student's initial weights are drawn from the run's seed
    student = recipe.student_class(config)
    trainer = SpikingTrainer(model=student, args=args, train_dataset=dataset, data_collator=collator)
    _train(trainer, resume, student)
    return _finish(trainer, tokenizer, recipe, "task loss")
