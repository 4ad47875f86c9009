"""Adapter for torchreid models (CNNs from ``torchreid.models.build_model``).

Matches both layouts of torchreid: upstream deep-person-reid (``torchreid.models.osnet``) and the
PyPI package's repackaging (``torchreid.reid.models.osnet``), by the model class's module path,
so torchreid need not even be imported. In eval mode torchreid models return embeddings, which
is what similarity explanations need. The spatial layer is found by probing the whole module
tree (MLFN's blocks sit in a ModuleList; PCB's part pooling comes after ``layer4``).
"""

from __future__ import annotations

from torch import Tensor, nn

from reid_explain.hookspecs import hookimpl

from ._cnn import CNNAdapter, pool_embedding

#: input sizes torchreid models assert in their forward (HACNN's crops are fixed to 160x64)
DECLARED_INPUT_SIZES: dict[str, tuple[int, int]] = {"HACNN": (160, 64)}


class TorchreidAdapter(CNNAdapter):
    """torchreid CNNs (OSNet, ResNet, ...): spatial layer found by probing (conv5, layer4)."""

    name = "torchreid"
    description = "torchreid CNNs (both the upstream and the PyPI layout)"
    priority = 50

    @classmethod
    def matches(cls, model: nn.Module, layer: object = None) -> bool:
        module = type(model).__module__
        return module.startswith("torchreid.models.") or module.startswith("torchreid.reid.models.")

    def input_size(self) -> tuple[int, int] | None:
        return DECLARED_INPUT_SIZES.get(type(self.model).__name__)

    def _embed_image(self, images: Tensor) -> Tensor:
        return pool_embedding(self.model(images), self.model)


@hookimpl
def register_adapters(register):
    register(TorchreidAdapter)
