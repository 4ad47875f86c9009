"""Adapter for torchreid models (CNNs from ``torchreid.models.build_model``).

Matches both layouts of torchreid: upstream deep-person-reid (``torchreid.models.osnet``) and the
PyPI package's repackaging (``torchreid.reid.models.osnet``), by the model class's module path,
so torchreid need not even be imported. In eval mode torchreid models return embeddings, which
is what similarity explanations need.
"""

from __future__ import annotations

from torch import Tensor, nn

from reid_explain.hookspecs import hookimpl

from ._cnn import CNNAdapter, pool_embedding


class TorchreidAdapter(CNNAdapter):
    """torchreid CNNs (OSNet, ResNet, ...): spatial layer found by probing (conv5, layer4)."""

    name = "torchreid"
    priority = 50

    @classmethod
    def matches(cls, model: nn.Module, layer: object = None) -> bool:
        module = type(model).__module__
        return module.startswith("torchreid.models.") or module.startswith("torchreid.reid.models.")

    def _embed_image(self, images: Tensor) -> Tensor:
        return pool_embedding(self.model(images), self.model)


@hookimpl
def register_adapters(register):
    register(TorchreidAdapter)
