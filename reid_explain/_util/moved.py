"""Old import paths of modules that moved (issue 29's layout), kept working with a warning.

A finder on ``sys.meta_path`` answers only the old dotted names listed in :data:`MOVED`: the
old name becomes an alias of the new module (the same object, so ``isinstance`` checks and
monkeypatches hold) and a :class:`DeprecationWarning` names the new path. Nothing is left
behind at the old place in the tree, so the package root shows the layers only.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

#: old module -> where it lives now (stable paths a user may import)
MOVED: dict[str, str] = {
    "reid_explain._io": "reid_explain._util.io",
    "reid_explain._memory": "reid_explain._util.memory",
    "reid_explain._lazy": "reid_explain._util.lazy",
    "reid_explain.adapter": "reid_explain.plugin_api.adapter",
    "reid_explain.attribution": "reid_explain.plugin_api.attribution",
    "reid_explain.masker": "reid_explain.plugin_api.masker",
    "reid_explain.metric": "reid_explain.plugin_api.metric",
    "reid_explain.training_hooks": "reid_explain.plugin_api.training_hooks",
    "reid_explain.targets": "reid_explain.plugin_api.targets",
    "reid_explain.phrases": "reid_explain.plugin_api.phrases",
    "reid_explain.interfaces": "reid_explain.plugin_api.interfaces",
    "reid_explain.maps": "reid_explain.plugin_api.maps",
    "reid_explain.host_guard": "reid_explain.plugin_api.host_guard",
    "reid_explain.plugin_manager": "reid_explain.plugin_api.manager",
    "reid_explain.inputs": "reid_explain.core.inputs",
    "reid_explain.adapter_choice": "reid_explain.core.adapter_choice",
    "reid_explain.engine": "reid_explain.core.engine",
    "reid_explain.explainer": "reid_explain.explain.explainer",
    "reid_explain.grounding": "reid_explain.explain.grounding",
    "reid_explain.hosts": "reid_explain.explain.hosts",
    "reid_explain.demo": "reid_explain.studies.demo",
    "reid_explain.data.synth": "reid_explain.synthpedes",
    "reid_explain.data.synth_captions": "reid_explain.synthpedes.captions",
    "reid_explain.data.synth_crops": "reid_explain.synthpedes.crops",
    "reid_explain.data.synth_export": "reid_explain.synthpedes.export",
    "reid_explain.data.synth_figure": "reid_explain.synthpedes.figure",
    "reid_explain.data.synth_identities": "reid_explain.synthpedes.identities",
    "reid_explain.data.synth_pairs": "reid_explain.synthpedes.pairs",
    "reid_explain.data.synth_plan": "reid_explain.synthpedes.planning",
    "reid_explain.data.synth_render": "reid_explain.synthpedes.rendering",
    "reid_explain.data.synth_side": "reid_explain.synthpedes.side",
}


def warn_moved(old: str, new: str, stacklevel: int = 3) -> None:
    warnings.warn(f"{old} moved to {new}; import it from there (the old path will be removed)",
                  DeprecationWarning, stacklevel=stacklevel)


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old dotted name to the module that now holds it."""

    def find_spec(self, fullname: str, path: object = None, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warn_moved(spec.name, new)  # import machinery frames are skipped: the user's line
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """The new module is already executed; the old name only aliases it."""


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
