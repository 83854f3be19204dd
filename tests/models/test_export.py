"""The causal LMs export: `torch.export` with a dynamic batch and sequence length, and ONNX through the dynamo
exporter, each checked against eager logits on shapes other than the traced one."""

import pytest
import torch
from torch.export import Dim, export

from .conftest import CAUSAL_LM_CLASSES, tiny_model

IDS = [cls.__name__ for cls in CAUSAL_LM_CLASSES]
SHAPES = [(1, 5), (3, 13), (4, 64)]  # none of them the traced (2, 8)


class Logits(torch.nn.Module):
    """What a deployment exports: token ids and mask in, logits out (no cache)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def traced_inputs():
    ids = torch.randint(3, 99, (2, 8), generator=torch.Generator().manual_seed(0))
    batch, length = Dim("batch", min=1, max=64), Dim("length", min=2, max=64)
    return (ids, torch.ones_like(ids)), {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}}


def inputs_of(shape):
    ids = torch.randint(3, 99, shape, generator=torch.Generator().manual_seed(sum(shape)))
    mask = torch.ones_like(ids)
    mask[0, : shape[1] // 3] = 0  # left padding in the first row
    return ids, mask


@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES, ids=IDS)
@pytest.mark.parametrize("neuron_type", ["lif", "nilif"])
def test_torch_export_with_dynamic_batch_and_length_matches_eager(model_class, neuron_type):
    wrapper = Logits(tiny_model(model_class, neuron_type=neuron_type)).eval()
    arguments, dynamic = traced_inputs()
    with torch.no_grad():
        wrapper(*arguments)  # a model used eagerly first (its per-forward memo holds concrete lengths)
    program = export(wrapper, arguments, dynamic_shapes=dynamic)
    exported = program.module()
    for shape in SHAPES:
        with torch.no_grad():
            torch.testing.assert_close(exported(*inputs_of(shape)), wrapper(*inputs_of(shape)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES, ids=IDS)
def test_onnx_export_through_dynamo_runs_in_onnxruntime_like_eager(model_class, tmp_path):
    pytest.importorskip("onnxscript", reason="the export extra is not installed")
    runtime = pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    wrapper = Logits(tiny_model(model_class)).eval()
    arguments, dynamic = traced_inputs()
    torch.onnx.export(wrapper, arguments, dynamo=True, dynamic_shapes=dynamic, verbose=False).save(tmp_path / "m.onnx")
    session = runtime.InferenceSession(str(tmp_path / "m.onnx"))
    for shape in SHAPES:
        ids, mask = inputs_of(shape)
        (logits,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(logits), wrapper(ids, mask), rtol=1e-4, atol=1e-4)
