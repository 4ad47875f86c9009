"""``reid-explain demo``: the main job end to end on SynthPedes, on CPU, in about a minute.

It renders a small SynthPedes test split, wraps three small random-initialised hosts (a
torchreid OSNet, an open_clip ViT CLIP and a timm ViT), explains each query against its top
gallery matches with every registered image attribution method, scores each map by masking its
top patches against random ones, explains captions against images on the CLIP host, and writes
overlays plus ``summary.json``. The output directory appears whole or not at all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import plugin_manager
from ._io import atomic_path
from .explainer import explainify

IMAGE_SIZE = (128, 64)


def demo_hosts(image_size: tuple[int, int] = IMAGE_SIZE) -> dict[str, Callable[[], nn.Module]]:
    """Small random-initialised hosts of each family, sized for a CPU."""

    def osnet() -> nn.Module:
        import torchreid

        return torchreid.models.build_model("osnet_x0_25", num_classes=8, pretrained=False)

    def clip() -> nn.Module:
        import open_clip

        return open_clip.CLIP(embed_dim=64, vision_cfg={
            "image_size": tuple(image_size), "layers": 4, "width": 128, "head_width": 32,
            "patch_size": 16}, text_cfg={"context_length": 77, "vocab_size": 49408,
                                         "width": 128, "heads": 4, "layers": 3})

    def vit() -> nn.Module:
        import timm

        return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                                 img_size=tuple(image_size), depth=4)

    return {"osnet": osnet, "clip": clip, "vit": vit}


HOST_LABELS = {"osnet": "torchreid-osnet_x0_25", "clip": "open_clip-vit", "vit": "timm-vit_tiny"}


def synth_split(n_ids: int, seed: int) -> dict[str, Any]:
    """Query and gallery images (uint8 HxWx3), pids, cameras and captions of a SynthPedes set."""
    from .data.synth_plan import SynthConfig, iter_samples, plan

    synth = plan(SynthConfig(n_ids=n_ids, images_per_id=6, seed=seed, height=IMAGE_SIZE[0],
                             width=IMAGE_SIZE[1], train_fraction=0.5, val_fraction=0.0))
    out: dict[str, Any] = {s: {"images": [], "pids": [], "cams": [], "captions": []}
                           for s in ("query", "gallery")}
    specs = [s for s in synth.samples if s.split in ("query", "gallery")]
    for sample in iter_samples(synth, specs):
        split = out[sample.spec.split]
        split["images"].append(sample.rendered.image)
        split["pids"].append(sample.spec.pid)
        split["cams"].append(sample.spec.cam)
        split["captions"].append(sample.captions[0].text if sample.captions else "")
    return out


def to_tensor(images: Sequence[np.ndarray], mean: Sequence[float],
              std: Sequence[float]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


FAST_OPTIONS = {"integrated_gradients": {"n_steps": 16, "internal_batch_size": 64},
                "occlusion": {"perturbations_per_eval": 32}}


def run_demo(out: str | Path = "reid_explain_output/demo", methods: Sequence[str] | None = None,
             seed: int = 0, quick: bool = False, top_k: int = 3) -> int:
    torch.manual_seed(seed)
    n_ids = 8 if quick else 16
    n_queries = 2 if quick else 4
    data = synth_split(n_ids, seed)
    available = {n: e for n, e in plugin_manager.registry("attributions").items()
                 if e.obj.modality == "image"}
    methods = list(methods) if methods else sorted(available)
    for method in methods:
        plugin_manager.get("attributions", method)  # unknown names fail before any work
    summary: dict[str, Any] = {"image_size": IMAGE_SIZE, "seed": seed, "hosts": {},
                               "queries": n_queries, "gallery": len(data["gallery"]["pids"])}
    rows = []
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for key, factory in demo_hosts().items():
            host_name = HOST_LABELS[key]
            torch.manual_seed(seed)
            model = factory().eval()
            with explainify(model) as exp:
                adapter = exp.adapter
                query = to_tensor(data["query"]["images"][:n_queries], adapter.pixel_mean,
                                  adapter.pixel_std)
                gallery = to_tensor(data["gallery"]["images"], adapter.pixel_mean,
                                    adapter.pixel_std)
                host: dict[str, Any] = {"adapter": adapter.describe(), "methods": {}}
                for method in methods:
                    needs = set(available[method].obj.requires)
                    if not needs <= set(adapter.capabilities):
                        host["methods"][method] = {"skipped": f"needs {sorted(needs)}"}
                        continue
                    start = time.perf_counter()
                    result = exp.explain(query, gallery, method=method, top_k=top_k,
                                         **FAST_OPTIONS.get(method, {}))
                    seconds = time.perf_counter() - start
                    scores = exp.score(result, ["masking_drop"])
                    gap = torch.cat([scores["masking_drop.query_gap"],
                                     scores["masking_drop.gallery_gap"]])
                    png = result.query.save_png(tmp / host_name / f"{method}_query.png",
                                                indices=range(min(top_k, len(result))))
                    result.gallery.save_png(tmp / host_name / f"{method}_gallery.png",
                                            indices=range(min(top_k, len(result))))
                    host["methods"][method] = {
                        "pairs": len(result), "seconds": round(seconds, 3),
                        "masking_gap_mean": round(float(gap.mean()), 4),
                        "masking_gap_positive_share": round(float((gap > 0).float().mean()), 3),
                        "png": str(png.relative_to(tmp))}
                    rows.append((host_name, method, len(result), seconds, float(gap.mean())))
                if "text" in adapter.capabilities:
                    captions = [c for c in data["query"]["captions"][:n_queries] if c]
                    text = exp.explain_text(captions, gallery, top_k=1)
                    host["text"] = [{"caption": captions[int(t)],
                                     "gallery_pid": data["gallery"]["pids"][int(i)],
                                     "score": round(float(s), 4),
                                     "words": [(w, round(r, 4)) for w, r in text.text.words(k)]}
                                    for k, ((t, i), s) in enumerate(zip(text.pairs.tolist(),
                                                                        text.scores,
                                                                        strict=True))]
                summary["hosts"][host_name] = host
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{'host':24s} {'method':22s} {'pairs':>5s} {'seconds':>8s} {'masking gap':>12s}")
    for host_name, method, pairs, seconds, gap in rows:
        print(f"{host_name:24s} {method:22s} {pairs:5d} {seconds:8.2f} {gap:12.4f}")
    print(f"wrote {Path(out) / 'summary.json'} and overlays under {out}/")
    return 0
