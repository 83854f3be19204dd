"""Sequence-classification heads shared by the decoders: the loss transformers uses, and classification from the
last token, as transformers' `…ForSequenceClassification` decoders do it.

This module imports only `torch` and `transformers` so that it can travel with a saved model's code.
"""

from __future__ import annotations

import torch
from transformers.utils import logging
from transformers.utils.generic import can_return_tuple

from .outputs import SpikingSequenceClassifierOutputWithPast, head_output

__all__ = ["LastTokenClassifierMixin", "sequence_classification_loss"]

logger = logging.get_logger(__name__)


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
