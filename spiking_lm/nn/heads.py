"""Losses and heads shared by the decoders: the causal-LM loss (transformers' `ForCausalLMLoss`, fused), the
sequence-classification loss transformers uses, and classification from the last token, as transformers'
`…ForSequenceClassification` decoders do it.

This module imports only `torch` and `transformers` so that it can travel with a saved model's code.
"""

from __future__ import annotations

import torch
from transformers.utils import logging
from transformers.utils.generic import can_return_tuple

from .dispatch import run_differentiable
from .outputs import SpikingSequenceClassifierOutputWithPast, head_output

__all__ = ["LastTokenClassifierMixin", "causal_lm_loss", "sequence_classification_loss"]

logger = logging.get_logger(__name__)


def _token_nll_sum(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Σ over kept rows of logsumexp(row) − row[target], in fp32 from logits of any float dtype. Compiled, forward
    and backward are one pass each over the logits, with no fp32 copy of them and no log-softmax tensor. The
    target's logit is picked by a compare inside the row sum, not by `gather`, whose backward scattered into a
    zeroed fp32 tensor of the logits' size (32 MB at 1024 × 8192) before the pass that wrote the gradient."""
    keep = targets != ignore_index
    logits = logits.float()
    columns = torch.arange(logits.shape[-1], device=logits.device)
    picked = torch.where(columns == targets.unsqueeze(-1), logits, 0.0).sum(-1)
    return torch.where(keep, torch.logsumexp(logits, -1) - picked, 0.0).sum()


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    vocab_size: int,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """transformers' `ForCausalLMLoss` (labels shifted left, ``ignore_index`` skipped, the mean over kept tokens, or
    the sum over ``num_items_in_batch`` as the Trainer passes it under gradient accumulation), in fp32, without
    materializing fp32 logits: under bf16 autocast it is ~3× faster forward + backward at an 8k vocabulary."""
    if logits.shape[-1] != vocab_size:
        raise ValueError(f"logits have {logits.shape[-1]} entries per position, vocab_size is {vocab_size}")
    if shift_labels is None:
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    targets = shift_labels.reshape(-1).to(logits.device)
    outside = (targets != ignore_index) & ((targets < 0) | (targets >= vocab_size))
    # a compiled gather would read out of bounds where cross_entropy raises (traced: inductor's own bounds check)
    if not torch.compiler.is_compiling() and bool(outside.any()):
        bad = int(targets[outside][0])
        raise IndexError(f"label {bad} is out of range for vocab_size {vocab_size} (and is not ignore_index)")
    total = run_differentiable(_token_nll_sum, "auto", logits.reshape(-1, vocab_size), targets, int(ignore_index))
    if num_items_in_batch is None:
        return total / (targets != ignore_index).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def sequence_classification_loss(config, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Regression (one label, MSE), single-label (cross-entropy) or multi-label (BCE), as `transformers` does."""
    if config.problem_type is None:
        if config.num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return torch.nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
    if config.problem_type == "single_label_classification":
        return torch.nn.functional.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class LastTokenClassifierMixin:
    """`forward` of a decoder classifier: ``self.score`` on ``self.model``'s last hidden state, read at each
    sequence's last non-padding token, exactly as transformers' decoders (OPT, Llama) pick it: found from
    ``input_ids`` and ``pad_token_id``; batches need a ``pad_token_id``; with ``inputs_embeds`` the last position
    is taken, with a warning that padding cannot be seen there."""

    def _last_token_index(self, input_ids, batch_size: int, length: int, device) -> torch.Tensor:
        pad = self.config.pad_token_id
        if pad is None and batch_size != 1:
            raise ValueError("batches of more than one sequence need config.pad_token_id to find each last token")
        if pad is None or input_ids is None:
            if pad is not None:
                logger.warning_once(f"{type(self).__name__} will not detect padding tokens in `inputs_embeds`: it "
                                    "reads the last position of every row")  # fmt: skip
            return torch.full((batch_size,), length - 1, device=device)
        not_pad = (input_ids != pad).int() * torch.arange(length, device=device)
        return not_pad.argmax(-1)  # the rightmost token that is not padding (left or right padding)

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, labels=None,
                output_attentions=None, output_hidden_states=None, output_firing_rates=False,
                **kwargs):  # fmt: skip
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             inputs_embeds=inputs_embeds, use_cache=False, output_attentions=output_attentions,
                             output_hidden_states=output_hidden_states, output_firing_rates=output_firing_rates,
                             return_dict=True)  # fmt: skip
        logits = self.score(outputs.last_hidden_state)  # (B, L, labels)
        batch_size, length = logits.shape[:2]
        last = self._last_token_index(input_ids, batch_size, length, logits.device)
        pooled = logits[torch.arange(batch_size, device=logits.device), last]
        loss = None if labels is None else sequence_classification_loss(self.config, pooled, labels)
        return head_output(SpikingSequenceClassifierOutputWithPast, outputs, loss, pooled)
