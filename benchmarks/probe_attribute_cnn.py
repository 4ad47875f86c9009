"""Can a non-linear reader of the pixels read SynthPedes' attributes, gender above all?

Issue 28 asks for a learned router with mean accuracy >= 90 % and gender >= 85 % on identities
it never saw. Linear probes of the zoo CLIP's features and of the pixels read gender at chance
(``probe_attribute_readability.py``). This probe trains a small CNN (4 conv blocks, one linear
head per attribute, cross-entropy summed over the 12 attributes, horizontal flips) on the
images of the training identities and scores it, per attribute, on the images of held-out
identities; gender also per viewpoint. It also measures, model-free, how much a gender change
alters an image: the pixels that differ when each held-out image is re-rendered with the other
gender (``reid_explain.attributes.causal.changed_render``).

    python benchmarks/probe_attribute_cnn.py --seed 611 --ids 1500 --epochs 12
    python benchmarks/probe_attribute_cnn.py --seed 611 --ids 1500 --epochs 12 \
        --extra-train-seeds 612 --threads 2   # twice the people to learn from
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

from reid_explain.attributes.causal import changed_render
from reid_explain.data.schema import MARKET1501
from reid_explain.synthpedes.planning import SynthConfig, _gen, plan, render_sample, sample_view
from reid_explain.zoo.registry import ZOO_DATA


def reader(n_classes: list[int]) -> nn.Module:
    def block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
                             nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1),
                             nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))

    class Reader(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(block(3, 24), block(24, 48), block(48, 64), block(64, 96),
                                      nn.AdaptiveAvgPool2d((4, 2)), nn.Flatten())
            self.heads = nn.ModuleList(nn.Linear(96 * 8, n) for n in n_classes)

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            z = self.body(x)
            return [head(z) for head in self.heads]

    return Reader()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=611)
    p.add_argument("--ids", type=int, default=1500)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--extra-train-seeds", type=int, nargs="*", default=[],
                   help="SynthPedes seeds whose people (all of them: other draws than --seed's) "
                        "are added to the training images; held out stays --seed's test split")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    cfg = dict(ZOO_DATA) | {"seed": args.seed, "n_ids": args.ids, "images_per_id": 6,
                            "couple": False}
    synth = plan(SynthConfig(**cfg))
    test = set(synth.test_pids)
    names = list(MARKET1501.names)
    states = {a: list(MARKET1501[a].states) for a in names}
    images, labels, is_test, views, specs = [], [], [], [], []
    # --seed's people (its test split held out), then --extra-train-seeds' people, all to learn
    # from (other draws: none of them is a held-out person)
    for synth_i in [synth] + [plan(SynthConfig(**(cfg | {"seed": extra})))
                              for extra in args.extra_train_seeds]:
        for spec in synth_i.samples:
            if spec.pid == 0:
                continue
            images.append(render_sample(synth_i, spec, with_captions=False).rendered.image)
            person = synth_i.identity_of(spec)
            labels.append([states[a].index(person.get(a)) for a in names])
            is_test.append(synth_i is synth and spec.pid in test)
            rng = _gen(synth_i.config.seed, spec.pid, spec.cam, spec.idx)
            views.append(sample_view(rng, synth_i.cameras[spec.cam - 1],
                                     synth_i.config.occlusion_prob).viewpoint)
            specs.append(spec)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    y = torch.tensor(labels)
    is_test_t = torch.tensor(is_test)
    views_a = np.array(views)
    tr, te = (~is_test_t).nonzero().squeeze(1), is_test_t.nonzero().squeeze(1)
    print(f"rendered {len(x)} images ({len(tr)} train, {len(te)} held out) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)

    # model-free: how many pixels does the other gender change, per held-out image?
    gender_changed = []
    for i in te.tolist()[:600]:
        spec = specs[i]
        rendered, _ = changed_render(synth, spec, "gender", seed=0)
        gender_changed.append(int((rendered.image != images[i]).any(axis=-1).sum()))
    gender_changed_a = np.array(gender_changed)
    print(f"gender change: {np.mean(gender_changed_a):.0f} pixels changed on average, "
          f"{np.mean(gender_changed_a == 0):.3f} of images unchanged", flush=True)

    model = reader([len(states[a]) for a in names])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = args.epochs * ((len(tr) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        model.train()
        order = tr[torch.randperm(len(tr))]
        total = 0.0
        for s in range(0, len(order), 64):
            idx = order[s:s + 64]
            xb = x[idx]
            flip = torch.rand(len(idx)) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            out = model(xb)
            loss = sum(loss_fn(o, y[idx, k]) for k, o in enumerate(out))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        print(f"epoch {epoch + 1}: loss {total / len(tr):.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)

    model.eval()
    preds = []
    with torch.no_grad():
        for s in range(0, len(te), 256):
            out = model(x[te[s:s + 256]])
            preds.append(torch.stack([o.argmax(1) for o in out], 1))
    pred = torch.cat(preds)
    correct = (pred == y[te]).numpy()
    accuracy = {a: round(float(correct[:, k].mean()), 3) for k, a in enumerate(names)}
    g = names.index("gender")
    by_view = {v: round(float(correct[views_a[te.numpy()] == v, g].mean()), 3)
               for v in ("front", "back", "side")}
    result = {"seed": args.seed, "ids": args.ids, "epochs": args.epochs,
              "extra_train_seeds": args.extra_train_seeds,
              "train_images": len(tr), "held_out_images": len(te),
              "accuracy": accuracy, "mean_accuracy": round(float(correct.mean()), 3),
              "gender_by_view": by_view,
              "view_share": {v: round(float(np.mean(views_a[te.numpy()] == v)), 3)
                             for v in ("front", "back", "side")},
              "gender_changed_pixels_mean": round(float(gender_changed_a.mean()), 1),
              "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result, indent=1), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1, allow_nan=False)


if __name__ == "__main__":
    main()
