"""How readable is each attribute from the zoo CLIP's features and from pixels? Linear probes
(sklearn LogisticRegression) trained on one set of identities, scored on held-out ones."""
import sys
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from reid_explain.synthpedes.planning import SynthConfig, plan
from reid_explain.training.text_image import OPENAI_MEAN, OPENAI_STD
from reid_explain.zoo import load
from reid_explain.zoo.data import render_splits
from reid_explain.zoo.registry import ZOO_DATA

seed = int(sys.argv[1]) if len(sys.argv) > 1 else 611
cfg = dict(ZOO_DATA) | {"seed": seed, "n_ids": 400, "images_per_id": 6, "couple": False}
t = time.perf_counter()
splits = render_splits(cfg, splits=("train", "test"))
synth = plan(SynthConfig(**cfg))
print("render", round(time.perf_counter() - t, 1), flush=True)
model = load("clip-synthpedes").eval()
visual = model.visual
blocks = visual.transformer.resblocks
def feats(split):
    x = split.tensor(OPENAI_MEAN, OPENAI_STD)
    taps = {}
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: taps.__setitem__(k, o))
             for k, b in enumerate(blocks)]
    out = {"embed": [], **{f"block{k}": [] for k in range(len(blocks))}, "pixels": []}
    with torch.no_grad():
        for s in range(0, len(x), 128):
            xb = x[s:s+128]
            out["embed"].append(model.encode_image(xb))
            for k in range(len(blocks)):
                tok = taps[k]
                if tok.shape[0] != len(xb):
                    tok = tok.transpose(0, 1)
                out[f"block{k}"].append(tok[:, 1:].flatten(1))
            out["pixels"].append(torch.nn.functional.avg_pool2d(xb, 2).flatten(1))
    for h in hooks:
        h.remove()
    return {k: torch.cat(v).numpy() for k, v in out.items()}
tr, te = feats(splits["train"]), feats(splits["test"])
def labels(split):
    return {a: np.array([synth.identity_by_pid[int(p)].get(a) for p in split.pids]) for a in
            ("gender", "hair", "lower_length", "sleeve", "age", "hat", "backpack", "bag",
             "handbag", "clothes", "upper_color", "lower_color")}
ytr, yte = labels(splits["train"]), labels(splits["test"])
print("train images", len(splits["train"].pids), "test images", len(splits["test"].pids),
      flush=True)
for name in ("embed", "block0", "block1", "block2", "block3", "pixels"):
    accs = {}
    for a in ytr:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, C=0.05))
        clf.fit(tr[name], ytr[a])
        accs[a] = round(float((clf.predict(te[name]) == yte[a]).mean()), 3)
    print(name, tr[name].shape[1], "mean", round(np.mean(list(accs.values())), 3), accs, flush=True)
