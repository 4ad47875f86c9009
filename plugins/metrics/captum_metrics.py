"""Captum's ``infidelity`` and ``sensitivity_max``, wrapped to the pair's similarity score.

Both explain the same score the maps explain: the cosine of an image's embedding to the pair's
fixed reference embedding (``GroundingMap.references``, passed to Captum as
``additional_forward_args`` so it follows each perturbed copy of its image).

- ``infidelity`` (Yeh et al. 2019): ``E_I[(I . phi - (f(x) - f(x - I)))^2]`` over Gaussian
  perturbations ``I ~ N(0, std^2)`` of the pixels, with ``phi`` the map upsampled to pixels and
  broadcast over the colour channels. Maps have arbitrary scale, so by default
  (``normalize=True``) ``phi`` is rescaled by the least-squares factor Captum computes. Lower
  is better.
- ``sensitivity`` (``sensitivity_max``): the largest relative change
  ``||phi(x + d) - phi(x)|| / ||phi(x)||`` of the explanation when the image moves uniformly
  inside an L-infinity ball of ``radius``; the explanation is re-run with the explanation's own
  method through ``explainer.attribute``. Lower is better (a stable explanation).

Random perturbations come from a ``torch.Generator`` seeded with ``seed`` (default the
context's), so the values are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.maps import GroundingMap
from reid_explain.plugin_api.metric import Metric, MetricContext, perturbable_sides
from reid_explain.plugin_api.targets import CosineSimilarity

if TYPE_CHECKING:
    from reid_explain.plugin_api.interfaces import ExplainerLike

SIDES = ("query", "gallery")


def similarity_forward(explainer: ExplainerLike, batch_size: int = 64
                       ) -> Callable[[Tensor, Tensor], Tensor]:
    """``f(images, references) -> (B,)`` cosine of each image's embedding to its reference."""
    def forward(images: Tensor, references: Tensor) -> Tensor:
        emb = explainer.embed(images, batch_size=batch_size).cpu()
        return (emb * F.normalize(references.float().cpu(), dim=-1)).sum(dim=-1)
    return forward


def gaussian_perturbation(std: float, generator: torch.Generator
                          ) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """Captum's infidelity convention: ``(I, x - I)`` with ``I ~ N(0, std^2)`` per pixel."""
    def perturb(inputs: Tensor) -> tuple[Tensor, Tensor]:
        noise = torch.randn(inputs.shape, generator=generator, dtype=inputs.dtype) * std
        noise = noise.to(inputs.device)
        return noise, inputs - noise
    return perturb


def uniform_ball_perturbation(generator: torch.Generator) -> Callable[[Tensor, float], Tensor]:
    """Captum's sensitivity convention: ``x + d`` with ``d`` uniform in ``[-r, r]`` per pixel
    (its default, but seeded)."""
    def perturb(inputs: Tensor, perturb_radius: float) -> Tensor:
        inputs = inputs[0] if isinstance(inputs, tuple) else inputs
        d = torch.rand(inputs.shape, generator=generator, dtype=inputs.dtype) * 2 - 1
        return inputs + (d * perturb_radius).to(inputs.device)
    return perturb


def pixel_attributions(grounding: GroundingMap, mode: str = "bilinear") -> Tensor:
    """``(N, C, H, W)``: each map at image size, the same value on every colour channel."""
    assert grounding.images is not None
    maps = grounding.upsampled(mode=mode).float()
    return maps[:, None].expand(-1, grounding.images.shape[1], -1, -1).contiguous()


class Infidelity(Metric):
    """Captum infidelity of the maps w.r.t. the similarity score (lower is better).

    Options: ``n_perturb_samples`` (10), ``std`` (0.1, in normalised pixel units),
    ``normalize`` (True), ``seed`` (context's), ``side`` (``"both"``), ``upsample``
    (``"bilinear"``), ``batch_size`` (64, images per host forward), ``max_examples_per_batch``
    (Captum's, None)."""

    name = "infidelity"
    higher_is_better = False

    def compute(self, context: MetricContext) -> dict[str, Tensor]:
        from captum.metrics import infidelity  # lazy: plugins load fast

        opts = self.options
        generator = torch.Generator().manual_seed(int(opts.get("seed", context.seed)))
        forward = similarity_forward(context.explainer, int(opts.get("batch_size", 64)))
        perturb = gaussian_perturbation(float(opts.get("std", 0.1)), generator)
        out: dict[str, Tensor] = {}
        for name, grounding in perturbable_sides(context, opts.get("side", "both")):
            values = infidelity(
                forward, perturb, grounding.row_images().float(),
                pixel_attributions(grounding, opts.get("upsample", "bilinear")),
                additional_forward_args=(grounding.references.float(),),
                n_perturb_samples=int(opts.get("n_perturb_samples", 10)),
                max_examples_per_batch=opts.get("max_examples_per_batch"),
                normalize=bool(opts.get("normalize", True)))
            out[name] = values.detach().float().cpu()
        return out


class Sensitivity(Metric):
    """Captum sensitivity_max of the explanation's method (lower is better).

    Options: ``n_perturb_samples`` (10), ``radius`` (0.02, L-infinity, normalised pixel
    units), ``norm_ord`` (``"fro"``), ``seed`` (context's), ``side`` (``"both"``),
    ``method_options`` (dict passed to the method, e.g. ``{"n_steps": 16}``),
    ``internal_batch_size`` (rows per attribution pass), ``max_examples_per_batch``."""

    name = "sensitivity"
    higher_is_better = False

    def compute(self, context: MetricContext) -> dict[str, Tensor]:
        from captum.metrics import sensitivity_max  # lazy: plugins load fast

        opts = self.options
        explainer = context.explainer
        method = context.explanation.method
        method_options: dict[str, Any] = dict(opts.get("method_options", {}))
        chunk = opts.get("internal_batch_size")
        generator = torch.Generator().manual_seed(int(opts.get("seed", context.seed)))

        def explain(inputs: Tensor | tuple[Tensor, ...],
                    additional_forward_args: tuple[Tensor, ...]) -> tuple[Tensor]:
            # a tuple: sensitivity_max iterates over the first explanation's outputs
            images = inputs[0] if isinstance(inputs, tuple) else inputs
            references = additional_forward_args[0]
            device = explainer.adapter.device
            with torch.enable_grad():
                return (explainer.attribute(images.to(device),
                                            CosineSimilarity(references.to(device)),
                                            method=method, internal_batch_size=chunk,
                                            **method_options),)

        out: dict[str, Tensor] = {}
        for name, grounding in perturbable_sides(context, opts.get("side", "both")):
            values = sensitivity_max(
                explain, grounding.row_images().float(),
                perturb_func=uniform_ball_perturbation(generator),
                perturb_radius=float(opts.get("radius", 0.02)),
                n_perturb_samples=int(opts.get("n_perturb_samples", 10)),
                norm_ord=opts.get("norm_ord", "fro"),
                max_examples_per_batch=opts.get("max_examples_per_batch"),
                additional_forward_args=(grounding.references.float(),))
            out[name] = values.detach().float().cpu()
        return out


@hookimpl
def register_metrics(register):
    register(Infidelity)
    register(Sensitivity)
