"""SynthPedes: a synthetic pedestrian ReID benchmark whose ground truth is known.

Real ReID data has no part masks and no known attribute importance, so claims about explanation
maps and attribute audits cannot be checked on it. SynthPedes renders pedestrians procedurally
(numpy, no downloads) and knows, per image, every part's mask, every attribute, and which caption
words name which part; the importance of each attribute for identity is planted. See
docs/synthpedes.md. It may import :mod:`reid_explain.data` (schemas, the real formats it
writes); nothing in ``data`` imports it.

* identities and planted structure: :mod:`.identities`
* drawing one image with its masks: :mod:`.rendering`; crops like a detector's: :mod:`.crops`
* captions with phrase spans: :mod:`.captions`
* the Market-1501-style split and per-image seeds: :mod:`.planning`
* the same person re-rendered with one part changed: :mod:`.pairs`
* writing the real formats: :mod:`.export`; reading its side files back: :mod:`.side`
* the sample grid picture: :mod:`.figure`; the ``reid-explain synth`` command: :mod:`.cli`
"""

from __future__ import annotations

from .._util.lazy import lazy_exports

#: public name -> submodule, imported on first use (importing ``planning`` alone stays light)
_EXPORTS: dict[str, str] = {
    "Caption": "captions",
    "Phrase": "captions",
    "make_captions": "captions",
    "FORMATS": "export",
    "ExportSummary": "export",
    "export_synthpedes": "export",
    "parse_formats": "export",
    "DEFAULT_PLANTED_ORDER": "identities",
    "Identity": "identities",
    "IdentityDetail": "identities",
    "attribute_entropies": "identities",
    "make_identities": "identities",
    "market_codes": "identities",
    "planted_entropies": "identities",
    "Sample": "planning",
    "SampleSpec": "planning",
    "SynthConfig": "planning",
    "SynthPlan": "planning",
    "iter_samples": "planning",
    "plan": "planning",
    "render_sample": "planning",
    "LABEL": "rendering",
    "Camera": "rendering",
    "Occluder": "rendering",
    "Rendered": "rendering",
    "View": "rendering",
    "make_cameras": "rendering",
    "masks_from_labels": "rendering",
    "render": "rendering",
    "sample_view": "rendering",
    "synth_main": "cli",
    "build_parser": "cli",
    "load_synthpedes_side": "side",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = sorted(_EXPORTS)
