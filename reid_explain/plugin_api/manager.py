"""The plugin manager and the registry of what plugins provide.

Built-in plugins and third-party plugins arrive the same way: through the ``reid_explain``
entry-point group or ``register(obj)``. Each registration hook is called once per plugin with a
``register`` callback that records which plugin provided which name, so that listings and error
messages can name the plugin.
"""

from __future__ import annotations

import importlib.metadata
import threading
from dataclasses import dataclass
from typing import Any

import pluggy

from .. import hookspecs
from ..errors import PluginConflictError, PluginError, UnknownPluginError

#: kind of thing a plugin provides -> the hook that registers it
KINDS: dict[str, str] = {
    "adapters": "register_adapters",
    "attributions": "register_attributions",
    "metrics": "register_metrics",
    "maskers": "register_maskers",
    "phrase_extractors": "register_phrase_extractors",
    "training_losses": "register_training_losses",
    "backbone_modifications": "register_backbone_modifications",
}

_SINGULAR = {
    "adapters": "adapter",
    "attributions": "attribution method",
    "metrics": "metric",
    "maskers": "masker",
    "phrase_extractors": "phrase extractor",
    "training_losses": "training loss",
    "backbone_modifications": "backbone modification",
}


@dataclass(frozen=True)
class Entry:
    """One registered thing: its name, the class, and the plugin that registered it."""

    kind: str
    name: str
    obj: Any
    plugin: str

    @property
    def description(self) -> str:
        doc = getattr(self.obj, "description", None) or (self.obj.__doc__ or "")
        return doc.strip().splitlines()[0] if doc.strip() else ""


_lock = threading.RLock()
_pm: pluggy.PluginManager | None = None
_cache: dict[str, dict[str, Entry]] = {}


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide manager, with every ``reid_explain`` entry point loaded."""
    global _pm
    with _lock:
        if _pm is None:
            pm = pluggy.PluginManager(hookspecs.PROJECT)
            pm.add_hookspecs(hookspecs)
            _load_entry_points(pm)
            _pm = pm
        return _pm


_sources: dict[str, str] = {}


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """Register every plugin of the ``reid_explain`` entry-point group.

    Like pluggy's ``load_setuptools_entrypoints``, but a plugin that fails to import is an
    error naming the entry point and its distribution, not a bare ImportError.
    """
    seen: set[str] = set()
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != hookspecs.PROJECT or ep.name in seen or pm.get_plugin(ep.name):
                continue
            seen.add(ep.name)
            where = f"{dist.metadata['name']} {dist.version}"
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(f"plugin {ep.name!r} (entry point {ep.value!r} of {where}) "
                                  f"failed to load: {type(exc).__name__}: {exc}") from exc
            pm.register(plugin, name=ep.name)
            _sources[ep.name] = f"entry point ({where})"


def register(plugin: object, name: str | None = None) -> str:
    """Register a plugin object (module, class instance, ...) and return its plugin name."""
    pm = get_plugin_manager()
    with _lock:
        try:
            registered = pm.register(plugin, name=name)
        except ValueError as exc:
            raise PluginConflictError(f"cannot register plugin {name or plugin!r}: {exc}") from exc
        _cache.clear()
    if registered is None:
        raise PluginConflictError(f"plugin {name or plugin!r} is blocked")
    return registered


def unregister(plugin: object | None = None, name: str | None = None) -> None:
    """Remove a plugin registered earlier (by object or by name)."""
    pm = get_plugin_manager()
    with _lock:
        pm.unregister(plugin=plugin, name=name)
        _cache.clear()


def _plugin_name(pm: pluggy.PluginManager, plugin: object) -> str:
    return pm.get_name(plugin) or repr(plugin)


def registry(kind: str) -> dict[str, Entry]:
    """Everything registered for ``kind`` (one of :data:`KINDS`), keyed by name."""
    if kind not in KINDS:
        raise UnknownPluginError(f"unknown plugin kind {kind!r}; known kinds: {sorted(KINDS)}")
    pm = get_plugin_manager()
    with _lock:
        if kind in _cache:
            return _cache[kind]
        entries: dict[str, Entry] = {}
        hook = getattr(pm.hook, KINDS[kind])
        for impl in hook.get_hookimpls():  # registration order
            plugin_name = _plugin_name(pm, impl.plugin)

            def _register(obj: Any, _plugin: str = plugin_name) -> None:
                name = getattr(obj, "name", None)
                if not isinstance(name, str) or not name:
                    raise PluginError(f"plugin {_plugin!r} registered {obj!r} as one of its "
                                      f"{kind} without a string `name` attribute")
                if name in entries and entries[name].obj is not obj:
                    raise PluginConflictError(
                        f"{_SINGULAR[kind]} {name!r} is registered by both plugin "
                        f"{entries[name].plugin!r} and plugin {_plugin!r}; unregister one")
                entries[name] = Entry(kind, name, obj, _plugin)

            try:
                impl.function(register=_register)
            except (PluginError, PluginConflictError):
                raise
            except Exception as exc:
                raise PluginError(f"plugin {plugin_name!r} raised in {KINDS[kind]}: "
                                  f"{type(exc).__name__}: {exc}") from exc
        _cache[kind] = entries
        return entries


def get(kind: str, name: str) -> Entry:
    """Look up one registered thing; an unknown name lists the known ones."""
    entries = registry(kind)
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise UnknownPluginError(
            f"unknown {_SINGULAR[kind]} {name!r}; known: {known}. "
            "A plugin provides more with reid_explain.register(obj) or an entry point in the "
            "group 'reid_explain'.")
    return entries[name]


def list_plugins() -> list[dict[str, Any]]:
    """One record per loaded plugin: its name, where it came from and what it provides."""
    pm = get_plugin_manager()
    provided: dict[str, dict[str, list[str]]] = {}
    for kind in KINDS:
        for entry in registry(kind).values():
            provided.setdefault(entry.plugin, {}).setdefault(kind, []).append(entry.name)
    records = []
    for plugin in pm.get_plugins():
        name = _plugin_name(pm, plugin)
        records.append({
            "name": name,
            "source": _sources.get(name, "register()"),
            "provides": {k: sorted(v) for k, v in provided.get(name, {}).items()},
        })
    return sorted(records, key=lambda r: r["name"])
