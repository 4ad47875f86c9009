"""Causal attribute audit: the same person re-rendered with one attribute changed.

The attribute study (:mod:`.study`) relates attribute values to per-query AP across people:
observational, so an attribute that is rare, or that travels with another, can rank far from
what the model actually uses. SynthPedes can answer the causal question directly. Each query
image is re-rendered with one Market-1501 attribute set to another state, everything else kept
(identity detail, camera, view, pose, crop, passer-by, noise seed: the plan's own draws), and
the model embeds both. Per attribute:

- **embedding shift**: 1 - cosine of the query's embedding before and after;
- **AP drop**: the query's AP against the *unchanged* gallery, before minus after;
- **rank-1 flips**: share of queries whose rank-1 hit turns into a miss.

**Replacement states.** For each (query, attribute), one state drawn uniformly among the
attribute's other states (binary attributes: the other one), from a generator seeded by the
audit's ``seed``, the query's identity and its image; so the audit is deterministic. An
attribute whose change does not alter the image (a backpack seen from the front, a hat on a
head out of the crop) still counts: the model cannot rely on what it cannot see, and the
reliance is measured on the images a data set holds.

Intervals: each figure is the mean over identities of each identity's mean over its queries,
with a 95% percentile bootstrap over identities (:func:`~reid_explain.evaluation.bootstrap.
bootstrap_ci`). The **causal ranking** orders attributes by mean AP drop (ties: embedding
shift). :func:`agreement` measures an observational ranking against it (Spearman ρ, top-k
shared).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from reid_explain.core.inputs import normalised_images
from reid_explain.data.schema import MARKET1501
from reid_explain.errors import InputError
from reid_explain.synthpedes.pairs import render_as
from reid_explain.synthpedes.planning import render_sample

__all__ = ["ATTRIBUTE_PARTS", "CausalAudit", "agreement", "attribute_codes_of",
           "audit_explainer", "causal_audit", "change_attribute",
           "changed_render", "synth_config_of"]

#: the figures per attribute, in the table's order
FIGURES = ("ap_drop", "shift", "flip")
#: where the renderer draws each attribute that has a part of its own: a change of it can only
#: alter pixels labelled with these parts in the original or the changed image (gender, age,
#: clothes, sleeve and lower length reshape the body, so they have no such bound)
ATTRIBUTE_PARTS: dict[str, tuple[str, ...]] = {
    "hat": ("hat",), "backpack": ("backpack",), "bag": ("bag",), "handbag": ("handbag",),
    "upper_color": ("upper_body",), "lower_color": ("lower_body",), "hair": ("hair",),
}


def change_attribute(identity: Any, attribute: str, rng: np.random.Generator) -> tuple[Any, str]:
    """``identity`` with ``attribute`` set to another of its states (uniform), and that state."""
    if attribute not in MARKET1501.names:
        raise InputError(f"unknown attribute {attribute!r}; Market-1501 has "
                         f"{list(MARKET1501.names)}")
    old = identity.get(attribute)
    others = [s for s in MARKET1501[attribute].states if s != old]
    new = others[int(rng.integers(len(others)))]
    return _with(identity, attribute, new), new


def _with(identity: Any, attribute: str, state: str) -> Any:
    attributes = tuple((k, state if k == attribute else v) for k, v in identity.attributes)
    return replace(identity, attributes=attributes)


def attribute_codes_of(people: Sequence[Any]) -> torch.Tensor:
    """``(B, A)`` int64 Market-1501 codes of SynthPedes identities: each attribute's state index
    in schema order, as :func:`~reid_explain.data.attributes.attribute_codes` reads them from a
    ``market_attribute.mat`` export."""
    states = [(a.name, list(a.states)) for a in MARKET1501]
    return torch.tensor([[s.index(p.get(name)) for name, s in states] for p in people],
                        dtype=torch.long).reshape(len(people), len(states))


def changed_render(synth: Any, spec: Any, attribute: str, seed: int = 0) -> tuple[Any, str]:
    """``spec``'s image re-rendered with ``attribute`` changed (the audit's own draw of the
    new state), everything else as the plan has it; returns the render and the new state."""
    rendered, new, _ = _changed(synth, spec, attribute, seed)
    return rendered, new


def _changed(synth: Any, spec: Any, attribute: str, seed: int) -> tuple[Any, str, Any]:
    """:func:`changed_render`, and the changed person it drew."""
    rng = np.random.default_rng(_seed(seed, attribute, spec.pid, spec.name))
    identity, new = change_attribute(synth.identity_of(spec), attribute, rng)
    return render_as(synth, spec, identity), new, identity


def _seed(*words: Any) -> int:
    return zlib.crc32(repr(words).encode())


@dataclass
class CausalAudit:
    """Per-query rows (one per query and attribute) and the per-attribute table."""

    per_query: pd.DataFrame
    table: pd.DataFrame
    config: dict[str, Any]

    @property
    def ranking(self) -> list[str]:
        """Attributes from most to least relied on (mean AP drop, then shift)."""
        return list(self.table["attribute"])

    def save(self, directory: Any) -> Any:
        """Write ``per_query.csv``, ``table.csv`` and ``summary.json`` (all or nothing)."""
        from pathlib import Path

        from reid_explain._util.io import atomic_path, strict_json

        with atomic_path(directory) as tmp:
            tmp.mkdir(parents=True)
            self.per_query.to_csv(tmp / "per_query.csv", index=False)
            self.table.to_csv(tmp / "table.csv", index=False)
            (tmp / "summary.json").write_text(strict_json(self.to_json()))
        return Path(directory)

    def to_json(self) -> dict[str, Any]:
        rows = self.table.to_dict(orient="records")
        return {"ranking": self.ranking, "config": self.config,
                "queries": int(self.per_query["query"].nunique()),
                "identities": int(self.per_query["pid"].nunique()),
                "attributes": [{k: (float(v) if isinstance(v, (float, np.floating)) else v)
                                for k, v in r.items()} for r in rows]}


def _identity_ci(frame: pd.DataFrame, column: str, n_boot: int, seed: int) -> tuple[float, ...]:
    from reid_explain.evaluation.bootstrap import bootstrap_ci

    per_identity = frame.groupby("pid")[column].mean().to_numpy()
    ci = bootstrap_ci(per_identity, n_boot=n_boot, seed=seed)
    return ci.estimate, ci.low, ci.high


def summarise(per_query: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """The per-attribute table (causal order) from per-query rows."""
    rows = []
    for attribute, frame in per_query.groupby("attribute", sort=False):
        row: dict[str, Any] = {"attribute": attribute, "queries": len(frame),
                               "identities": int(frame["pid"].nunique()),
                               "changed_pixels": float(frame["changed_pixels"].mean())}
        for figure in FIGURES:
            mean, low, high = _identity_ci(frame, figure, n_boot, seed)
            row |= {figure: mean, f"{figure}_low": low, f"{figure}_high": high}
        rows.append(row)
    table = pd.DataFrame(rows)
    table = table.sort_values(["ap_drop", "shift"], ascending=False, kind="stable")
    table.insert(1, "rank", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True)


def causal_audit(embed: Callable[[torch.Tensor], torch.Tensor], config: Any, *,
                 mean: Sequence[float], std: Sequence[float], max_ids: int | None = None,
                 attributes: Sequence[str] | None = None, seed: int = 0,
                 batch_size: int = 128, n_boot: int = 1000,
                 with_codes: bool = False) -> CausalAudit:
    """Re-render every query of the SynthPedes test split ``config`` (a ``SynthConfig`` or its
    fields) with each attribute changed and measure what the model ``embed`` loses.

    ``embed`` maps normalised ``(B, 3, H, W)`` images (``mean``/``std``, the host's) to
    embeddings (e.g. ``explainer.embed``); ``max_ids`` keeps the first test identities: their
    queries against their own gallery images, as ``zoo.data.render_splits(max_ids=...)`` gives
    the demo's test split (without it: every test query against the whole gallery, distractors
    included).

    ``with_codes=True`` calls ``embed(images, codes)`` instead, ``codes`` the drawn people's
    Market-1501 attribute codes ``(B, A)`` (:func:`attribute_codes_of`, the layout
    ``ImageReidDataset`` items carry): what an oracle-routed MoSAIC model reads beside the
    pixels. A changed render comes with its changed codes, so the oracle routes it as the
    person it now shows.
    """
    from reid_explain.attributes.outcomes import per_query_outcomes
    from reid_explain.synthpedes.planning import SynthConfig, plan

    synth = plan(config if isinstance(config, SynthConfig) else SynthConfig(**config))
    names = list(attributes) if attributes is not None else list(MARKET1501.names)
    unknown = [a for a in names if a not in MARKET1501.names]
    if unknown:
        raise InputError(f"unknown attributes {unknown}; Market-1501 has "
                         f"{list(MARKET1501.names)}")
    test_ids = sorted(synth.test_pids)[:max_ids] if max_ids else sorted(synth.test_pids)
    keep = set(test_ids)
    queries = [s for s in synth.samples if s.split == "query" and s.pid in keep]
    gallery = [s for s in synth.samples if s.split == "gallery"
               and (not max_ids or s.pid in keep)]
    if not queries:
        raise InputError("the SynthPedes plan has no query images to audit")

    def embed_all(images: list[np.ndarray], people: list[Any]) -> torch.Tensor:
        parts = []
        for start in range(0, len(images), batch_size):
            batch = normalised_images(images[start:start + batch_size], mean, std)
            with torch.no_grad():
                out = (embed(batch, attribute_codes_of(people[start:start + batch_size]))
                       if with_codes else embed(batch))
            parts.append(torch.nn.functional.normalize(out.float(), dim=1))
        return torch.cat(parts)

    original = [render_sample(synth, s, with_captions=False).rendered for s in queries]
    q_people = [synth.identity_of(s) for s in queries]
    g_feats = embed_all([render_sample(synth, s, with_captions=False).rendered.image
                         for s in gallery], [synth.identity_of(s) for s in gallery])
    q_feats = embed_all([r.image for r in original], q_people)
    q_pids = np.array([s.pid for s in queries])
    q_cams = np.array([s.cam for s in queries])
    g_pids = np.array([s.pid for s in gallery])
    g_cams = np.array([s.cam for s in gallery])
    before = per_query_outcomes(q_feats, g_feats, q_pids, g_pids, q_cams, g_cams)
    ap0 = dict(zip(before["query"], before["ap"], strict=True))
    hit0 = dict(zip(before["query"], before["hit"], strict=True))
    rows = []
    for attribute in names:
        changed, new_states, c_people = [], [], []
        for spec in queries:
            rendered, new, person = _changed(synth, spec, attribute, seed)
            changed.append(rendered)
            new_states.append(new)
            c_people.append(person)
        c_feats = embed_all([r.image for r in changed], c_people)
        after = per_query_outcomes(c_feats, g_feats, q_pids, g_pids, q_cams, g_cams)
        ap1 = dict(zip(after["query"], after["ap"], strict=True))
        hit1 = dict(zip(after["query"], after["hit"], strict=True))
        shift = 1.0 - (q_feats * c_feats).sum(dim=1).numpy()
        for q, spec in enumerate(queries):
            if q not in ap0:  # no true match from another camera
                continue
            rows.append({"query": q, "pid": spec.pid, "image": spec.name,
                         "attribute": attribute,
                         "old": synth.identity_of(spec).get(attribute), "new": new_states[q],
                         "changed_pixels": int((original[q].image != changed[q].image)
                                               .any(axis=-1).sum()),
                         "shift": float(shift[q]), "ap": float(ap0[q]),
                         "ap_changed": float(ap1[q]), "ap_drop": float(ap0[q] - ap1[q]),
                         "hit": int(hit0[q]), "hit_changed": int(hit1[q]),
                         "flip": float(hit0[q] == 1 and hit1[q] == 0)})
    per_query = pd.DataFrame(rows)
    if per_query.empty:
        raise InputError("no audited query has a true match in the gallery")
    cfg = {"seed": seed, "max_ids": max_ids, "attributes": names, "n_boot": n_boot,
           "with_codes": with_codes,
           "replacement": "uniform among the attribute's other states, per query",
           "gallery": len(gallery), "data_seed": synth.config.seed}
    return CausalAudit(per_query=per_query, table=summarise(per_query, n_boot, seed),
                       config=cfg)


def audit_explainer(explainer: Any, data: Any, causal: dict[str, Any]) -> CausalAudit:
    """The causal audit of the host on the SynthPedes set ``causal["config"]``, its renders
    resized to the scored images' size as the data set's transform resizes them."""
    import torch.nn.functional as F

    from reid_explain.evaluation.protocol import ImageSource

    size = tuple(int(v) for v in ImageSource(data.query, "query").get([0]).shape[-2:])

    def embed(images: Any) -> Any:
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return explainer.embed(images)

    return causal_audit(embed, causal["config"], mean=explainer.adapter.pixel_mean,
                        std=explainer.adapter.pixel_std, max_ids=causal.get("max_ids"))


def synth_config_of(root: Any) -> dict[str, Any] | None:
    """The ``SynthConfig`` fields of a SynthPedes export at ``root`` (its
    ``synthpedes/annotations.json``), or None when ``root`` is not one."""
    import json
    from pathlib import Path

    path = Path(root) / "synthpedes" / "annotations.json"
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text())["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a SynthPedes annotation file ({exc})") from None


def agreement(causal: Sequence[str], observed: Sequence[str], k: int = 3) -> dict[str, Any]:
    """How far an observational ranking agrees with the causal one: Spearman ρ over the
    attributes both rank (scipy), and how many of the causal top ``k`` it also ranks top ``k``."""
    from scipy.stats import spearmanr

    shared = [a for a in causal if a in set(observed)]
    if len(shared) < 3:
        raise InputError(f"agreement needs at least 3 attributes in both rankings, got "
                         f"{shared}")
    causal_rank = [shared.index(a) for a in shared]
    observed_order = [a for a in observed if a in set(shared)]
    observed_rank = [observed_order.index(a) for a in shared]
    rho = float(spearmanr(causal_rank, observed_rank).statistic)
    top = len(set(shared[:k]) & set(observed_order[:k]))
    return {"spearman": rho, f"top{k}_shared": top, "k": k, "attributes": len(shared),
            "causal_top": shared[:k], "observed_top": observed_order[:k]}
