"""Reference training of MoSAIC-ReID experts: ID cross-entropy + batch-hard triplet.

The pieces work in a user's own loop::

    moe = LoraMoE(adapter, schema="market1501").apply()      # host frozen, experts trainable
    head = IdClassifier(dim, num_ids)
    router = LearnedRouter(moe.layout, dim)                   # optional
    opt = torch.optim.AdamW(trainable_parameters(moe, head, router), lr=3e-4)
    for batch in loader:                                      # P identities x K images
        losses = moe_losses(moe, batch["img"], batch["pid"], batch["attributes"], head, router)
        opt.zero_grad(); losses["loss"].backward(); opt.step()

``train_image_moe`` is that loop over a Market-1501-style data set, ``evaluate_routing`` the
query/gallery evaluation with oracle, learned and no routing, and ``train_image_moe_main`` the
``reid-explain train --task image --moe`` command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._util.io import strict_json
from ..errors import InputError
from .routers import LearnedRouter, PixelRouter, learned_embed, router_logits

# --------------------------------------------------------------------------- losses

def batch_hard_triplet(embeddings: Tensor, pids: Tensor, margin: float = 0.3) -> Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) on Euclidean distances.

    Anchors without a positive or a negative in the batch are left out.
    """
    dist = torch.cdist(embeddings, embeddings).clamp_min(1e-12)
    same = pids[:, None] == pids[None, :]
    eye = torch.eye(len(pids), dtype=torch.bool, device=pids.device)
    pos_mask, neg_mask = same & ~eye, ~same
    valid = pos_mask.any(1) & neg_mask.any(1)
    if not bool(valid.any()):
        return embeddings.sum() * 0.0
    hardest_pos = dist.masked_fill(~pos_mask, float("-inf")).amax(1)
    hardest_neg = dist.masked_fill(~neg_mask, float("inf")).amin(1)
    return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()


class IdClassifier(nn.Module):
    """BNNeck + linear identity classifier on the embedding (the ID cross-entropy's head)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.neck = nn.BatchNorm1d(in_features)
        self.neck.bias.requires_grad_(False)
        self.fc = nn.Linear(in_features, num_classes, bias=False)
        nn.init.normal_(self.fc.weight, std=0.001)

    def forward(self, embeddings: Tensor) -> Tensor:
        return self.fc(self.neck(embeddings))

    def config(self) -> dict[str, int]:
        return {"in_features": self.in_features, "num_classes": self.num_classes}


def trainable_parameters(moe: Any, *heads: nn.Module | None) -> list[nn.Parameter]:
    """Experts, the host's unfrozen parameters (``unfreeze_last``) and the heads', once each."""
    seen: set[int] = set()
    out = []
    candidates = [*moe.parameters(), *moe.model.parameters()]
    for head in heads:
        if head is not None:
            candidates.extend(head.parameters())
    for p in candidates:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def moe_losses(moe: Any, images: Tensor, pids: Tensor, codes: Tensor,
               classifier: nn.Module, router: LearnedRouter | None = None,
               margin: float = 0.3, router_weight: float = 1.0) -> dict[str, Tensor]:
    """One batch's losses with oracle routing: ``id`` + ``triplet`` (+ ``router`` BCE/CE on the
    first-pass features). ``loss`` is their sum."""
    pids = torch.as_tensor(pids, device=images.device)
    out: dict[str, Tensor] = {}
    if router is not None:
        out["router"] = router.loss(router_logits(moe, router, images), codes) * router_weight
    with moe.route(codes):
        embeddings = moe.adapter.embed_image(images)
    out["id"] = F.cross_entropy(classifier(embeddings), pids)
    out["triplet"] = batch_hard_triplet(embeddings, pids, margin)
    out["loss"] = sum(out.values())
    return out


# --------------------------------------------------------------------------- data

def pk_batches(pids: Sequence[int], p: int, k: int, generator: torch.Generator
               ) -> Iterator[list[int]]:
    """One epoch of P identities x K images batches (sampling with replacement when an
    identity has fewer than K images), as torchreid's ``RandomIdentitySampler``."""
    by_pid: dict[int, list[int]] = {}
    for i, pid in enumerate(pids):
        by_pid.setdefault(int(pid), []).append(i)
    order = [list(by_pid)[i] for i in torch.randperm(len(by_pid), generator=generator)]
    for start in range(0, len(order) - p + 1, p):
        batch = []
        for pid in order[start:start + p]:
            items = by_pid[pid]
            pick = (torch.randperm(len(items), generator=generator)[:k] if len(items) >= k
                    else torch.randint(len(items), (k,), generator=generator))
            batch.extend(items[int(j)] for j in pick)
        yield batch


def load_split(dataset: Any) -> dict[str, Tensor]:
    """A whole (small) data set split in memory: images, pids, camids, attribute codes."""
    items = [dataset[i] for i in range(len(dataset))]
    return {"img": torch.stack([it["img"] for it in items]),
            "pid": torch.tensor([it["pid"] for it in items]),
            "camid": torch.tensor([it["camid"] for it in items]),
            "attributes": torch.stack([it["attributes"] for it in items])}


# --------------------------------------------------------------------------- loops

def train_image_moe(moe: Any, train: dict[str, Tensor], classifier: nn.Module,
                    router: LearnedRouter | None = None, *, epochs: int = 10, p: int = 8,
                    k: int = 4, lr: float = 3e-4, router_lr: float | None = None,
                    weight_decay: float = 1e-4, margin: float = 0.3, seed: int = 0,
                    log: Any = None) -> list[dict[str, float]]:
    """Train experts (+ classifier, + router) on an in-memory split; per-epoch mean losses.

    ``router_lr`` (default ``lr``): the router is a small head on fixed features and learns
    faster with a larger step."""
    identities = len(set(train["pid"].tolist()))
    if identities < p:
        raise InputError(f"the training split has {identities} identities, fewer than P={p} "
                         "identities per batch: lower p (--p) or use more identities")
    generator = torch.Generator().manual_seed(seed)
    params = trainable_parameters(moe, classifier)
    groups = [{"params": params, "lr": lr}]
    if router is not None:
        groups.append({"params": list(router.parameters()), "lr": router_lr or lr})
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    history = []
    modes = [(m, m.training) for m in (moe.model, classifier, router) if m is not None]
    for module, _ in modes:
        module.train()
    try:
        for epoch in range(epochs):
            sums: dict[str, float] = {}
            n = 0
            for batch in pk_batches(train["pid"].tolist(), p, k, generator):
                idx = torch.tensor(batch)
                losses = moe_losses(moe, train["img"][idx], train["pid"][idx],
                                    train["attributes"][idx], classifier, router, margin)
                optimizer.zero_grad(set_to_none=True)
                losses["loss"].backward()
                optimizer.step()
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach())
                n += 1
            record = {"epoch": epoch + 1, **{k_: v / max(n, 1) for k_, v in sums.items()}}
            history.append(record)
            if log is not None:
                log(record)
    finally:
        for module, mode in modes:
            module.train(mode)
    return history


def train_router(moe: Any, router: LearnedRouter, train: dict[str, Tensor], *, epochs: int = 30,
                 lr: float = 2e-3, batch_size: int = 64, flip: bool = True, seed: int = 0,
                 weight_decay: float = 1e-4) -> list[dict[str, float]]:
    """Fit a router alone on a split's images and attribute codes (its BCE/CE loss), before
    or instead of training it with the experts: a :class:`~reid_explain.moe.routers.
    PixelRouter` learns from scratch and needs more steps than the experts' P x K schedule.
    AdamW with a one-cycle schedule; ``flip``: random horizontal flips (the attributes do not
    change with them). The router is left in eval mode; per-epoch mean losses."""
    generator = torch.Generator().manual_seed(seed)
    n = len(train["img"])
    if n == 0:
        raise InputError("train_router: the split has no images")
    steps = epochs * ((n + batch_size - 1) // batch_size)
    optimizer = torch.optim.AdamW(router.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    history = []
    router.train()
    try:
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator)
            total = 0.0
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                images = train["img"][idx]
                if flip:
                    mirrored = torch.rand(len(idx), generator=generator) < 0.5
                    images = torch.where(mirrored[:, None, None, None], images.flip(-1), images)
                loss = router.loss(router_logits(moe, router, images), train["attributes"][idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach()) * len(idx)
            history.append({"epoch": epoch + 1, "router": total / n})
    finally:
        router.eval()
    return history


@torch.no_grad()
def embed_split(moe: Any, split: dict[str, Tensor], routing: str,
                router: LearnedRouter | None = None, batch_size: int = 64) -> Tensor:
    """Embeddings of a split with ``routing`` "oracle", "none" or "learned" (needs router; the
    router's own gate mode, or "learned:hard" / "learned:soft")."""
    out = []
    for start in range(0, len(split["img"]), batch_size):
        images = split["img"][start:start + batch_size]
        if routing == "oracle":
            with moe.route(split["attributes"][start:start + batch_size]):
                out.append(moe.adapter.embed_image(images))
        elif routing.startswith("learned"):
            if router is None:
                raise ValueError("learned routing needs a router")
            mode = routing.partition(":")[2] or None
            out.append(learned_embed(moe, router, images, mode)[0])
        elif routing == "none":
            with moe.bypass():
                out.append(moe.adapter.embed_image(images))
        else:
            raise ValueError(f"routing must be oracle, learned or none, got {routing!r}")
    return torch.cat(out)


def evaluate_routing(moe: Any, query: dict[str, Tensor], gallery: dict[str, Tensor],
                     router: LearnedRouter | None = None,
                     routings: Sequence[str] = ("oracle", "learned:hard", "learned:soft", "none")
                     ) -> dict[str, Any]:
    """mAP / rank-1 per routing, the oracle's lead over each learned routing, the router's
    attribute accuracy on the query split and, when ``"none"`` (the host alone) is among the
    routings, each routing's AP gain over the host with a 95% bootstrap CI over identities
    (``versus_host``: the mean over query identities of their queries' AP difference, paired
    on the same queries)."""
    from reid_explain.evaluation.bootstrap import bootstrap_ci
    from reid_explain.evaluation.retrieval import image_reid_metrics

    out: dict[str, Any] = {}
    per_query: dict[str, Any] = {}
    for routing in routings:
        if routing.startswith("learned") and router is None:
            continue
        q = embed_split(moe, query, routing, router)
        g = embed_split(moe, gallery, routing, router)
        m = image_reid_metrics(q, g, query["pid"], gallery["pid"], query["camid"],
                               gallery["camid"], per_query=True)
        out[routing] = {"mAP": float(m["mAP"]), "rank1": float(m["cmc"][0])}
        valid = m["per_query"][m["per_query"]["valid"]]
        per_query[routing] = valid[["pid", "ap"]]
    if "none" in per_query:
        host = per_query["none"]
        out["versus_host"] = {}
        for routing, frame in per_query.items():
            if routing == "none":
                continue
            gain = (frame["ap"] - host["ap"]).groupby(host["pid"]).mean().to_numpy()
            ci = bootstrap_ci(gain, seed=0)
            out["versus_host"][routing] = {"ap_gain": ci.estimate, "low": ci.low,
                                           "high": ci.high, "identities": len(gain)}
    if router is not None:
        out["router_accuracy"] = router_accuracy(moe, router, query)
    learned = [r for r in routings if r.startswith("learned") and r in out]
    if "oracle" in out and learned:
        out["oracle_gap"] = {r: {k: out["oracle"][k] - out[r][k] for k in ("mAP", "rank1")}
                             for r in learned}
    return out


@torch.no_grad()
def router_accuracy(moe: Any, router: LearnedRouter, split: dict[str, Tensor]) -> dict[str, float]:
    """Per attribute group: share of known codes the router predicts right."""
    logits = torch.cat([router_logits(moe, router, split["img"][s:s + 64])
                        for s in range(0, len(split["img"]), 64)])
    predicted = router.predict(logits)
    truth = split["attributes"]
    out = {}
    for group, column in zip(moe.layout.groups, moe.layout.columns, strict=True):
        known = truth[:, column] >= 0
        if bool(known.any()):
            out[group.attribute] = float((predicted[known, column] == truth[known, column])
                                         .float().mean())
    return out


# --------------------------------------------------------------------------- command

def build_parser(prog: str = "reid-explain train --task image --moe") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=(
        "Train MoSAIC-ReID attribute LoRA experts (and a learned router) on a tiny timm ViT, on "
        "a Market-1501-style folder with an attribute table (e.g. a SynthPedes export)."))
    p.add_argument("--task", default="image", choices=["image"])
    p.add_argument("--moe", action="store_true", default=True)
    p.add_argument("--root", required=True, help="Market-1501-style root (SynthPedes export)")
    p.add_argument("--attributes", default=None,
                   help="attribute file (.mat/.csv/.parquet); default "
                        "<root>/market1501/market_attribute.mat")
    p.add_argument("--schema", default=None, help="market1501 | dukemtmc (default: from file)")
    p.add_argument("--out", default="reid_explain_output/moe")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--model", default="vit_tiny_patch16_224", help="timm ViT architecture")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--host-weights", default=None, help="state_dict file for the host")
    p.add_argument("--last-n", type=int, default=2)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--alpha", type=float, default=8.0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--pooling", default="mean", choices=["mean", "sum"])
    p.add_argument("--unfreeze-last", type=int, default=0)
    p.add_argument("--router", default="learned", choices=["learned", "pixels", "none"],
                   help="learned: a head on the host's expert-free features, trained with the "
                        "experts; pixels: a small CNN on the image, fit first (--router-epochs)")
    p.add_argument("--router-epochs", type=int, default=30,
                   help="epochs of the pixel router's own fit before the experts train")
    p.add_argument("--router-mode", default="hard", choices=["hard", "soft"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--p", type=int, default=8, help="identities per batch")
    p.add_argument("--k", type=int, default=4, help="images per identity")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--router-lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    return p


def train_image_moe_main(argv: Sequence[str] | None = None) -> int:
    """``reid-explain train --task image --moe``: train, evaluate, save; prints a JSON summary."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from reid_explain.errors import ReidExplainError

    try:
        summary = _run(args)
    except (ReidExplainError, ValueError) as exc:
        print(f"reid-explain train: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


def _run(args: argparse.Namespace) -> dict[str, Any]:
    import timm

    from reid_explain.data.attributes import load_attributes
    from reid_explain.data.datasets import ImageReidDataset, default_transform, resolve_market_root
    from reid_explain.training.session import attach

    torch.manual_seed(args.seed)
    root = Path(args.root)
    attr_path = Path(args.attributes) if args.attributes else _default_attributes(root)
    table = load_attributes(attr_path, args.schema)
    transform = default_transform(args.height, args.width)
    market = resolve_market_root(root)
    splits = {name: load_split(ImageReidDataset(market, name, transform=transform,
                                                attributes=table, schema=args.schema))
              for name in ("train", "query", "gallery")}

    host = timm.create_model(args.model, pretrained=False, num_classes=0,
                             img_size=(args.height, args.width), depth=args.depth)
    if args.host_weights:
        from .._util.io import load_torch_file

        host.load_state_dict(load_torch_file(args.host_weights, "host weights"))
    host.eval()
    schema = table.attrs.get("schema") if args.schema is None else args.schema
    session = attach(host, modifications=["lora_moe"], lora_moe={
        "schema": schema, "last_n": args.last_n, "rank": args.rank, "alpha": args.alpha,
        "dropout": args.dropout, "pooling": args.pooling, "unfreeze_last": args.unfreeze_last})
    moe = session.modification("lora_moe")
    dim = int(host.num_features)
    classifier = IdClassifier(dim, int(splits["train"]["pid"].max()) + 1)
    router: LearnedRouter | None = None
    start = time.perf_counter()
    if args.router == "pixels":
        router = PixelRouter(moe.layout, mode=args.router_mode)
        train_router(moe, router, splits["train"], epochs=args.router_epochs,
                     lr=args.router_lr, seed=args.seed)
    elif args.router == "learned":
        router = LearnedRouter(moe.layout, dim, mode=args.router_mode)
    joint_router = None if args.router == "pixels" else router  # a pixel router stays as fit
    history = train_image_moe(moe, splits["train"], classifier, joint_router, epochs=args.epochs,
                              p=args.p, k=args.k, lr=args.lr, router_lr=args.router_lr,
                              seed=args.seed,
                              log=lambda r: print(json.dumps(r), file=sys.stderr))
    seconds = time.perf_counter() - start
    metrics = evaluate_routing(moe, splits["query"], splits["gallery"], router)
    from .checkpoint import save_checkpoint

    out = Path(args.out)
    save_checkpoint(out / "checkpoint", moe, router, classifier)
    summary = {"data": {"root": str(root), "attributes": str(attr_path),
                        **{k: int(len(v["img"])) for k, v in splits.items()}},
               "experts": moe.layout.num_experts, "targets": moe.target_names,
               "train_seconds": round(seconds, 2), "history": history, "metrics": metrics,
               "checkpoint": str(out / "checkpoint")}
    (out / "summary.json").write_text(strict_json(summary, indent=1))
    session.detach()
    return summary


def _default_attributes(root: Path) -> Path:
    for candidate in (root / "market1501" / "market_attribute.mat",
                      root / "market_attribute.mat", root / "duke_attribute.mat"):
        if candidate.exists():
            return candidate
    raise ValueError(f"{root}: no attribute file found; pass --attributes")
