"""Tiny random-initialised hosts of every supported family (CPU, seconds to build)."""

from __future__ import annotations

import os
import warnings
from collections import Counter

# Under pytest-xdist (the README's test command runs one worker per core) each worker gets an
# equal share of the cores, set before torch is imported so that child processes the tests
# start (CLI runs, torchrun) inherit it too: workers that each spin every core's OpenMP threads
# slow each other down several-fold.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = str(_share)

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(_share)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per core, at most 8 (each holds a torch process, ~1 GB)."""
    return max(1, min(os.cpu_count() or 1, 8))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The order in which pytest-xdist hands test files to the workers (``--dist loadfile
    --no-loadscope-reorder``: each file one unit, its module fixtures built once, given to
    whichever worker is free, in this order).

    Longest first, so that no long file starts when the other worker is nearly done: a file's
    ``XDIST_COST_S`` (its measured seconds on 2 cores, set in the few files that take more than
    20 s), then its count of end-to-end (``slow``) tests."""
    def file_of(item: pytest.Item) -> str:
        return item.nodeid.split("::")[0]

    slow = Counter(file_of(item) for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: (-getattr(item.module, "XDIST_COST_S", 0),
                                 -slow[file_of(item)]))  # stable: each file keeps its order


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


def manual_timm_forward(vit, x):
    """A timm ViT forward written out, returning the embedding and each block's attention."""
    attentions = []
    h = vit._pos_embed(vit.patch_embed(x))
    h = vit.norm_pre(vit.patch_drop(h))
    for block in vit.blocks:
        y = block.norm1(h)
        b, n, c = y.shape
        attn_mod = block.attn
        qkv = attn_mod.qkv(y).reshape(b, n, 3, attn_mod.num_heads, c // attn_mod.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q * attn_mod.scale @ k.transpose(-2, -1)).softmax(-1)
        if attn.requires_grad:
            attn.retain_grad()
        attentions.append(attn)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        h = h + block.ls1(attn_mod.proj(out))
        h = h + block.ls2(block.mlp(block.norm2(h)))
    h = vit.norm(h)
    return vit.forward_head(h, pre_logits=True), attentions
