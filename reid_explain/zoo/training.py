"""``reid-explain zoo train NAME``: reproduce a zoo checkpoint from its spec.

Image ReID (torchreid): torchreid's own ``CrossEntropyLoss`` (label smoothing) and
``TripletLoss`` (batch hard, on L2-normalised features) on P x K batches, AdamW with warm-up and
cosine decay, flip / translate / random-erasing augmentation. Text-image ReID (open_clip): the
project's reference loop (:func:`~reid_explain.training.text_image.train_text_image`, IRRA's SDM)
with no plugin.
Both log a validation curve on identities never trained on, then score the *saved and reloaded*
weights on the test split, so the card's numbers are those of the shipped file.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._util.io import atomic_path
from ..plugin_api.adapter import IMAGENET_MEAN, IMAGENET_STD
from .data import ZooSplit, render_splits, text_image_data
from .registry import (
    CARD_FORMAT,
    TOKEN_ROWS,
    TOKEN_VALUES,
    ZooSpec,
    card_path,
    load,
    sha256,
    spec,
    weights_path,
)

# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def image_features(model: nn.Module, split: ZooSplit, device: torch.device,
                   batch_size: int = 256) -> Tensor:
    model.eval()
    return torch.cat([model(split.tensor(IMAGENET_MEAN, IMAGENET_STD,
                                         range(s, min(s + batch_size, len(split))))
                            .to(device)).cpu() for s in range(0, len(split), batch_size)])


def image_retrieval(model: nn.Module, split: ZooSplit, device: torch.device) -> dict[str, float]:
    """R@1/5/10, mAP and mINP (percent) of query vs gallery images (torchreid's protocol)."""
    from ..evaluation.retrieval import image_reid_metrics

    feats = image_features(model, split, device)
    q, g = split.is_query, ~split.is_query
    result = image_reid_metrics(feats[q], feats[g], split.pids[q], split.pids[g],
                                split.camids[q], split.camids[g])
    cmc = result["cmc"]
    return {"R1": 100 * float(cmc[0]), "R5": 100 * float(cmc[4]), "R10": 100 * float(cmc[9]),
            "mAP": 100 * float(result["mAP"]), "mINP": 100 * float(result["mINP"]),
            "queries": int(q.sum()), "gallery": int(g.sum())}


def text_retrieval(model: nn.Module, split: ZooSplit) -> dict[str, float]:
    """Text-to-image R@1/5/10, mAP, mINP (IRRA's protocol: every image of a split is in the
    gallery)."""
    from ..training.text_image import OPENAI_MEAN, OPENAI_STD, retrieval_metrics

    data = text_image_data(split, OPENAI_MEAN, OPENAI_STD)
    out = retrieval_metrics(model, data)
    return {k: out[k] for k in ("R1", "R5", "R10", "mAP", "mINP")} | {
        "queries": len(data), "gallery": len(split)}


# --------------------------------------------------------------------------- image ReID


def _augment(x: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Random horizontal flip, translation by up to ``pad`` pixels, random erasing (p = 0.5)."""
    from torchvision.transforms import v2

    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1).to(x.device), x.flip(-1), x)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    erase = v2.RandomErasing(p=0.5, value=0)
    return torch.stack([erase(img) for img in x])


def train_image_model(zoo: ZooSpec, splits: dict[str, ZooSplit], device: torch.device,
                      steps: int, log: Callable[[dict[str, Any]], None]
                      ) -> tuple[nn.Module, list[dict[str, Any]], dict[str, Any]]:
    """A torchreid model trained with torchreid's softmax + triplet losses; the curve."""
    from .._util.lazy import import_torchreid

    torchreid = import_torchreid()
    from ..moe.train import pk_batches

    cfg = zoo.training
    train = splits["train"]
    labels = {int(pid): i for i, pid in enumerate(sorted(set(train.pids.tolist())))}
    targets = torch.tensor([labels[int(p)] for p in train.pids])
    torch.manual_seed(cfg["seed"])
    model = torchreid.models.build_model(zoo.architecture["name"], num_classes=len(labels),
                                         loss=zoo.architecture["loss"], pretrained=False)
    model.to(device)
    softmax = torchreid.losses.CrossEntropyLoss(num_classes=len(labels),
                                                use_gpu=device.type == "cuda",
                                                label_smooth=cfg["label_smooth"])
    triplet = torchreid.losses.TripletLoss(margin=cfg["margin"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"],
                                  weight_decay=cfg["weight_decay"])
    warmup = max(1, int(cfg["warmup"] * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    generator = torch.Generator().manual_seed(cfg["seed"])
    curve: list[dict[str, Any]] = []
    step, epoch = 0, 0
    while step < steps:
        for rows in pk_batches(train.pids.tolist(), cfg["p"], cfg["k"], generator):
            if step >= steps:
                break
            model.train()
            x = _augment(train.tensor(IMAGENET_MEAN, IMAGENET_STD, rows), generator).to(device)
            y = targets[rows].to(device)
            logits, features = model(x)
            # triplet on L2-normalised features: on raw OSNet features (ReLU'd fc) the triplet
            # term shrinks every feature towards zero and the softmax never starts (measured)
            losses = {"softmax": softmax(logits, y),
                      "triplet": triplet(F.normalize(features, dim=1), y)}
            loss = losses["softmax"] + losses["triplet"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step % cfg["eval_every"] == 0 or step == steps:
                val = image_retrieval(model, splits["val"], device)
                point = {"step": step, "epoch": epoch, "loss": round(loss.item(), 4),
                         **{k: round(v.item(), 4) for k, v in losses.items()},
                         "val_R1": round(val["R1"], 2), "val_mAP": round(val["mAP"], 2)}
                curve.append(point)
                log(point)
        epoch += 1
    return model.eval(), curve, {"num_classes": len(labels), "epochs": epoch}


# --------------------------------------------------------------------------- text-image ReID


def train_clip_model(zoo: ZooSpec, splits: dict[str, ZooSplit], device: torch.device,
                     steps: int | None, log: Callable[[dict[str, Any]], None]
                     ) -> tuple[nn.Module, list[dict[str, Any]], dict[str, Any]]:
    """A tiny open_clip CLIP trained with the reference text-image loop (no plugin)."""
    from ..training.text_image import (
        OPENAI_MEAN,
        OPENAI_STD,
        TinyClipConfig,
        TrainConfig,
        tiny_clip,
        train_text_image,
    )

    cfg = zoo.training
    arch = {k: tuple(v) if isinstance(v, list) else v for k, v in zoo.architecture.items()}
    model = tiny_clip(TinyClipConfig(**arch), seed=cfg["seed"])
    data = text_image_data(splits["train"], OPENAI_MEAN, OPENAI_STD)
    per_epoch = max(1, len(data) // cfg["batch_size"])
    epochs = cfg["epochs"] if steps is None else max(1, math.ceil(steps / per_epoch))
    total = epochs * per_epoch if steps is None else steps
    config = TrainConfig(epochs=epochs, batch_size=cfg["batch_size"], lr=cfg["lr"],
                         weight_decay=cfg["weight_decay"], seed=cfg["seed"],
                         objective=cfg["objective"], logit_scale=cfg["logit_scale"],
                         device=str(device), max_steps=steps)
    curve: list[dict[str, Any]] = []

    def on_step(record: dict[str, Any]) -> None:
        done = record["step"] + 1
        if done % cfg["eval_every"] == 0 or done == total:
            val = text_retrieval(model, splits["val"])
            model.train()
            point = {"step": done, "epoch": record["epoch"], "loss": round(record["loss"], 4),
                     "val_R1": round(val["R1"], 2), "val_mAP": round(val["mAP"], 2)}
            curve.append(point)
            log(point)

    train_text_image(model, data, config, on_step=on_step)
    return model.eval(), curve, {"epochs": epochs, "steps": total}


# --------------------------------------------------------------------------- saving


def stored_tensors(zoo: ZooSpec, model: nn.Module, captions: list[str]) -> dict[str, Tensor]:
    """The state dict to store; a CLIP's token embedding keeps only the rows its training
    captions use (the other ~49k rows never received a gradient; docs/zoo.md)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if zoo.family == "open_clip":
        import open_clip

        used = torch.unique(open_clip.tokenize(captions, context_length=model.context_length))
        table = state.pop("token_embedding.weight")
        state[TOKEN_ROWS] = used.to(torch.int64).contiguous()
        state[TOKEN_VALUES] = table[used].contiguous()
    return state


def card_markdown(info: dict[str, Any]) -> str:
    """A human-readable model card from the JSON card."""
    test, data, train = info["test"], info["data"], info["training"]
    lines = [f"# {info['name']}", "", info["summary"] + ".", "",
             f"- Family: `{info['family']}`; load with `reid_explain.zoo.load({info['name']!r})`",
             f"- Architecture: `{json.dumps(info['architecture'])}`",
             f"- Data: SynthPedes seed {data['config']['seed']}, {data['config']['n_ids']} "
             f"identities at {data['config']['height']}x{data['config']['width']}: "
             f"{data['train_ids']} train ids ({data['train_images']} images), "
             f"{data['val_ids']} validation ids, {data['test_ids']} test ids "
             f"({data['test_images']} images)",
             f"- Command: `{train['command']}`",
             f"- Training: {train['steps_run']} steps, {train['epochs']} epochs, "
             f"{train['wall_seconds'] / 60:.1f} min on {train['device']} "
             f"({train['machine']}), torch {train['torch']}",
             f"- Settings: `{json.dumps(info['settings'])}`",
             f"- Weights: {info['weights_bytes'] / 1e6:.2f} MB, SHA-256 "
             f"`{info['weights_sha256'][:16]}…`", "",
             f"## Test split ({test['queries']} queries, {test['gallery']} gallery images)", "",
             "| R@1 | R@5 | R@10 | mAP | mINP | target |", "|---|---|---|---|---|---|",
             f"| {test['R1']:.2f} | {test['R5']:.2f} | {test['R10']:.2f} | {test['mAP']:.2f} | "
             f"{test['mINP']:.2f} | R@1 ≥ {info['targets'].get('R1', 0):.0f}: "
             f"{'met' if info['target_met'] else 'missed'} |", "",
             "## Learning curve (validation identities, never trained on)", "",
             "| step | loss | val R@1 | val mAP |", "|---|---|---|---|"]
    lines += [f"| {p['step']} | {p['loss']:.3f} | {p['val_R1']:.2f} | {p['val_mAP']:.2f} |"
              for p in info["curve"]]
    return "\n".join(lines) + "\n"


def train(name: str, out: str | Path | None = None, device: str = "cpu",
          steps: int | None = None, n_ids: int | None = None,
          log: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train zoo model ``name`` from its spec, write ``<name>.safetensors`` + ``.json`` + ``.md``
    into ``out`` (default: the package's weights folder) atomically; return the card.

    ``steps`` and ``n_ids`` shrink the run (tests, smoke runs); the card records them.
    """
    from safetensors.torch import save_file

    zoo = spec(name)
    log = log or (lambda point: print(json.dumps(point), flush=True))
    dev = torch.device(device)
    data_cfg = dict(zoo.data) | ({"n_ids": n_ids} if n_ids else {})
    start = time.perf_counter()
    splits = render_splits(data_cfg)
    render_seconds = time.perf_counter() - start
    if zoo.task == "image":
        model, curve, extra = train_image_model(zoo, splits, dev,
                                                steps or zoo.training["steps"], log)
    else:
        model, curve, extra = train_clip_model(zoo, splits, dev, steps, log)
    wall = time.perf_counter() - start
    captions = [c for caps in splits["train"].captions for c in caps]
    tensors = stored_tensors(zoo, model, captions)
    command = " ".join(["reid-explain zoo train", name] + ([f"--device {device}"]
                       if device != "cpu" else []) + ([f"--steps {steps}"] if steps else [])
                       + ([f"--ids {n_ids}"] if n_ids else []))
    info: dict[str, Any] = {
        "format": CARD_FORMAT, "name": zoo.name, "family": zoo.family, "task": zoo.task,
        "summary": zoo.summary, "architecture": zoo.architecture,
        "num_classes": extra.get("num_classes"),
        "input_size": [data_cfg["height"], data_cfg["width"]],
        "data": {"config": data_cfg, "train_ids": len(set(splits["train"].pids.tolist())),
                 "train_images": len(splits["train"]),
                 "val_ids": len(set(splits["val"].pids.tolist())),
                 "test_ids": len(set(splits["test"].pids.tolist())),
                 "test_images": len(splits["test"])},
        "settings": zoo.training,
        "training": {"command": command, "steps_run": curve[-1]["step"] if curve else 0,
                     "epochs": extra["epochs"], "wall_seconds": round(wall, 1),
                     "render_seconds": round(render_seconds, 1), "device": str(dev),
                     "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
                     "torch": torch.__version__, "python": sys.version.split()[0]},
        "targets": zoo.targets, "curve": curve}
    root = Path(out) if out is not None else None
    final_weights, final_card = weights_path(name, root), card_path(name, root)
    final_weights.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(final_weights) as tmp_weights:
        save_file(tensors, str(tmp_weights), metadata={"format": CARD_FORMAT, "name": name})
        tmp_weights.chmod(0o644)  # package data: readable by everyone, like the card
    info["weights_sha256"] = sha256(final_weights)
    info["weights_bytes"] = final_weights.stat().st_size
    info["test"] = {}
    with atomic_path(final_card) as tmp_card:
        tmp_card.write_text(json.dumps(info, indent=2))
    # score the file as shipped, reloaded through the public loader
    reloaded = load(name, device=dev, root=final_weights.parent)
    test = (image_retrieval(reloaded, splits["test"], dev) if zoo.task == "image"
            else text_retrieval(reloaded, splits["test"]))
    info["test"] = {k: round(v, 2) if isinstance(v, float) else v for k, v in test.items()}
    info["target_met"] = all(test.get(k, 0.0) >= v for k, v in zoo.targets.items())
    with atomic_path(final_card) as tmp_card:
        tmp_card.write_text(json.dumps(info, indent=2))
    with atomic_path(final_card.with_suffix(".md")) as tmp_md:
        tmp_md.write_text(card_markdown(info))
    return info
