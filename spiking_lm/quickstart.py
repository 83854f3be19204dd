"""The quickstart: Shakespeare → BPE tokenizer → OPT teacher → SpAD-distilled BiSpikCLM → a Hub-ready folder.

The student is BiSpikCLM as published: binary ``lif`` neurons over T = 4 steps and softmax-free spiking attention
(SFSA), distilled with every SpAD term; ``neuron="nilif"`` trains the 1×4 integer variant instead. Its spike-fed
GEMMs train in bf16 (spikes are exact in bf16; the teacher trains in fp32).

Everything runs offline on the corpus shipped in `spiking_lm/data/corpora/shakespeare`. The full run's
training phases have time budgets: the number of steps is set from the measured speed of the first steps, so
the learning-rate schedule completes on any machine. The smoke run uses fixed step counts instead, so its
results do not depend on the machine's speed.
"""

from __future__ import annotations

import copy
import functools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import OPTConfig, OPTForCausalLM, Trainer, TrainingArguments, set_seed
from transformers.utils import logging

from .data import BlockDataset, load_texts, pack_blocks, save_tokenizer, shakespeare_files, train_bpe_tokenizer
from .distill import SpADConfig, SpADTrainer
from .distill.calibration import calibrate_output_norms
from .energy import estimate_energy
from .evaluation.perplexity import sliding_window_perplexity
from .evaluation.results import RESULTS_FILE, record_evaluation, record_training, write_text_atomically
from .memory import keep_freed_memory
from .models.bispikclm import BiSpikCLMForCausalLM
from .publishing.cards import TEMPLATES
from .training import STAGING, publish_folder

logger = logging.get_logger(__name__)

MODEL_CARD_TEMPLATE = TEMPLATES.joinpath("quickstart.md.j2")
SAMPLE_PROMPT = "ROMEO.\n"
STUDENT_NEURONS = ("lif", "nilif")  # the paper's binary LIF over the settings' T, or the 1×4 integer variant (T = 1)


@dataclass
class QuickstartSettings:
    """Sizes and time budgets of one quickstart run."""

    vocab_size: int = 4096
    block_size: int = 128
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    ffn_size: int = 1024
    batch_size: int = 16
    teacher_seconds: float = 210.0
    student_seconds: float = 300.0
    teacher_steps: int | None = None  # fixed step counts replace the time budgets (the smoke run: reproducible)
    student_steps: int | None = None
    teacher_learning_rate: float = 1e-3
    student_learning_rate: float = 5e-4
    neuron_type: str = "lif"
    time_steps: int = 4
    train_matmul_dtype: str = "bfloat16"
    eval_blocks: int = 64
    sample_tokens: int = 40
    sample_temperature: float = 0.8
    energy_sequences: int = 4


FULL = QuickstartSettings()
SMOKE = QuickstartSettings(
    vocab_size=512, block_size=64, hidden_size=64, num_layers=2, num_heads=4, ffn_size=128, batch_size=8,
    teacher_steps=400, student_steps=200, eval_blocks=8, sample_tokens=12, time_steps=2, energy_sequences=2,
)  # fmt: skip


def _seconds_per_step(model, dataset, batch_size: int, make_loss, overhead: float = 1.0) -> float:
    """Time three optimizer steps on a copy of the model (the first one is warm-up), times ``overhead`` for what
    the Trainer adds around them."""
    probe = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-4)
    batch = {key: torch.stack([dataset[i][key] for i in range(batch_size)]) for key in ("input_ids", "labels")}
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        make_loss(probe, batch).backward()
        optimizer.step()
        optimizer.zero_grad()
        timings.append(time.perf_counter() - start)
    return max(min(timings[1:]), 1e-3) * overhead


def _training_arguments(cls, output_dir: Path, settings, steps: int, learning_rate: float, seed: int, **extra):
    return cls(
        output_dir=str(output_dir),
        per_device_train_batch_size=settings.batch_size,
        learning_rate=learning_rate,
        max_steps=steps,
        # every batch the same shape: a short last batch at an epoch's end recompiled the student's kernels (34 s)
        dataloader_drop_last=True,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20),
        weight_decay=0.01,
        logging_steps=max(1, steps // 10),
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=seed,
        dataloader_num_workers=0,
        **extra,
    )


def perplexity(model, blocks: torch.Tensor) -> float:
    """exp(mean next-token loss) over ``blocks``, each block scored on its own (disjoint windows)."""
    size = blocks.shape[1]
    return sliding_window_perplexity(model.eval(), blocks.flatten(), size, size, progress=False)["perplexity"]


@torch.no_grad()
def sample(model, tokenizer, prompt: str, new_tokens: int, temperature: float, seed: int) -> str:
    """A sample seeded by ``seed`` (temperature sampling, top-k 40): greedy decoding of a few minutes' model
    repeats one line, which shows nothing of it."""
    model.eval()
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    output = model.generate(input_ids, max_new_tokens=new_tokens, do_sample=True, temperature=temperature, top_k=40,
                            pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.random.set_rng_state(generator_state)
    return tokenizer.decode(output[0], skip_special_tokens=True)


def energy_report(student, teacher, blocks: torch.Tensor) -> dict:
    """The student's energy report (paper convention) against the teacher on held-out blocks."""
    return estimate_energy(student.eval(), blocks, ann_baseline=teacher.eval()).to_dict()


def energy_summary(report: dict) -> dict:
    """The headline figures of an energy report: SNN/ANN ratio under both conventions and the firing rates."""
    rates = {layer["name"]: round(layer["firing_rate"], 4) for layer in report["layers"] if layer["firing_rate"]}
    return {"snn_energy_mj": report["snn_energy_mj"], "ann_energy_mj": report["ann_energy_mj"],
            "ratio": round(report["ratio"], 4), "convention": report["convention"],
            "measured_ratio": round(report["conventions"]["measured"]["ratio"], 4),
            "firing_rate": round(report["firing_rate"], 4), "firing_rates": rates}  # fmt: skip


def _teacher(settings: QuickstartSettings, tokenizer) -> OPTForCausalLM:
    config = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        ffn_dim=settings.ffn_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        max_position_embeddings=settings.block_size,
        word_embed_proj_dim=settings.hidden_size,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dropout=0.0,
        attention_dropout=0.0,
    )
    return OPTForCausalLM(config)


def _train_phase(name, trainer_class, arguments_class, model, train_set, probe_loss, overhead, run) -> None:
    """Train ``model`` for the phase's time budget: the step count comes from a timed probe."""
    settings = run["settings"]
    steps = getattr(settings, f"{name}_steps")
    if steps is None:
        probe = _seconds_per_step(model, train_set, settings.batch_size, probe_loss, overhead)
        steps = max(2, int(getattr(settings, f"{name}_seconds") / probe))
    learning_rate = getattr(settings, f"{name}_learning_rate")
    args = _training_arguments(
        arguments_class, run["output_dir"] / f"{name}_run", settings, steps, learning_rate, run["seed"],
        disable_tqdm=not run["progress"],
    )  # fmt: skip
    started = time.perf_counter()
    trainer_class(model=model, args=args, train_dataset=train_set).train()
    run["timings"].update({f"{name}_seconds": round(time.perf_counter() - started, 1), f"{name}_steps": steps})


def _causal_loss(model, batch):
    return model(input_ids=batch["input_ids"], labels=batch["labels"]).loss


def _distillation_step_loss(teacher):
    """A stand-in for one SpAD step's work: the teacher's forward with hidden states and attention maps, and
    the student's with the same outputs, so the speed probe times what distillation really does."""

    def loss(student, batch):
        with torch.no_grad():
            teacher(input_ids=batch["input_ids"], output_hidden_states=True, output_attentions=True)
        outputs = student(
            input_ids=batch["input_ids"], labels=batch["labels"], output_hidden_states=True, output_attentions=True
        )
        return outputs.loss

    return loss


def run_quickstart(output_dir, smoke: bool = False, seed: int = 0, progress: bool = True, neuron: str = "lif") -> dict:
    """Run the whole pipeline; returns the results written to ``output_dir/results.json``.

    ``output_dir/model`` is the Hub-ready student: weights, remote code, tokenizer and a model card. ``neuron``:
    ``"lif"`` (binary, T = 4 full size: the paper's model) or ``"nilif"`` (the 1×4 integer variant).
    """
    if neuron not in STUDENT_NEURONS:
        raise ValueError(f"neuron must be one of {sorted(STUDENT_NEURONS)}, got {neuron!r}")
    settings = SMOKE if smoke else FULL
    time_steps = 1 if neuron == "nilif" else settings.time_steps
    settings = QuickstartSettings(**{**asdict(settings), "neuron_type": neuron, "time_steps": time_steps})
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output-dir {output_dir} is a file, not a folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    keep_freed_memory()  # a training run: freed activation buffers are reused (spiking_lm.memory)
    set_seed(seed)
    started = time.perf_counter()
    train_files, held_out_files = shakespeare_files()
    train_texts, held_out_texts = load_texts(train_files), load_texts(held_out_files)
    tokenizer = train_bpe_tokenizer(train_texts, settings.vocab_size)
    train_set = BlockDataset(pack_blocks(train_texts, tokenizer, settings.block_size))
    eval_blocks = pack_blocks(held_out_texts, tokenizer, settings.block_size)[: settings.eval_blocks]
    timings = {"data_seconds": round(time.perf_counter() - started, 1)}

    teacher = _teacher(settings, tokenizer)
    run = {"output_dir": output_dir, "settings": settings, "seed": seed, "progress": progress, "timings": timings}
    _train_phase("teacher", Trainer, TrainingArguments, teacher, train_set, _causal_loss, 1.0, run)
    teacher.set_attn_implementation("eager")  # SAA compares against the teacher's attention probabilities

    student = BiSpikCLMForCausalLM.from_teacher(
        teacher,
        neuron_type=settings.neuron_type,
        time_steps=settings.time_steps,
        train_matmul_dtype=settings.train_matmul_dtype,
    )
    calibrate_output_norms(student, teacher, train_set.blocks[: settings.batch_size])
    # A SpAD step costs 1.1-1.4x the probe (teacher forward, loss terms, clipping, logging).
    trainer = functools.partial(SpADTrainer, teacher=teacher)
    _train_phase("student", trainer, SpADConfig, student, train_set, _distillation_step_loss(teacher), 1.2, run)

    energy = energy_report(student, teacher, eval_blocks[: settings.energy_sequences])
    results = {
        "teacher_perplexity": round(perplexity(teacher, eval_blocks), 2),
        "student_perplexity": round(perplexity(student, eval_blocks), 2),
        "teacher_sample": sample(
            teacher, tokenizer, SAMPLE_PROMPT, settings.sample_tokens, settings.sample_temperature, seed
        ),
        "student_sample": sample(
            student, tokenizer, SAMPLE_PROMPT, settings.sample_tokens, settings.sample_temperature, seed
        ),
        "energy": energy_summary(energy),
        "settings": asdict(settings),
        "smoke": smoke,
        "seed": seed,
        "held_out": [f.name for f in held_out_files],
        "timings": timings,
    }
    results["perplexity_ratio"] = round(results["student_perplexity"] / results["teacher_perplexity"], 3)
    results["timings"]["total_seconds"] = round(time.perf_counter() - started, 1)
    _write_folder(output_dir, student, teacher, tokenizer, results, energy)
    return results


def _write_folder(output_dir: Path, student, teacher, tokenizer, results: dict, energy: dict) -> None:
    """Write ``teacher/`` and ``model/``, each staged and renamed into place (a kill leaves the old ones whole)."""
    staging = output_dir / STAGING
    # the teacher too, with its tokenizer: recipes/quickstart.yaml distills from it again
    teacher.save_pretrained(staging / "teacher")
    save_tokenizer(tokenizer, staging / "teacher", teacher.config)
    publish_folder(staging / "teacher", output_dir / "teacher")
    model_dir = staging / "model"
    student.save_pretrained(model_dir)
    save_tokenizer(tokenizer, model_dir, student.config)
    (model_dir / "README.md").write_text(render_model_card(results, student.config))
    training = {"method": "SpAD distillation", "teacher": "OPTForCausalLM of the same shape, trained in the run",
                "data": "Shakespeare, 15 plays shipped with spiking_lm", "steps": results["timings"]["student_steps"],
                "block_size": results["settings"]["block_size"]}  # fmt: skip
    record_training(model_dir / RESULTS_FILE, training)
    # the headline perplexities and energy, so that `spiking-lm card` / `push` regenerate a card that has them
    scores = {"perplexity": results["student_perplexity"], "teacher_perplexity": results["teacher_perplexity"],
              "perplexity_ratio": results["perplexity_ratio"]}  # fmt: skip
    data = f"held-out Shakespeare: {', '.join(results['held_out'])}"
    settings = {"data": data, "blocks": results["settings"]["eval_blocks"],
                "block_size": results["settings"]["block_size"]}  # fmt: skip
    record_evaluation(model_dir / RESULTS_FILE, student, "model", "perplexity", scores, energy, settings)
    publish_folder(model_dir, output_dir / "model")
    write_text_atomically(output_dir / "results.json", json.dumps(results, indent=2) + "\n")  # last: the run's record


def render_model_card(results: dict, config) -> str:
    """Fill `model_cards/quickstart.md.j2` with the run's results and the student's configuration."""
    import jinja2

    template = jinja2.Template(MODEL_CARD_TEMPLATE.read_text(), undefined=jinja2.StrictUndefined)
    return template.render(results=results, config=config.to_dict())
