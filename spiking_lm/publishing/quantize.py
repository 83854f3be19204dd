"""`quantize_folder`: a saved spiking model's W8 variant (`quantize_weights`), written as a folder to load or push."""

from __future__ import annotations

from pathlib import Path

import torch

from ..evaluation.loading import check_model_reference, load_model_and_tokenizer

__all__ = ["quantize_folder", "weight_bytes"]


def weight_bytes(model) -> int:
    """Bytes of every tensor the model's state holds (shared tensors counted once; the tuples torch's quantized
    modules keep in their state, e.g. packed int8 weights, included)."""
    seen, total = set(), 0
    for value in model.state_dict().values():
        for tensor in value if isinstance(value, tuple) else (value,):
            if torch.is_tensor(tensor) and tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                total += tensor.numel() * tensor.element_size()
    return total


def quantize_folder(source: str, output_dir: str, lm_head: bool = False, trust_remote_code: bool = False) -> dict:
    """Load the spiking model saved at ``source`` (folder or Hub id), store its Linears fed spike counts in int8
    (``lm_head``: the LM head too; see `spiking_lm.nn.weight_quantization`) and save it with its code and
    tokenizer in ``output_dir``. Returns ``{"fp32_bytes", "w8_bytes", "quantized_modules"}``.

    Raises:
        ValueError: ``source`` is not a spiking_lm model, or ``output_dir`` is ``source`` itself.
    """
    check_model_reference(source)
    if Path(source).exists() and Path(output_dir).resolve() == Path(source).resolve():
        raise ValueError(f"output_dir {output_dir!r} is the source folder: write the W8 model to another folder")
    model, tokenizer = load_model_and_tokenizer(source, "auto", trust_remote_code)
    if not hasattr(model, "quantize_weights"):
        raise ValueError(f"{source!r} holds a {type(model).__name__}, not a spiking_lm model: nothing to quantize")
    before = weight_bytes(model)
    model.quantize_weights("int8", lm_head=lm_head)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return {"fp32_bytes": before, "w8_bytes": weight_bytes(model), "quantized_modules": model.config.quantized_modules}
