"""Token relevance for the text side of a text-image match: Integrated Gradients over token
embeddings (Captum ``LayerIntegratedGradients`` on the host's token-embedding layer).

The baseline replaces every word token by the padding token and keeps the start and end tokens
(so the text tower pools at the same position). Relevance per token is the attribution summed
over the embedding dimension.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.attribution import Attribution
from reid_explain.plugin_api.targets import Target


class TokenIntegratedGradients(Attribution):
    """Integrated Gradients over text-token embeddings (word tokens -> padding baseline)."""

    name = "token_ig"
    needs_parameter_gradients = False
    modality = "text"
    requires = frozenset({"text"})

    def attribute(self, inputs: Tensor, target: Target, baselines: Any = None,
                  n_steps: int = 32, pad_token: int = 0,
                  internal_batch_size: int | None = None) -> Tensor:
        if baselines is None:
            special = self.adapter.special_tokens(inputs)
            baselines = torch.where(special, inputs, torch.full_like(inputs, pad_token))
        from captum.attr import LayerIntegratedGradients  # lazy: plugins load fast

        lig = LayerIntegratedGradients(self.forward_func(target),
                                       self.adapter.text_embedding_layer())
        attr = lig.attribute(inputs, baselines=baselines, additional_forward_args=target.args,
                             n_steps=n_steps, internal_batch_size=internal_batch_size)
        return attr.sum(dim=-1)


@hookimpl
def register_attributions(register):
    register(TokenIntegratedGradients)
