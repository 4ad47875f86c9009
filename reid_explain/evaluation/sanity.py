"""Sanity checks for explanation methods (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

Two questions every score of a map should be asked against:

* **Model randomisation.** Does the map depend on the model at all? The host's weights are
  re-initialised layer by layer from the top (``"cascade"``: cumulatively; ``"independent"``:
  one group at a time), on a deep copy of the model, and the maps are recomputed. A method whose
  maps stay the same (an edge detector, or a third-party method returning a fixed map) explains
  the image, not the model, and fails. Similarity is the Spearman rank correlation of the maps
  (signed and of |map|), optionally SSIM; ``passes`` when it drops below ``threshold``.
* **Random-map baseline.** What does a metric give to a map that knows nothing? Every metric is
  recomputed with the explanation's maps replaced by uniform random maps of the same shape, all
  else kept; a method's score means something only against that.

See ``docs/metrics_grounding.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.adapter_choice import build_adapter
from ..core.engine import Engine
from ..errors import InputError, PluginError
from ..plugin_api import manager as plugins
from ..plugin_api.metric import Metric, MetricContext
from ..plugin_api.targets import CosineSimilarity

__all__ = [
    "MEASURES", "RandomMapBaseline", "RandomizationResult", "map_ssim",
    "model_randomization_check", "random_map_baseline", "randomization_units",
    "randomize_modules", "spearman",
]

#: similarity measures of an original and a randomised map, each ``(B,)`` in [-1, 1]
MEASURES = ("spearman", "spearman_abs", "ssim")


# --------------------------------------------------------------------------- similarity


def _average_ranks(x: Tensor) -> Tensor:
    """Row-wise ranks (1-based), ties given their average rank, as scipy's ``rankdata``."""
    ordered = x.sort(dim=1).values
    below = torch.searchsorted(ordered, x, right=False)
    upto = torch.searchsorted(ordered, x, right=True)
    return (below + upto + 1).double() / 2


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """``(B,)`` Spearman rank correlation of each pair of maps (flattened).

    A constant map has no ranking: two constant maps score 1 (neither ranks anything), a
    constant map against a non-constant one scores 0.
    """
    ra = _average_ranks(a.flatten(1).double().contiguous())
    rb = _average_ranks(b.flatten(1).double().contiguous())
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    na, nb = ra.norm(dim=1), rb.norm(dim=1)
    rho = (ra * rb).sum(1) / (na * nb).clamp_min(1e-300)
    flat_a, flat_b = na < 1e-9, nb < 1e-9
    rho = torch.where(flat_a & flat_b, torch.ones_like(rho), rho)
    rho = torch.where(flat_a ^ flat_b, torch.zeros_like(rho), rho)
    return rho.float()


def _min_max(x: Tensor) -> Tensor:
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def map_ssim(a: Tensor, b: Tensor, size: tuple[int, int] | None = None,
             window: int = 11, sigma: float = 1.5) -> Tensor:
    """``(B,)`` mean SSIM of min-max normalised maps (Wang et al. 2004; Adebayo et al. use it).

    Maps are upsampled (bilinear) to ``size`` first, so that the Gaussian window spans image
    structure rather than a handful of grid cells.
    """
    a, b = a.float()[:, None], b.float()[:, None]
    if size is not None and tuple(a.shape[-2:]) != tuple(size):
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
        b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
    a, b = _min_max(a), _min_max(b)
    win = min(window, a.shape[-2], a.shape[-1])
    win -= 1 - win % 2  # odd
    g = torch.exp(-((torch.arange(win) - win // 2) ** 2) / (2 * sigma ** 2))
    g = (g / g.sum()).float()
    kernel = (g[:, None] * g[None, :])[None, None]

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(x, kernel)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1)
                                                    * (var_a + var_b + c2))
    return s.mean(dim=(1, 2, 3))


def _similarities(original: Tensor, randomized: Tensor, measures: Sequence[str],
                  image_size: tuple[int, int]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for measure in measures:
        if measure == "spearman":
            out[measure] = spearman(original, randomized)
        elif measure == "spearman_abs":
            out[measure] = spearman(original.abs(), randomized.abs())
        elif measure == "ssim":
            out[measure] = map_ssim(original, randomized, size=image_size)
        else:
            raise InputError(f"unknown similarity measure {measure!r}; known: {MEASURES}")
    return out


# --------------------------------------------------------------------------- randomisation


def _inside(name: str, ancestor: str) -> bool:
    return ancestor == "" or name.startswith(ancestor + ".")


def randomization_units(explainer: Engine, images: Tensor) -> list[str]:
    """Names of the modules that own parameters and run when embedding ``images``, top first.

    A module counts if the embedding has a gradient path to one of its own parameters, so
    modules that do not take part (a training classifier, a CLIP text tower) are left out:
    randomising them cannot change an image map. The order is the order in which modules start
    during one forward (so "top" is the layer nearest the embedding, whatever the registration
    order); a module whose parameters are used without calling it (``nn.MultiheadAttention``'s
    ``out_proj``) is placed at the end of its nearest called ancestor, or at the bottom if none
    ran (a ViT's position embedding, owned by the root).
    """
    model = explainer.model
    names = {m: n for n, m in model.named_modules()}
    owners = [(m, list(m.parameters(recurse=False))) for m in names]
    owners = [(m, ps) for m, ps in owners if ps]
    order: list[str] = []

    def hook(m: nn.Module, _args: Any) -> None:
        if names[m] not in order:
            order.append(names[m])

    handles = [m.register_forward_pre_hook(hook) for m, _ in owners]
    params = [p for _, ps in owners for p in ps]
    x = images[:1].to(explainer.adapter.device)
    try:
        with explainer.guard, torch.enable_grad():
            for p in params:
                p.requires_grad_(True)
            grads = torch.autograd.grad(explainer.adapter.embed_image(x).float().sum(), params,
                                        allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    used_params = {id(p) for p, g in zip(params, grads, strict=True) if g is not None}
    used = {names[m] for m, ps in owners if any(id(p) in used_params for p in ps)}
    for name in [names[m] for m, _ in owners if names[m] in used]:
        if name in order:
            continue
        # started just after its nearest called ancestor (nn.MultiheadAttention's out_proj),
        # or first of all when no ancestor ran (a ViT root's position embedding)
        parents = [n for n in order if _inside(name, n)]
        at = order.index(parents[-1]) + 1 if parents else 0
        while parents and at < len(order) and _inside(order[at], parents[-1]):
            at += 1
        order.insert(at, name)
    return [n for n in order if n in used][::-1]


def randomize_modules(model: nn.Module, names: Sequence[str], seed: int = 0,
                      reset_statistics: bool = True) -> None:
    """Re-initialise, in place, the parameters owned by the named modules (not recursive).

    A module's own ``reset_parameters()`` is used where it has one (PyTorch's default
    initialisation, as Quantus does); other parameters (a ViT's class token and position
    embedding) are drawn from N(0, std of the trained tensor, or 0.02). With
    ``reset_statistics`` (default) a normalisation layer's running statistics are reset too
    (``reset_running_stats()``: mean 0, variance 1): trained statistics divide the activations
    of random weights by variances fitted to other activations, and a real Market-1501
    OSNet's maps stopped being finite after conv4 that way. ``False`` keeps them. The global
    RNG is left untouched.
    """
    modules = dict(model.named_modules())
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for name in names:
            module = modules[name]
            params = list(module.parameters(recurse=False))
            if not params:
                continue
            resets = reset_statistics and hasattr(module, "reset_running_stats")
            buffers = {} if resets else {n: b.clone()
                                         for n, b in module.named_buffers(recurse=False)}
            if resets:
                module.reset_running_stats()
            if hasattr(module, "reset_parameters") and not list(module.children()):
                module.reset_parameters()
            else:  # a container's reset_parameters would also reset its children
                for p in params:
                    std = float(p.std()) if p.numel() > 1 else 0.0
                    p.normal_(0.0, std if std > 0 and math.isfinite(std) else 0.02)
            for n, b in buffers.items():
                getattr(module, n).copy_(b)


def _expand(model: nn.Module, unit: str) -> list[str]:
    """The modules with parameters inside ``unit`` (itself included), last first."""
    prefix = f"{unit}." if unit else ""
    names = [n for n, m in model.named_modules() if (n == unit or n.startswith(prefix))
             and next(m.parameters(recurse=False), None) is not None]
    return names[::-1]


def _chunks(units: list[str], steps: int | None) -> list[list[str]]:
    n = len(units) if steps is None else max(1, min(steps, len(units)))
    bounds = np.linspace(0, len(units), n + 1).round().astype(int)
    return [units[bounds[i]:bounds[i + 1]] for i in range(n)]


def _label(group: list[str]) -> str:
    first, last = group[0] or "<root>", group[-1] or "<root>"
    return first if len(group) == 1 else f"{first} .. {last}"


@dataclass
class RandomizationResult:
    """Map similarity to the original maps after each randomisation step, for one method."""

    method: str
    mode: str
    #: what step ``s`` randomised (cascade: this group on top of all previous ones)
    steps: list[str]
    #: modules of each step's group
    groups: list[list[str]]
    #: measure -> ``(S, B)`` similarity of each image's map to its original map
    similarity: dict[str, Tensor]
    measure: str
    threshold: float
    original_maps: Tensor
    #: ``(S, B, h, w)`` the maps after each step
    maps: Tensor
    notes: list[str] = field(default_factory=list)
    #: per step: why its similarity is undefined (non-finite or constant maps, an error), or None
    undefined: list[str | None] = field(default_factory=list)

    def curve(self, measure: str | None = None) -> list[float]:
        """Mean similarity per step; NaN where the step is undefined (see ``undefined``)."""
        values = self.similarity[measure or self.measure]
        return [float(v) for v in values.mean(dim=1)]

    @property
    def verdict(self) -> str:
        """``"passes"``: some step's mean similarity drops below ``threshold``, every step
        defined (the maps depend on the weights); ``"fails"``: none does (the method explains
        the input, not the model); ``"undetermined"``: a step's similarity is undefined, so
        the check could not be carried out and says nothing either way."""
        curve = self.curve()
        if any(self.undefined) or not curve or any(math.isnan(v) for v in curve):
            return "undetermined"
        return "passes" if min(curve) < self.threshold else "fails"

    @property
    def passes(self) -> bool:
        """True only when :attr:`verdict` is ``"passes"``."""
        return self.verdict == "passes"

    def to_json(self) -> dict[str, Any]:
        """Steps, curve (null where undefined), the reasons and the verdict: strict JSON."""
        return {"steps": self.steps, "curve": [None if math.isnan(v) else v
                                               for v in self.curve()],
                "undefined": list(self.undefined), "threshold": self.threshold,
                "verdict": self.verdict, "passes": self.passes}

    def rows(self) -> list[dict[str, Any]]:
        """Tidy records, one per step and measure (for a DataFrame)."""
        return [{"method": self.method, "mode": self.mode, "step": s, "randomized": label,
                 "measure": m, "mean": float(v[s].nanmean()), "std": float(v[s].std())}
                for m, v in self.similarity.items() for s, label in enumerate(self.steps)]


def _map_layer(layer: Any, model: nn.Module) -> Any:
    """A layer given as a module of the user's model, as the same module of the copy."""
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name
        raise InputError("layer is a module that is not part of the model")
    return layer


def model_randomization_check(
        model: nn.Module, images: Tensor, targets: Tensor,
        method: str | Sequence[str] = "gradcam", *, layers: str = "cascade",
        explainer_factory: Callable[[nn.Module], Engine] | None = None,
        units: Sequence[str] | None = None, steps: int | None = 8,
        measures: Sequence[str] = ("spearman", "spearman_abs"),
        measure: str = "spearman_abs", threshold: float = 0.5, seed: int = 0,
        explainify_options: dict[str, Any] | None = None,
        method_options: dict[str, dict[str, Any]] | None = None,
        reset_statistics: bool = True,
) -> dict[str, RandomizationResult]:
    """Randomise a deep copy of ``model`` layer by layer and compare each method's maps.

    ``targets`` give the score explained for each image: ``(B, D)`` reference embeddings held
    fixed, or ``(B, 3, H, W)`` images (e.g. each query's gallery match) re-embedded by each
    randomised model, so that every step explains the same pair under the current weights.
    ``explainer_factory(copy)`` wraps a copy (default: an :class:`~reid_explain.core.engine.Engine`
    on the adapter ``explainify(copy, **explainify_options)`` would choose;
    a ``layer`` given as a module of ``model`` is mapped to the copy's module of the same name).
    ``units`` are module names to randomise, top first, one step each with all their
    parameterised submodules (default: :func:`randomization_units` split into ``steps``
    groups; ``steps=None``: one module per step). The user's model is never hooked or
    changed; the copy is in eval mode. ``reset_statistics``: see :func:`randomize_modules`.

    A step is *undefined* for a method when a map could not be computed, is not finite, or
    became constant (:attr:`RandomizationResult.undefined` says why); the verdict is then
    ``"undetermined"``, never ``"passes"``.
    """
    if layers not in ("cascade", "independent"):
        raise InputError(f"layers must be 'cascade' or 'independent', got {layers!r}")
    methods = [method] if isinstance(method, str) else list(method)
    if measure not in measures:
        measures = (*measures, measure)
    options = dict(explainify_options or {})
    clone = copy.deepcopy(model).eval()
    if "layer" in options:
        options["layer"] = _map_layer(options["layer"], model)
    factory = explainer_factory or (lambda m: Engine(build_adapter(m, **options)))
    per_method = method_options or {}
    image_size = (int(images.shape[-2]), int(images.shape[-1]))
    with factory(clone) as explainer:
        if units is not None:
            groups = [_expand(clone, u) for u in units]
        else:
            groups = _chunks(randomization_units(explainer, images), steps)
        groups = [g for g in groups if g]
        if not groups:
            raise InputError("no parameterised module to randomise runs when embedding the "
                             "images")
        snapshot = {k: v.detach().clone() for k, v in clone.state_dict().items()}

        device = explainer.adapter.device
        inputs = images.to(device)

        def explain() -> dict[str, Tensor]:
            refs = explainer.embed(targets) if targets.dim() == 4 else targets.float()
            return {m: explainer.attribute(inputs, CosineSimilarity(refs.to(device)), method=m,
                                           **per_method.get(m, {})) for m in methods}

        original = explain()
        after: dict[str, list[Tensor]] = {m: [] for m in methods}
        sims: dict[str, dict[str, list[Tensor]]] = {m: {k: [] for k in measures}
                                                    for m in methods}
        undefined: dict[str, list[str | None]] = {m: [] for m in methods}
        notes: dict[str, list[str]] = {m: [] for m in methods}
        for s, group in enumerate(groups):
            if layers == "independent":
                clone.load_state_dict(snapshot)
            randomize_modules(clone, group, seed=seed + s, reset_statistics=reset_statistics)
            error = None
            try:
                maps = explain()
                embeddings = explainer.embed(inputs).float()
            except PluginError as exc:  # e.g. a fully random host giving non-finite outputs
                error = f"the maps could not be computed: {exc}"
                maps = {m: torch.full_like(original[m], float("nan")) for m in methods}
                embeddings = None
            if embeddings is not None and not torch.isfinite(embeddings).all():
                rows = int((~torch.isfinite(embeddings).all(dim=1)).sum())
                error = f"{rows} of {len(embeddings)} embeddings are not finite"
            for m in methods:
                after[m].append(maps[m])
                bad = _undefined_rows(original[m], maps[m])
                if error is not None:
                    bad = torch.ones_like(bad)
                reason = error or _undefined_reason(original[m], maps[m], bad)
                undefined[m].append(reason)
                if reason is not None:
                    notes[m].append(f"step {s} ({_label(group)}): similarity undefined, "
                                    f"{reason}")
                for k, v in _similarities(original[m], maps[m], measures, image_size).items():
                    sims[m][k].append(v.masked_fill(bad.to(v.device), float("nan")))
        clone.load_state_dict(snapshot)
    return {m: RandomizationResult(
        method=m, mode=layers, steps=[_label(g) for g in groups], groups=groups,
        similarity={k: torch.stack(v) for k, v in sims[m].items()}, measure=measure,
        threshold=threshold, original_maps=original[m], maps=torch.stack(after[m]),
        notes=notes[m], undefined=undefined[m]) for m in methods}


def _constant(maps: Tensor) -> Tensor:
    flat = maps.flatten(1)
    return (flat.amax(dim=1) - flat.amin(dim=1)) <= 1e-12 * flat.abs().amax(dim=1).clamp_min(1)


def _undefined_rows(original: Tensor, randomized: Tensor) -> Tensor:
    """``(B,)`` rows whose similarity has no meaning: a non-finite map, or a randomised map
    that became constant while the original was not (nothing left to rank: a ReLU'd Grad-CAM
    of dead activations). A method whose maps are constant throughout is compared as usual
    (it fails: the map does not depend on the weights)."""
    finite = torch.isfinite(original.flatten(1)).all(1) & torch.isfinite(
        randomized.flatten(1)).all(1)
    flat = torch.zeros_like(finite)
    flat[finite] = _constant(randomized[finite]) & ~_constant(original[finite])
    return (~finite | flat).cpu()


def _undefined_reason(original: Tensor, randomized: Tensor, bad: Tensor) -> str | None:
    if not bad.any():
        return None
    n = int(bad.sum())
    nonfinite = int((~torch.isfinite(randomized.flatten(1)).all(1)).sum())
    what = (f"{nonfinite} non-finite" if nonfinite else "") + (
        " and " if nonfinite and n > nonfinite else "") + (
        f"{n - nonfinite} constant" if n > nonfinite else "")
    return f"{what} of {len(bad)} randomised maps"


# --------------------------------------------------------------------------- random maps


@dataclass
class RandomMapBaseline:
    """A metric's values on ``n`` draws of uniform random maps, per key ``(n, P)``."""

    metric: str
    draws: dict[str, Tensor]

    @property
    def mean(self) -> dict[str, Tensor]:
        """Per-pair mean over the draws, ``(P,)`` per key."""
        return {k: v.float().nanmean(dim=0) for k, v in self.draws.items()}

    def summary(self) -> dict[str, float]:
        """Data-set mean and the spread of the data-set mean over draws, per key."""
        out: dict[str, float] = {}
        for k, v in self.draws.items():
            per_draw = v.float().nanmean(dim=1)
            out[k] = float(per_draw.nanmean())
            out[f"{k}_std"] = float(per_draw.std()) if len(per_draw) > 1 else 0.0
        return out


def _random_like(x: Tensor, generator: torch.Generator) -> Tensor:
    return torch.rand(x.shape, generator=generator, dtype=torch.float32).to(x.device)


def _randomized(explanation: Any, generator: torch.Generator) -> Any:
    """The explanation with every map (and token relevance) replaced by uniform noise."""
    if explanation is None:
        return None
    changes: dict[str, Any] = {}
    for name in ("query", "gallery", "image"):
        grounding = getattr(explanation, name, None)
        if grounding is not None:
            changes[name] = dataclasses.replace(grounding,
                                                maps=_random_like(grounding.maps, generator))
    text = getattr(explanation, "text", None)
    if text is not None:
        noise = _random_like(text.relevance, generator).masked_fill(text.special, 0.0)
        changes["text"] = dataclasses.replace(text, relevance=noise)
    return dataclasses.replace(explanation, **changes)


def random_map_baseline(metric: Metric | str, context: MetricContext, n: int = 8,
                        seed: int = 0, **metric_options: Any) -> RandomMapBaseline:
    """Compute ``metric`` on ``n`` draws of uniform random maps replacing the explanation's.

    Maps keep their shape (their resolution: the patch grid for Grad-CAM, pixels for IG), so
    the baseline has the method's spatial granularity; every other field of ``context`` (masks,
    gallery, masker, seed) is kept. ``metric`` is a Metric instance or a registered name (then
    built with ``metric_options``). Draws run one after another: a metric's own batching is
    over the pairs of one context, and metrics that rank over the query set need it intact.
    """
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    if isinstance(metric, str):
        metric = plugins.get("metrics", metric).obj(**metric_options)
    generator = torch.Generator().manual_seed(seed)
    draws: dict[str, list[Tensor]] = {}
    for _ in range(n):
        noisy = dataclasses.replace(
            context, explanation=_randomized(context.explanation, generator),
            text_explanation=_randomized(context.text_explanation, generator))
        if context.explainer is not None:
            with context.explainer.guard:
                values = metric.compute(noisy)
        else:
            values = metric.compute(noisy)
        for key, value in values.items():
            draws.setdefault(key, []).append(torch.as_tensor(value).detach().cpu())
    return RandomMapBaseline(metric=metric.name, draws={k: torch.stack(v)
                                                        for k, v in draws.items()})
