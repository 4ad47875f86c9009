"""The Engine: an adapter's host run through attribution plugins, inside a HostGuard.

It is what the :class:`~reid_explain.explain.explainer.Explainer` façade is built on
(embeddings and one attribution method on a batch), kept in its own module so that parts
which must wrap a model themselves (the model-randomisation check wraps copies of the host)
need not import the façade.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._util.memory import release_freed_memory
from ..errors import AdapterError, InputError, PluginError
from ..plugin_api import manager as plugins
from ..plugin_api.adapter import Adapter
from ..plugin_api.attribution import Attribution
from ..plugin_api.host_guard import HostGuard
from ..plugin_api.maps import sharpen_maps
from ..plugin_api.targets import Target
from .inputs import check_images, check_texts

#: rows per attribution pass when the caller names none and the rows are not images (token ids):
#: peak memory stays that of one such batch however many pairs are explained
DEFAULT_INTERNAL_BATCH_SIZE = 32
#: pixels per attribution pass when the caller names no ``internal_batch_size`` (8 images at
#: 256x128, 32 at 128x64, 5 at 224x224). Activations grow with pixels, and glibc serves every
#: block above 32 MB by its own mmap and unmaps it when freed, so a batch whose largest
#: activation passes that size faults all its pages in again on every pass: osnet_x1_0 at
#: 256x128 took 58-64 ms per image in batches of 32 against ~25 ms in batches of 8
#: (docs/attributions.md, "Memory").
DEFAULT_INTERNAL_BATCH_PIXELS = 8 * 256 * 128


def default_internal_batch_size(inputs: Tensor) -> int:
    """Rows per pass when the caller names none: as many images of ``inputs``' size as fit in
    :data:`DEFAULT_INTERNAL_BATCH_PIXELS` (at least one), or :data:`DEFAULT_INTERNAL_BATCH_SIZE`
    rows of anything that is not a batch of images."""
    if inputs.dim() != 4:
        return DEFAULT_INTERNAL_BATCH_SIZE
    return max(1, DEFAULT_INTERNAL_BATCH_PIXELS // (inputs.shape[-2] * inputs.shape[-1]))


class Engine:
    """Embeddings and attributions of one wrapped host; every call leaves the host as it was."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.guard = HostGuard(adapter.model)
        self._closed = False

    @property
    def model(self) -> nn.Module:
        return self.adapter.model

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove everything this engine (its adapter) put on the host."""
        if not self._closed:
            self.adapter.close()
            self._closed = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.adapter.describe()})"

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this explainer is closed; call explainify(model) again")

    # -- embeddings ---------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, images: Tensor, batch_size: int | None = None) -> Tensor:
        """L2-normalised image embeddings, ``(B, D)``, ``batch_size`` images per forward
        (default :func:`default_internal_batch_size`)."""
        self._check_open()
        images = check_images(images, "images", self.adapter)
        step = batch_size or default_internal_batch_size(images)
        with self.guard:
            out = [self.adapter.embed_image(chunk) for chunk in images.split(step)]
        return F.normalize(torch.cat(out).float(), dim=-1)

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str] | str, batch_size: int = 64) -> Tensor:
        """L2-normalised text embeddings, ``(B, D)`` (CLIP-style hosts)."""
        self._check_open()
        tokens = self.adapter.tokenize(check_texts(texts))
        with self.guard:
            out = [self.adapter.embed_text(chunk) for chunk in tokens.split(batch_size)]
        return F.normalize(torch.cat(out).float(), dim=-1)

    def similarity(self, query: Tensor, gallery: Tensor) -> Tensor:
        """Cosine similarity matrix ``(Bq, Bg)``."""
        return self.embed(query) @ self.embed(gallery).T

    # -- attribution --------------------------------------------------------------------------
    def _method(self, method: str, modality: str) -> tuple[Attribution, str]:
        entry = plugins.get("attributions", method)
        cls = entry.obj
        if cls.modality != modality:
            raise InputError(f"attribution {method!r} explains {cls.modality} inputs, "
                             f"not {modality} inputs")
        missing = set(cls.requires) - set(self.adapter.capabilities)
        if missing:
            raise AdapterError(f"attribution {method!r} needs {sorted(missing)}, which adapter "
                               f"{self.adapter.name!r} ({type(self.model).__name__}) lacks")
        try:
            return cls(self.adapter), entry.plugin
        except Exception as exc:
            raise PluginError(f"attribution {method!r} from plugin {entry.plugin!r} failed to "
                              f"initialise: {type(exc).__name__}: {exc}") from exc

    def attribute(self, inputs: Tensor, target: Target, method: str = "gradcam",
                  baselines: Any = None, internal_batch_size: int | None = None,
                  modality: str = "image", image_index: Tensor | None = None,
                  release_memory: bool = False, sharpen: float | None = None,
                  **options: Any) -> Tensor:
        """Run one attribution method on a batch, ``internal_batch_size`` rows per pass
        (default :func:`default_internal_batch_size`: memory bounded whatever the batch).

        ``image_index`` (optional, ``(N,)`` long): row ``i`` explains ``inputs[image_index[i]]``
        against ``target``'s row ``i``, so a query explained against many gallery images is
        given once. Methods that can share the image's forward (``shares_images``) get each
        chunk's distinct images once; others get the rows expanded.

        ``release_memory=True`` hands the allocator's freed pages back to the OS after each
        internal batch (glibc), so the peak RSS stays one batch's however many rows there are
        (without it, heap fragmentation adds ~+50 % at 256 rows), at some time per batch.

        ``sharpen=p`` returns the maps' positive part to the power ``p``, each map keeping its
        maximum (:func:`~reid_explain.plugin_api.maps.sharpen_maps`), any method's (as the
        image-blind reference's location prior is sharpened; p chosen on validation identities with
        :func:`~reid_explain.evaluation.sharpening.choose_sharpen`: docs/metrics.md, "The
        image-blind reference"). It is meant for the energy-type figures: pointing, top-region
        IoU, masking and deletion/insertion depend on the order of the positive values alone,
        which a power keeps up to float32's underflow of values far below the maximum.
        """
        self._check_open()
        if sharpen is not None and not (isinstance(sharpen, (int, float)) and sharpen > 0):
            raise InputError(f"sharpen must be a positive power, got {sharpen!r}")
        instance, plugin = self._method(method, modality)
        index = None if image_index is None else torch.as_tensor(image_index).long().cpu()
        n = inputs.shape[0] if index is None else int(index.shape[0])
        step = internal_batch_size or default_internal_batch_size(inputs)
        outputs = []
        with self.guard:
            if not instance.needs_parameter_gradients:
                for param in self.model.parameters():  # the guard restores requires_grad
                    param.requires_grad_(False)
            for start in range(0, n, step):
                rows = slice(start, min(start + step, n))
                chunk_baselines = baselines[rows] if isinstance(baselines, Tensor) and \
                    baselines.dim() == inputs.dim() and baselines.shape[0] == n else baselines
                chunk_options = dict(options)
                if index is None:
                    chunk = inputs[rows]
                elif instance.shares_images:
                    distinct, inverse = torch.unique(index[rows], return_inverse=True)
                    chunk = inputs[distinct.to(inputs.device)]
                    chunk_options["image_index"] = inverse
                else:
                    chunk = inputs[index[rows].to(inputs.device)]
                try:
                    result = instance.attribute(chunk, target.select(rows),
                                                baselines=chunk_baselines, **chunk_options)
                except Exception as exc:
                    raise PluginError(f"attribution {method!r} from plugin {plugin!r} raised "
                                      f"{type(exc).__name__}: {exc}") from exc
                if not isinstance(result, Tensor) or result.shape[0] != rows.stop - rows.start:
                    raise PluginError(f"attribution {method!r} from plugin {plugin!r} returned "
                                      f"{type(result).__name__} "
                                      f"{tuple(getattr(result, 'shape', ()))}; expected one map "
                                      "per input row")
                outputs.append(result.detach().float().cpu())
                del result
                if release_memory and rows.stop < n:  # peak: one batch's, whatever n
                    release_freed_memory()
        maps = torch.cat(outputs)
        if not torch.isfinite(maps).all():
            raise PluginError(f"attribution {method!r} from plugin {plugin!r} returned NaN/inf")
        if sharpen is not None and sharpen != 1:
            maps = sharpen_maps(maps, float(sharpen))
        return maps
