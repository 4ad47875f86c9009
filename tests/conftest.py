"""Tiny random-initialised hosts of every supported family (CPU, seconds to build)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

warnings.filterwarnings("ignore", message=".*Cython evaluation.*")

CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": (64, 32), "layers": 2, "width": 64, "head_width": 32,
                   "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                 "layers": 2},
}


def make_tiny_clip(seed: int = 0) -> nn.Module:
    import open_clip

    torch.manual_seed(seed)
    return open_clip.CLIP(**CLIP_CFG).eval()


def make_timm_vit(seed: int = 0, img_size=(64, 32)) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                             img_size=img_size, depth=3).eval()


def make_osnet(seed: int = 0) -> nn.Module:
    import torchreid

    torch.manual_seed(seed)
    return torchreid.models.build_model("osnet_x0_25", num_classes=10, pretrained=False).eval()


class PlainNet(nn.Module):
    """A user's own model: conv trunk -> pooled embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                   nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x).mean(dim=(2, 3)))


def make_plain(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return PlainNet().eval()


@pytest.fixture
def tiny_clip() -> nn.Module:
    return make_tiny_clip()


@pytest.fixture
def timm_vit() -> nn.Module:
    return make_timm_vit()


@pytest.fixture
def osnet() -> nn.Module:
    return make_osnet()


@pytest.fixture
def plain() -> nn.Module:
    return make_plain()


def images(n: int, size=(64, 32), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, *size, generator=g)
