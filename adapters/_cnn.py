"""Shared machinery of adapters for CNN hosts: a real spatial layer with (B, C, h, w) output.

The default spatial layer is found by one probe forward that records every module's output
(the whole module tree, ModuleLists included) in the order the modules finish: the last module
whose output is a spatial map with more than one cell per axis is the last place before global
pooling where the map still says *where*. A host that never has one (PCB's 6x1 part stripes
come after its last 2-D map, so this is rare) gets the last map with more than one cell and a
warning that names the layer and how to pick another.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from reid_explain.errors import AdapterError
from reid_explain.plugin_api.adapter import Adapter, resolve_module

logger = logging.getLogger("reid_explain")

#: the probe size when the host declares none (Market-1501 / DukeMTMC crops)
DEFAULT_PROBE_SIZE = (256, 128)


def pool_embedding(output: Any, model: nn.Module) -> Tensor:
    """A host's forward output as ``(B, D)``: 4-D feature maps are average-pooled."""
    if isinstance(output, (tuple, list)):
        raise AdapterError(f"{type(model).__name__} returned a {type(output).__name__} in eval "
                           "mode; pass embed=callable(model, images) -> (B, D) tensor")
    if output.dim() == 4:
        return output.mean(dim=(2, 3))
    if output.dim() != 2:
        raise AdapterError(f"{type(model).__name__} returned shape {tuple(output.shape)}; "
                           "expected (B, D) embeddings")
    return output


@contextlib.contextmanager
def _eval_probe(model: nn.Module) -> Iterator[torch.device]:
    """Eval mode and no grad for a probe forward; every module's mode is restored."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            yield next((p.device for p in model.parameters()), torch.device("cpu"))
    finally:
        for m, mode in modes.items():
            m.training = mode


def run_probe(model: nn.Module, embed: Callable[[Tensor], Any], image_size: tuple[int, int],
              device: torch.device | None = None) -> None:
    """One dummy image through ``embed`` (eval mode, no grad). The host's own exception becomes
    an :class:`AdapterError` naming the size tried, since that is what a user can change."""
    with _eval_probe(model) as default_device:
        images = torch.zeros(1, 3, *image_size, device=device or default_device)
        try:
            embed(images)
        except AdapterError:
            raise
        except Exception as exc:
            first = str(exc).splitlines()[0][:300] if str(exc) else ""
            raise AdapterError(
                f"{type(model).__name__} failed on a {image_size[0]}x{image_size[1]} probe image "
                f"on {images.device} ({type(exc).__name__}: {first}); if the host takes another "
                "size, pass explainify(model, image_size=(H, W)); if it needs another device, "
                "move it there first") from exc


def probe_output_shape(model: nn.Module, layer: nn.Module, embed: Any,
                       image_size: tuple[int, int], device: torch.device) -> tuple[int, ...] | None:
    """Shape of ``layer``'s output for one dummy image through ``embed`` (no grad, eval mode,
    modes restored), or None if the layer did not run."""
    shape: list[tuple[int, ...]] = []

    def record(_m: nn.Module, _a: Any, out: Any) -> None:
        if isinstance(out, Tensor):
            shape.append(tuple(out.shape))

    handle = layer.register_forward_hook(record)
    try:
        run_probe(model, embed, image_size, device)
    finally:
        handle.remove()
    return shape[-1] if shape else None


@dataclass(frozen=True)
class SpatialLayerChoice:
    """The probed spatial layer: its name, its grid at the probe size, and the candidates."""

    name: str
    grid: tuple[int, int]
    image_size: tuple[int, int]
    #: every module with a (B, C, h, w) output of more than one cell, in the order they finished
    candidates: tuple[tuple[str, tuple[int, int]], ...]

    @property
    def degenerate(self) -> bool:
        return min(self.grid) < 2


def module_output_grids(model: nn.Module, embed: Callable[[Tensor], Any],
                        image_size: tuple[int, int], root: nn.Module | None = None,
                        channels_last: bool = False) -> list[tuple[str, tuple[int, int]]]:
    """(name, (h, w)) of every module under ``root`` (default: the model) whose output is a
    4-D map of more than one cell, in the order the modules finished in one probe forward.

    Names are relative to ``model``. A module called twice keeps its last call's position.
    ``channels_last`` reads maps as ``(B, h, w, C)`` (timm's Swin stages).
    """
    root = root if root is not None else model
    prefix = {id(m): n for n, m in model.named_modules()}
    finished: dict[str, tuple[int, int]] = {}
    handles = []

    def hook(name: str) -> Callable[..., None]:
        def record(_m: nn.Module, _a: Any, out: Any) -> None:
            if isinstance(out, Tensor) and out.dim() == 4:
                h, w = (out.shape[1], out.shape[2]) if channels_last else (out.shape[2],
                                                                           out.shape[3])
                finished.pop(name, None)  # re-insert: dicts keep insertion order
                if h * w > 1:
                    finished[name] = (int(h), int(w))
        return record

    for module in root.modules():
        name = prefix.get(id(module), "")
        if name and not isinstance(module, nn.Identity):  # the same tensor as its input
            handles.append(module.register_forward_hook(hook(name)))
    try:
        run_probe(model, embed, image_size)
    finally:
        for handle in handles:
            handle.remove()
    return list(finished.items())


def modules_every_path_runs_through(model: nn.Module, embed: Callable[[Tensor], Any],
                                    names: list[str], image_size: tuple[int, int]) -> set[str]:
    """Those of ``names`` whose outputs every gradient path from the image to the embedding runs
    through (detached, they would leave the embedding blind to the image): a stage's output, not
    a tensor inside a residual block that the shortcut bypasses.

    One forward of a random probe image with grad, then its autograd graph read once
    (:class:`GradientPaths`): structure, not gradient values, so a residual branch that is zero
    at init (CLIP's and timm's ResNets zero each block's last norm) is still a way around.
    """
    modules = dict(model.named_modules())
    slots: dict[str, list[tuple[Any, int]]] = {n: [] for n in names}

    def hook(name: str) -> Callable[..., None]:
        def record(_m: nn.Module, _a: Any, out: Any) -> None:  # the slot as it is made,
            if isinstance(out, Tensor) and out.grad_fn is not None:  # before in-place ops
                slots[name].append((out.grad_fn, out.output_nr))
        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in dict.fromkeys(names)]
    try:
        with _eval_probe(model) as device, torch.enable_grad():
            generator = torch.Generator().manual_seed(0)
            images = torch.randn(1, 3, *image_size, generator=generator).to(device)
            images.requires_grad_(True)
            out = embed(images)
            out = out if isinstance(out, Tensor) else out[0]
    finally:
        for handle in handles:
            handle.remove()
    paths = GradientPaths(out, images) if out.grad_fn is not None else None
    if paths is None or not paths.leaf_reached:  # nothing depends on the image: every
        return set(names)                       # detach leaves it so
    cuts = paths.cut_vertices()
    return {n for n, made in slots.items()
            if made and (any(v in cuts for v in made) or paths.separated_by(set(made)))}


class GradientPaths:
    """The autograd graph from an output back to one leaf tensor, as vertices (each node, and
    each of its output slots) that lie on some path between the two."""

    def __init__(self, out: Tensor, leaf: Tensor) -> None:
        self.root = (out.grad_fn, out.output_nr)
        self.children: dict[Any, list[Any]] = {}  # vertex -> next vertices
        order: list[Any] = []  # post-order
        reaches: dict[Any, bool] = {}
        stack: list[tuple[Any, bool]] = [(self.root, False)]
        while stack:
            vertex, done = stack.pop()
            if done:
                order.append(vertex)
                reaches[vertex] = (getattr(vertex, "variable", None) is leaf
                                   or any(reaches[c] for c in self.children[vertex]))
                continue
            if vertex in self.children:
                continue
            self.children[vertex] = ([vertex[0]] if isinstance(vertex, tuple) else
                                     [(node, nr) for node, nr in vertex.next_functions
                                      if node is not None])
            stack.append((vertex, True))
            stack.extend((c, False) for c in self.children[vertex] if c not in self.children)
        # reversed post-order is topological, the root first
        self.on_path = [v for v in reversed(order) if reaches[v]]
        self.position = {v: i for i, v in enumerate(self.on_path)}
        self.leaf_reached = bool(reaches[self.root])

    def cut_vertices(self) -> set[Any]:
        """Output slots on every path. In a topological order a vertex lies on every path
        exactly when no edge jumps over its position: a path that avoids it must step over it,
        and an edge that does closes such a path."""
        position = self.position
        jumps = [0] * (len(self.on_path) + 1)  # +1 where an edge's span opens, -1 past it
        for v in self.on_path:
            for c in self.children[v]:
                if c in position and position[c] > position[v] + 1:
                    jumps[position[v] + 1] += 1
                    jumps[position[c]] -= 1
        cuts, spanning = set(), 0
        for i, v in enumerate(self.on_path):
            spanning += jumps[i]
            if spanning == 0 and isinstance(v, tuple):
                cuts.add(v)
        return cuts

    def separated_by(self, vertices: set[Any]) -> bool:
        """Whether every path runs through one of ``vertices`` (a module called more than
        once: several outputs that together may cut what none cuts alone)."""
        if not self.leaf_reached or self.root in vertices:
            return True
        seen, stack = {self.root}, [self.root]
        while stack:
            vertex = stack.pop()
            for c in self.children[vertex]:
                if c in self.position and c not in vertices and c not in seen:
                    if not self.children[c]:  # the leaf's node: reached around them
                        return False
                    seen.add(c)
                    stack.append(c)
        return True


def choose_spatial_layer(model: nn.Module, embed: Callable[[Tensor], Any],
                         image_size: tuple[int, int], root: nn.Module | None = None,
                         channels_last: bool = False) -> SpatialLayerChoice:
    """The last module whose output still has more than one cell per axis (else the last with
    more than one cell, flagged degenerate)."""
    grids = module_output_grids(model, embed, image_size, root, channels_last)
    if not grids:
        raise AdapterError(f"{type(model).__name__} has no module with a spatial (B, C, h, w) "
                           f"output of more than one cell for {image_size[0]}x{image_size[1]} "
                           "images; pass layer='name.of.a.conv.layer' (see "
                           "model.named_modules())")
    proper = [(n, g) for n, g in grids if min(g) > 1]
    name, grid = (proper or grids)[-1]
    return SpatialLayerChoice(name, grid, tuple(image_size), tuple(grids))  # type: ignore[arg-type]


def warn_if_degenerate(model: nn.Module, layer_name: str, grid: tuple[int, int],
                       image_size: tuple[int, int],
                       candidates: tuple[tuple[str, tuple[int, int]], ...] = ()) -> None:
    """A map of one cell on an axis cannot say where along that axis: say so, and how to pick
    another layer."""
    if min(grid) >= 2:
        return
    better = [f"{n!r} ({g[0]}x{g[1]})" for n, g in candidates if min(g) > 1][-3:]
    hint = f"; layers with finer maps: {', '.join(better)}" if better else ""
    warnings.warn(
        f"{type(model).__name__}: spatial layer {layer_name!r} gives a {grid[0]}x{grid[1]} grid "
        f"for {image_size[0]}x{image_size[1]} images, so its maps cannot localise along the "
        f"axis of size 1; choose another with explainify(model, layer='name'){hint}",
        UserWarning, stacklevel=4)


class CNNAdapter(Adapter):
    """A host whose spatial layer is a real module with (B, C, h, w) output."""

    #: maps are (B, h, w, C) (timm's NHWC stages): the tap transposes them
    channels_last: bool = False
    #: "stages": real (B, C, h, w) modules before the spatial layer (multi-stage LayerCAM);
    #: "relu": the host's activations include ``nn.ReLU`` modules (guided backpropagation
    #: rewrites their gradients; ReLU6, GELU, SiLU and functional ReLUs it cannot), added per
    #: host when it has them
    capabilities = frozenset({"stages"})

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None,
                 image_size: tuple[int, int] | None = None, **options: Any) -> None:
        super().__init__(model, **options)
        if any(isinstance(m, nn.ReLU) for m in model.modules()):
            self.capabilities = self.capabilities | {"relu"}
        declared = self.input_size()
        if image_size is not None:
            self.probe_size: tuple[int, int] = (int(image_size[0]), int(image_size[1]))
        else:
            self.probe_size = declared or DEFAULT_PROBE_SIZE
        self._grids: dict[tuple[int, int], tuple[int, int]] = {}
        self._tap = nn.Identity()
        candidates: tuple[tuple[str, tuple[int, int]], ...] = ()
        if layer is None:
            layer = self._default_layer()
            if layer is None:
                choice = choose_spatial_layer(model, self._embed_image, self.probe_size,
                                              root=self.search_root(),
                                              channels_last=self.channels_last)
                layer, candidates = choice.name, choice.candidates
                self._grids[self.probe_size] = choice.grid
            named = False
        else:
            named = True
        self.layer_name = layer if isinstance(layer, str) else _module_name(model, layer)
        self.layer = resolve_module(model, layer)
        try:
            grid = self.grid_size(self.probe_size)
        except AdapterError:
            if named and image_size is None:
                return  # a named layer, a host of another size: checked when images come
            raise
        logger.info("%s adapter: spatial layer %r, %dx%d grid for %dx%d images", self.name,
                    self.layer_name, grid[0], grid[1], *self.probe_size)
        warn_if_degenerate(model, self.layer_name, grid, self.probe_size, candidates)

    def _default_layer(self) -> str | None:
        """The spatial layer the host family declares, if any (checked by a probe); None
        searches the module tree."""
        return None

    def search_root(self) -> nn.Module:
        """The part of the host searched for the spatial layer (the image tower)."""
        return self.model

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        key = (int(image_size[0]), int(image_size[1]))
        if key not in self._grids:
            shape = probe_output_shape(self.model, self.layer, self._embed_image, key,
                                       self.device)
            if shape is None or len(shape) != 4:
                raise AdapterError(f"layer {self.layer_name!r} of {type(self.model).__name__} "
                                   f"gave output shape {shape}; a spatial layer must output "
                                   "(B, C, h, w)")
            self._grids[key] = (shape[1], shape[2]) if self.channels_last else (shape[2],
                                                                                 shape[3])
        return self._grids[key]

    @contextlib.contextmanager
    def spatial_tap(self) -> Iterator[nn.Module]:
        if not self.channels_last:
            yield self.layer
            return

        def through_tap(_m: nn.Module, _a: Any, out: Tensor) -> Tensor:
            # (B, h, w, C) -> the adapter's own Identity as (B, C, h, w) -> back
            return self._tap(out.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

        handle = self.layer.register_forward_hook(through_tap)
        try:
            yield self._tap
        finally:
            handle.remove()

    def stage_layers(self, image_size: tuple[int, int], max_factor: int = 2) -> list[str]:
        """The spatial layer and, per finer grid up to ``max_factor`` times finer per axis,
        the last module before it with that grid through which every path from the image to
        the embedding runs: a stage's output (an OSNet's ``conv3.2.0``, a ResNet's
        ``layer3``), not a tensor inside a residual block that its shortcut bypasses (a
        ResNet's ``layer4.0.bn1``). Fine to coarse; cached per size."""
        if self.channels_last:
            raise AdapterError(f"{self.name} adapter: the stages of this host are (B, h, w, C) "
                               "maps; multi-stage methods need (B, C, h, w) layers")
        key = (int(image_size[0]), int(image_size[1]), int(max_factor))
        cache = self.__dict__.setdefault("_stage_cache", {})
        if key not in cache:
            grids = module_output_grids(self.model, self._embed_image, key[:2],
                                        root=self.search_root())
            names = [n for n, _ in grids]
            spatial = self.grid_size(key[:2])
            before = grids[:names.index(self.layer_name)] if self.layer_name in names else []
            candidates: dict[tuple[int, int], list[str]] = {}
            for name, grid in before:
                if spatial[0] < grid[0] <= max_factor * spatial[0] and \
                        spatial[1] < grid[1] <= max_factor * spatial[1]:
                    candidates.setdefault(grid, []).append(name)
            cuts = modules_every_path_runs_through(
                self.model, self._embed_image, [n for g in candidates for n in candidates[g]],
                key[:2])
            stages = []
            for grid in sorted(candidates, key=lambda g: -g[0] * g[1]):
                stage = next((n for n in reversed(candidates[grid]) if n in cuts), None)
                if stage is not None:
                    stages.append(stage)
            cache[key] = stages + [self.layer_name]
        return list(cache[key])

    def stage_before(self, image_size: tuple[int, int], max_factor: int = 2) -> str | None:
        """The finest of :meth:`stage_layers`' stages before the spatial layer (Grad-CAM's
        layer when the spatial map is coarse), or None if there is none."""
        stages = self.stage_layers(image_size, max_factor)
        return stages[0] if len(stages) > 1 else None

    def _all_paths_through(self, name: str, image_size: tuple[int, int]) -> bool:
        """Whether every path from the image to the embedding runs through ``name``'s
        output."""
        return name in modules_every_path_runs_through(self.model, self._embed_image, [name],
                                                       image_size)

    def describe(self) -> dict[str, Any]:
        grid = self._grids.get(self.probe_size)
        return {**super().describe(), "layer": self.layer_name,
                **({"grid": f"{grid[0]}x{grid[1]} at {self.probe_size[0]}x{self.probe_size[1]}"}
                   if grid else {})}


def _module_name(model: nn.Module, layer: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is layer:
            return name or type(layer).__name__
    return type(layer).__name__
