"""Reference training loop for text-to-image ReID on a tiny open_clip ViT (CPU-sized).

The base objective is IRRA's (SDM, optionally + ITC); InterPartAbility's plugins (``ppim``,
``attention_constraint``) are added through :func:`reid_explain.training.attach`, exactly as a
user would add them to their own loop. Data: SynthPedes (rendered in memory, with part masks
for grounding evaluation) or any CUHK-PEDES-format annotation file. Checkpoints hold the host's
weights, its config and the plugins' heads, and reload into a working model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._util.io import atomic_path, load_torch_file
from ..errors import DataFormatError, InputError
from .objectives import OBJECTIVES, base_objective
from .session import TrainingSession

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class TinyClipConfig:
    """A CLIP small enough to train on a CPU in minutes."""

    image_size: tuple[int, int] = (128, 64)
    patch_size: int = 8
    width: int = 128
    layers: int = 4
    head_width: int = 32
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    embed_dim: int = 128
    context_length: int = 64

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch rows and columns of the image grid."""
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    def open_clip_config(self) -> dict[str, Any]:
        return {"embed_dim": self.embed_dim,
                "vision_cfg": {"image_size": tuple(self.image_size), "layers": self.layers,
                               "width": self.width, "head_width": self.head_width,
                               "patch_size": self.patch_size},
                "text_cfg": {"context_length": self.context_length, "vocab_size": 49408,
                             "width": self.text_width, "heads": self.text_heads,
                             "layers": self.text_layers}}


def tiny_clip(config: TinyClipConfig | None = None, seed: int = 0) -> nn.Module:
    import open_clip

    torch.manual_seed(seed)
    return open_clip.CLIP(**(config or TinyClipConfig()).open_clip_config())


@dataclass
class TextImageData:
    """Images (normalised tensors), one caption per row, pids, phrase spans, part masks."""

    images: Tensor  # (I, 3, H, W)
    image_pids: np.ndarray  # (I,)
    captions: list[str]
    caption_image: np.ndarray  # (C,) index of each caption's image
    phrases: list[list[dict[str, Any]]] = field(default_factory=list)
    masks: Tensor | None = None  # (I, K, H, W) bool, SynthPedes only
    part_names: tuple[str, ...] = ()

    @property
    def caption_pids(self) -> np.ndarray:
        return self.image_pids[self.caption_image]

    def __len__(self) -> int:
        return len(self.captions)


def _to_tensor(images: Sequence[np.ndarray], mean: Sequence[float],
               std: Sequence[float]) -> Tensor:
    from ..core.inputs import normalised_images

    return normalised_images(images, mean, std)


def synthpedes_text_image(n_ids: int = 120, images_per_id: int = 6, seed: int = 0,
                          image_size: tuple[int, int] = (128, 64),
                          captions_per_image: int = 2) -> dict[str, TextImageData]:
    """Train and test splits of a SynthPedes set, rendered in memory (train ids ≠ test ids)."""
    from ..data.schema import PARTS
    from ..synthpedes.planning import SynthConfig, iter_samples, plan
    from ..synthpedes.rendering import masks_from_labels

    synth = plan(SynthConfig(n_ids=n_ids, images_per_id=images_per_id, seed=seed,
                             height=image_size[0], width=image_size[1], val_fraction=0.0,
                             captions_per_image=captions_per_image, distractors=0))
    out: dict[str, dict[str, list]] = {s: {"images": [], "pids": [], "captions": [],
                                           "caption_image": [], "phrases": [], "masks": []}
                                       for s in ("train", "test")}
    for sample in iter_samples(synth):
        if sample.spec.pid == 0:
            continue
        split = out["train" if sample.spec.split == "train" else "test"]
        index = len(split["images"])
        split["images"].append(sample.rendered.image)
        split["pids"].append(sample.spec.pid)
        split["masks"].append(masks_from_labels(sample.rendered.labels))
        for caption in sample.captions:
            split["captions"].append(caption.text)
            split["caption_image"].append(index)
            split["phrases"].append([{"start": p.start, "end": p.end, "text": p.text,
                                      "part": p.part} for p in caption.phrases])
    return {name: TextImageData(images=_to_tensor(s["images"], OPENAI_MEAN, OPENAI_STD),
                                image_pids=np.asarray(s["pids"]), captions=s["captions"],
                                caption_image=np.asarray(s["caption_image"]),
                                phrases=s["phrases"],
                                masks=torch.from_numpy(np.stack(s["masks"])), part_names=PARTS)
            for name, s in out.items()}


def cuhk_text_image(annotations: str | os.PathLike, split: str,
                    image_size: tuple[int, int] = (128, 64)) -> TextImageData:
    """One split of a CUHK-PEDES / ICFG-PEDES / RSTPReid annotation file, loaded in memory."""
    from ..data.datasets import read_image
    from ..data.text_annotations import load_text_annotations

    records = load_text_annotations(annotations)[split].records
    if not records:
        raise InputError(f"{annotations}: split {split!r} is empty")
    images, pids, captions, owner = [], [], [], []
    for i, record in enumerate(records):
        image = read_image(record.image_path).resize(image_size[::-1])
        images.append(np.asarray(image))
        pids.append(record.pid)
        for caption in record.captions:
            captions.append(caption)
            owner.append(i)
    return TextImageData(images=_to_tensor(images, OPENAI_MEAN, OPENAI_STD),
                         image_pids=np.asarray(pids), captions=captions,
                         caption_image=np.asarray(owner))


@dataclass
class TrainConfig:
    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-4
    #: learning rate of the plugins' own heads, as a multiple of ``lr`` (new, small modules)
    plugin_lr_scale: float = 10.0
    weight_decay: float = 0.02
    seed: int = 0
    objective: str = "sdm"
    logit_scale: float = 50.0
    losses: tuple[str, ...] = ()
    loss_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    log_every: int = 0
    device: str = "cpu"
    #: stop after this many steps (the schedule is fitted to it); None: all ``epochs``
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise InputError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        self.losses = tuple(self.losses)
        if self.objective == "none" and not self.losses:
            raise InputError("objective='none' trains nothing without plugin losses")


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    order = torch.randperm(n, generator=generator)
    return [order[i: i + batch_size] for i in range(0, n - batch_size + 1, batch_size)] or \
        [order]


def identity_phrase_texts(data: TextImageData) -> dict[int, frozenset[str]]:
    """Per identity, the (normalised) texts of every phrase its captions name, so a loss can
    tell which other images of a batch show what a phrase says although the caption sampled
    for them does not say it ({} without phrases)."""
    from ..plugin_api.phrases import normalise_phrase

    if not data.phrases:
        return {}
    named: dict[int, set[str]] = {}
    for pid, caption, phrases in zip(data.caption_pids.tolist(), data.captions, data.phrases,
                                     strict=True):
        named.setdefault(int(pid), set()).update(  # a span without text: the caption's words
            normalise_phrase(p.get("text") or caption[int(p["start"]):int(p["end"])])
            for p in phrases)
    return {pid: frozenset(texts) for pid, texts in named.items()}


def train_text_image(model: nn.Module, data: TextImageData, config: TrainConfig,
                     on_step: Callable[[dict[str, Any]], None] | None = None
                     ) -> tuple[list[dict[str, float]], TrainingSession | None]:
    """Train ``model`` in place; returns the loss history and the (detached) session.

    ``on_step(record)`` runs after every step (e.g. a validation curve adding to ``record``).
    """
    import open_clip

    device = torch.device(config.device)
    model.to(device)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    session = None
    if config.losses:
        session = TrainingSession(model, config.losses, options=config.loss_options).attach()
    plugin_params = list(session.parameters()) if session else []
    params = list(model.parameters()) + plugin_params
    groups = [{"params": list(model.parameters())}]
    if plugin_params:
        groups.append({"params": plugin_params, "lr": config.lr * config.plugin_lr_scale})
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * max(1, len(data) // config.batch_size)
    if config.max_steps is not None:
        steps = min(steps, config.max_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, steps // 10))
        * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    pids_all = torch.as_tensor(data.caption_pids)
    named = identity_phrase_texts(data) if config.losses else {}
    history: list[dict[str, float]] = []
    model.train()
    step = 0
    try:
        for epoch in range(config.epochs):
            if step >= steps:  # max_steps reached: no more (empty) epochs
                break
            for rows in _batches(len(data), config.batch_size, generator):
                if step >= steps:
                    break
                image_rows = torch.as_tensor(data.caption_image[rows.numpy()])
                captions = [data.captions[int(r)] for r in rows]
                tokens = open_clip.tokenize(captions, context_length=model.context_length)
                image_features = model.encode_image(data.images[image_rows].to(device))
                text_features = model.encode_text(tokens.to(device))
                loss = base_objective(config.objective, image_features, text_features,
                                      pids_all[rows].to(device), config.logit_scale)
                record = {"epoch": epoch, "step": step, "base": loss.item()}
                if session is not None:
                    batch = {"captions": captions, "pids": pids_all[rows].to(device),
                             "phrases": [data.phrases[int(r)] for r in rows]
                             if data.phrases else None,
                             "identity_phrases": [named[int(p)] for p in pids_all[rows]]
                             if named else None}
                    aux = session(batch)
                    loss = loss + aux
                    record.update(session.last)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 5.0)
                optimizer.step()
                schedule.step()
                record["loss"] = loss.item()
                if on_step is not None:
                    on_step(record)
                history.append(record)
                if config.log_every and step % config.log_every == 0:
                    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                      for k, v in record.items()}), flush=True)
                step += 1
    finally:
        model.eval()
        if session is not None:
            session.detach()
    return history, session


@torch.no_grad()
def encode_text_image(model: nn.Module, data: TextImageData,
                      batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """L2-normalised caption and image features of a split."""
    import open_clip

    model.eval()
    device = next(model.parameters()).device
    text = torch.cat([model.encode_text(open_clip.tokenize(data.captions[i: i + batch_size],
                                                           context_length=model.context_length
                                                           ).to(device)).cpu()
                      for i in range(0, len(data.captions), batch_size)])
    image = torch.cat([model.encode_image(data.images[i: i + batch_size].to(device)).cpu()
                       for i in range(0, len(data.images), batch_size)])
    return torch.nn.functional.normalize(text, dim=-1), torch.nn.functional.normalize(image,
                                                                                      dim=-1)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, clip_config: TinyClipConfig,
                    session: TrainingSession | None, train_config: TrainConfig,
                    extra: dict[str, Any] | None = None) -> Path:
    """Host weights + config + plugin heads, written atomically."""
    payload = {"format": "reid-explain/text-image/1", "model": model.state_dict(),
               "clip_config": asdict(clip_config), "train_config": asdict(train_config),
               "plugins": session.state_dict() if session is not None else {},
               "extra": extra or {}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict[str, Any]:
    """The payload of a text-image checkpoint, checked to be one (``mmap``: tensors mapped,
    not read, for a caller that wants its plain fields)."""
    payload = load_torch_file(path, "text-image checkpoint", mmap=mmap)
    if not isinstance(payload, dict) or payload.get("format") != "reid-explain/text-image/1":
        raise DataFormatError(f"{path}: not a reid-explain text-image checkpoint (no format "
                              "'reid-explain/text-image/1')")
    return payload


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, TrainingSession | None,
                                                      dict[str, Any]]:
    """Rebuild the host and a (detached) session holding the trained plugin heads."""
    path = Path(path)
    payload = read_checkpoint(path)
    missing = [k for k in ("model", "clip_config", "train_config", "plugins")
               if k not in payload]
    if missing:
        raise DataFormatError(f"{path}: text-image checkpoint lacks {missing}")
    clip_config = TinyClipConfig(**{k: tuple(v) if isinstance(v, list) else v
                                    for k, v in payload["clip_config"].items()})
    model = tiny_clip(clip_config)
    model.load_state_dict(payload["model"])
    model.eval()
    train = payload["train_config"]
    session = None
    if train["losses"]:
        session = TrainingSession(model, train["losses"], options=train["loss_options"])
        session.load_state_dict(payload["plugins"])
    return model, session, payload


def _json_object(flag: str) -> Any:
    """An argparse type: a JSON object, or an error naming the flag."""

    def parse(text: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise argparse.ArgumentTypeError(f"{flag}: not JSON ({error})") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"{flag}: expected a JSON object, got {text!r}")
        return value

    parse.__name__ = "JSON object"
    return parse


def train_text_image_main(argv: Sequence[str] | None = None) -> int:
    """``reid-explain train --task text-image``."""
    parser = argparse.ArgumentParser(prog="reid-explain train --task text-image",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthpedes",
                        help="'synthpedes' (rendered in memory) or a CUHK-PEDES-format "
                             "annotation file / data set folder")
    parser.add_argument("--ids", type=int, default=120, help="SynthPedes identities")
    parser.add_argument("--ppim", action="store_true", help="add PPIM phrase supervision")
    parser.add_argument("--constraint", action="store_true",
                        help="add the attention constraint")
    parser.add_argument("--constraint-weight", type=float, default=1.0)
    parser.add_argument("--ppim-weight", type=float, default=1.0)
    parser.add_argument("--ppim-options", type=_json_object("--ppim-options"), default={},
                        help='more PPIM parameters as JSON, e.g. \'{"patch_block": 0}\'')
    parser.add_argument("--constraint-options", type=_json_object("--constraint-options"),
                        default={}, help='more attention-constraint parameters as JSON, '
                                         'e.g. \'{"blocks": [0]}\'')
    parser.add_argument("--objective", default="sdm", choices=OBJECTIVES)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="reid_explain_output/text_image.pt")
    args = parser.parse_args(argv)
    clip_config = TinyClipConfig()
    if args.data == "synthpedes":
        splits = synthpedes_text_image(n_ids=args.ids, seed=args.seed,
                                       image_size=clip_config.image_size)
        train, test = splits["train"], splits["test"]
    else:
        train = cuhk_text_image(args.data, "train", clip_config.image_size)
        test = cuhk_text_image(args.data, "test", clip_config.image_size)
    losses = (("ppim",) if args.ppim else ()) + (("attention_constraint",)
                                                if args.constraint else ())
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         seed=args.seed, objective=args.objective, losses=losses,
                         loss_options={"ppim": {**args.ppim_options,
                                                "weight": args.ppim_weight},
                                       "attention_constraint": {
                                           **args.constraint_options,
                                           "weight": args.constraint_weight}},
                         log_every=20)
    model = tiny_clip(clip_config, seed=args.seed)
    start = time.perf_counter()
    history, session = train_text_image(model, train, config)
    seconds = time.perf_counter() - start
    metrics = retrieval_metrics(model, test)
    save_checkpoint(args.out, model, clip_config, session, config,
                    extra={"seconds": seconds, "test": metrics})
    print(json.dumps({"seconds": round(seconds, 1), "steps": len(history),
                      "final_loss": round(history[-1]["loss"], 4), "test": metrics,
                      "checkpoint": args.out}, indent=2))
    return 0


def retrieval_metrics(model: nn.Module, data: TextImageData) -> dict[str, float]:
    """Text-to-image R@1/5/10, mAP, mINP (IRRA's definitions) on a split."""
    from ..evaluation.retrieval import text_image_metrics

    text, image = encode_text_image(model, data)
    result = text_image_metrics(text, image, data.caption_pids, data.image_pids)
    return {k: float(v) for k, v in result.items() if isinstance(v, (int, float, np.floating))}
