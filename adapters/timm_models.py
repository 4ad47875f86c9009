"""Adapter for timm models that are not plain ViTs: CNNs (ResNet, ConvNeXt, EfficientNet,
MobileNet, RegNet) and hierarchical transformers (Swin, and others whose stages output maps).

The embedding is timm's pre-logits feature (``forward_head(forward_features(x),
pre_logits=True)``). The spatial layer is the last stage timm's ``feature_info`` names (the
module timm itself would return features from), else the last spatial map found by probing.
Swin's stages output ``(B, h, w, C)`` (timm ``output_fmt="NHWC"``): the adapter routes them
through its own tap as ``(B, C, h, w)``, so Grad-CAM and Captum's layer methods see channels
in dim 1.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from reid_explain.hookspecs import hookimpl

from ._cnn import CNNAdapter, pool_embedding
from .timm_vit import _is_timm_vit


def _is_timm(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.")


class TimmAdapter(CNNAdapter):
    """timm CNNs and hierarchical transformers: pre-logits embedding, last stage's map."""

    name = "timm"
    description = "timm CNNs and hierarchical transformers (ResNet, ConvNeXt, Swin, ...)"
    priority = 35

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None,
                 image_size: tuple[int, int] | None = None, **options: Any) -> None:
        self.model = model
        self.channels_last = str(getattr(model, "output_fmt", "NCHW")) == "NHWC"
        if self.channels_last:  # no (B, C, h, w) stages for multi-stage methods
            self.capabilities = self.capabilities - {"stages"}
        super().__init__(model, layer=layer, image_size=image_size, **options)

    @classmethod
    def matches(cls, model: nn.Module, layer: object = None) -> bool:
        return _is_timm(model) and not _is_timm_vit(model)

    def _default_layer(self) -> str | None:
        """The module of the last feature stage timm declares, if it is a submodule."""
        info = getattr(self.model, "feature_info", None)
        if not info:
            return None
        name = info[-1].get("module") if isinstance(info[-1], dict) else None
        names = {n for n, _ in self.model.named_modules()}
        return name if name in names else None

    def input_size(self) -> tuple[int, int] | None:
        """The size of a model timm marks ``fixed_input_size`` (Swin, MaxViT windows); CNNs
        with global pooling take any size."""
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        embed = getattr(self.model, "patch_embed", None)
        if embed is not None and getattr(embed, "strict_img_size", False) and \
                getattr(embed, "img_size", None) is not None:
            return int(embed.img_size[0]), int(embed.img_size[1])
        if not cfg.get("fixed_input_size"):
            return None
        # a model built with img_size= (MaxViT, CoAtNet at a ReID 256x128) keeps that size on
        # itself; its pretrained_cfg still names the size of the published weights
        own = getattr(self.model, "img_size", None)
        if own is not None:
            own = (own, own) if isinstance(own, int) else tuple(own)
            return int(own[0]), int(own[1])
        if cfg.get("input_size"):
            return int(cfg["input_size"][1]), int(cfg["input_size"][2])
        return None

    def _embed_image(self, images: Tensor) -> Tensor:
        if hasattr(self.model, "forward_head") and hasattr(self.model, "forward_features"):
            return self.model.forward_head(self.model.forward_features(images), pre_logits=True)
        return pool_embedding(self.model(images), self.model)


@hookimpl
def register_adapters(register):
    register(TimmAdapter)
