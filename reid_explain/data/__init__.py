"""Data in the real formats: attribute schemas and tables, text annotations, torch Datasets.

* schemas: :mod:`reid_explain.data.schema` (Market-1501, DukeMTMC-reID, your own)
* attribute ``.mat`` / CSV / Parquet tables: :mod:`reid_explain.data.attributes`
* CUHK-PEDES / ICFG-PEDES / RSTPReid annotations: :mod:`reid_explain.data.text_annotations`
* Datasets for image and text-image ReID: :mod:`reid_explain.data.datasets`

SynthPedes, the benchmark with ground-truth part masks, is its own package:
:mod:`reid_explain.synthpedes`. Nothing here imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._util.lazy import lazy_exports

if TYPE_CHECKING:
    from .attributes import attribute_codes, load_attributes, save_attribute_mat, wide_attributes
    from .datasets import ImageReidDataset, TextImageDataset, collate_text_batch, default_transform
    from .schema import DUKEMTMC, MARKET1501, PARTS, Attribute, AttributeKind, AttributeSchema
    from .text_annotations import load_text_annotations

#: public name -> submodule; imported on first use, so that importing one light submodule
#: (a schema, a score) does not import pandas, scipy and PIL through its siblings
_EXPORTS: dict[str, str] = {
    "attribute_codes": "attributes",
    "load_attributes": "attributes",
    "save_attribute_mat": "attributes",
    "wide_attributes": "attributes",
    "ImageReidDataset": "datasets",
    "TextImageDataset": "datasets",
    "collate_text_batch": "datasets",
    "default_transform": "datasets",
    "DUKEMTMC": "schema",
    'MARKET1501': 'schema',
    "PARTS": "schema",
    "Attribute": "schema",
    "AttributeKind": "schema",
    "AttributeSchema": "schema",
    "load_text_annotations": "text_annotations",
}


#: names that moved to :mod:`reid_explain.synthpedes` (served with a DeprecationWarning)
_MOVED = {"load_synthpedes_side": "reid_explain.synthpedes.side"}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), moved=_MOVED)


__all__ = [
    "DUKEMTMC", "MARKET1501", "PARTS", "Attribute", "AttributeKind", "AttributeSchema",
    "ImageReidDataset", "TextImageDataset", "attribute_codes", "collate_text_batch",
    "default_transform", "load_attributes", "load_text_annotations",
    "save_attribute_mat", "wide_attributes",
]
