"""Models trained on SynthPedes, shipped in the package as safetensors with a model card.

>>> from reid_explain import zoo, explainify
>>> model = zoo.load("osnet-synthpedes")        # an ordinary torchreid OSNet, eval mode
>>> with explainify(model) as exp: ...

``reid-explain zoo list`` shows what is there, ``reid-explain zoo train NAME`` reproduces a
checkpoint (``--device cuda`` where a GPU is available). See docs/zoo.md.
"""

from .registry import SPECS, ZooSpec, available, card, card_path, load, spec, weights_path

__all__ = ["SPECS", "ZooSpec", "available", "card", "card_path", "load", "spec", "weights_path"]
