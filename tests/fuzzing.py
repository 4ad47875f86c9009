"""A seeded mutator for the project's loaders: valid files, mutated byte-wise and (for JSON)
structurally, must each load or fail with a documented project error, never anything else.

Used by ``tests/test_fuzz.py`` (a few hundred cases per loader) and by
``benchmarks/fuzz_loaders.py`` (tens of thousands, counts printed)."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reid_explain.errors import ReidExplainError

STRANGE = [None, -1, 0, 1, 10**20, -(10**20), 1.5, float("nan"), float("inf"), True, "",
           " ", "../../etc/passwd", "/etc/passwd", [], {}, [[1]], {"a": 1}, "x" * 300]


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """Flip, overwrite, delete, duplicate or truncate a few spans of ``data``."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not out:
            break
        i = rng.randrange(len(out))
        op = rng.randrange(5)
        if op == 0:
            out[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[i] = rng.randrange(256)
        elif op == 2:
            del out[i:i + rng.randint(1, 16)]
        elif op == 3:
            out[i:i] = out[i:i + rng.randint(1, 16)]
        else:
            del out[rng.randrange(len(out)):]
    return bytes(out)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            out += _paths(v, (*prefix, i))
    return out


def mutate_json(value: Any, rng: random.Random) -> Any:
    """Replace, delete or duplicate a few values anywhere in a JSON document."""
    value = json.loads(json.dumps(value))
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in _paths(value) if p]
        if not paths:
            return rng.choice(STRANGE)
        path = rng.choice(paths)
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        op = rng.randrange(3)
        if op == 0:
            parent[key] = rng.choice(STRANGE)
        elif op == 1:
            parent.pop(key)
        elif isinstance(parent, list):
            parent.append(parent[key])
        else:
            parent[key] = [parent[key], parent[key]]
    return value


@dataclass
class Target:
    """One loader: the files it reads, which of them to mutate, and how to call it."""

    name: str
    files: dict[str, bytes]  # relative path -> valid content
    load: Callable[[Path], Any]
    json_files: tuple[str, ...] = ()


@dataclass
class FuzzReport:
    cases: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)  # (target, "ok" | error type)
    failures: list[str] = field(default_factory=list)


def run(targets: list[Target], cases: dict[str, int], seed: int, workdir: Path) -> FuzzReport:
    """Run ``cases[target.name]`` mutated cases of each target; collect the outcomes."""
    report = FuzzReport()
    for target in targets:
        rng = random.Random(f"{seed}-{target.name}")
        for case in range(cases.get(target.name, 0)):
            root = workdir / f"{target.name}-{case}"
            files = dict(target.files)
            victim = rng.choice(sorted(files))
            if victim in target.json_files and rng.random() < 0.6:
                files[victim] = json.dumps(mutate_json(json.loads(files[victim]), rng)).encode()
            else:
                files[victim] = mutate_bytes(files[victim], rng)
            for rel, content in files.items():
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
            report.cases[target.name] += 1
            try:
                target.load(root)
                outcome = "ok"
            except ReidExplainError as exc:
                outcome = type(exc).__name__
            except Exception as exc:  # anything else breaks the error contract
                outcome = f"UNDOCUMENTED {type(exc).__name__}"
                report.failures.append(f"{target.name} case {case} ({victim}): "
                                       f"{type(exc).__name__}: {exc}")
            report.outcomes[(target.name, outcome)] += 1
            shutil.rmtree(root, ignore_errors=True)
    return report


def build_targets(base: Path) -> list[Target]:
    """Valid seed files for every loader, made here (SynthPedes export, a zoo model, a tiny
    text-image checkpoint)."""

    from reid_explain import zoo
    from reid_explain.data.attributes import (
        load_attribute_mat,
        load_attribute_table,
        save_attribute_table,
    )
    from reid_explain.data.text_annotations import load_text_annotations
    from reid_explain.synthpedes import SynthConfig, export_synthpedes
    from reid_explain.synthpedes.side import load_synthpedes_side
    from reid_explain.training.text_image import (
        TinyClipConfig,
        TrainConfig,
        load_checkpoint,
        save_checkpoint,
        tiny_clip,
    )

    export = base / "export"
    export_synthpedes(export, SynthConfig(n_ids=4, images_per_id=4, seed=11))
    side = {rel: (export / rel).read_bytes()
            for rel in ("synthpedes/annotations.json", "synthpedes/masks.npz")}
    mat = next(export.rglob("market_attribute.mat"))
    cuhk = next(export.rglob("reid_raw.json"))
    table = base / "attributes.csv"
    save_attribute_table(load_attribute_mat(mat), table)
    small = TinyClipConfig(width=32, layers=1, head_width=16, text_width=32, text_layers=1,
                           text_heads=2, embed_dim=16, context_length=16)
    ckpt = save_checkpoint(base / "ckpt.pt", tiny_clip(small), small, None, TrainConfig())
    name = "osnet-synthpedes"
    zoo_files = {p.name: p.read_bytes() for p in (zoo.weights_path(name), zoo.card_path(name))}
    return [
        Target("side file", side, lambda r: load_synthpedes_side(r),
               json_files=("synthpedes/annotations.json",)),
        Target(".mat", {"market_attribute.mat": mat.read_bytes()},
               lambda r: load_attribute_mat(r / "market_attribute.mat")),
        Target("CUHK-PEDES JSON", {"CUHK-PEDES/reid_raw.json": cuhk.read_bytes()},
               lambda r: load_text_annotations(r / "CUHK-PEDES" / "reid_raw.json",
                                               check_images=False),
               json_files=("CUHK-PEDES/reid_raw.json",)),
        Target("attribute CSV", {"attributes.csv": table.read_bytes()},
               lambda r: load_attribute_table(r / "attributes.csv")),
        Target("text-image checkpoint", {"ckpt.pt": ckpt.read_bytes()},
               lambda r: load_checkpoint(r / "ckpt.pt")),
        Target("zoo model", zoo_files, lambda r: zoo.load(name, root=r),
               json_files=(f"{name}.json",)),
    ]

