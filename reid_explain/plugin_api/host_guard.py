"""HostGuard: whatever happens inside, the host model leaves as it came in.

On entry it records every module's train/eval mode, hooks, submodules, parameters, buffers and
each parameter's ``requires_grad`` and ``.grad``, then puts the model in eval mode (explanations
of a single pair must not depend on the rest of the batch through batch-norm statistics). On
exit, also after an exception, it restores all of them: hooks a plugin forgot are removed,
modules it injected are taken out.
"""

from __future__ import annotations

import operator
from types import TracebackType

from torch import nn

_HOOK_DICTS = (
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
    "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)
_MEMBER_DICTS = ("_modules", "_parameters", "_buffers")
_NAMES = _HOOK_DICTS + _MEMBER_DICTS
_GET_DICTS = operator.itemgetter(*_NAMES)


def _dicts_of(attrs: dict) -> tuple:
    """A module's hook and member dicts, in ``_NAMES`` order (None for one it lacks, as a
    module unpickled from an older torch may)."""
    try:
        return _GET_DICTS(attrs)
    except KeyError:
        return tuple(attrs.get(name) for name in _NAMES)


class HostGuard:
    def __init__(self, model: nn.Module, eval_mode: bool = True) -> None:
        self.model = model
        self.eval_mode = eval_mode
        self._depth = 0

    def __enter__(self) -> HostGuard:
        self._depth += 1
        if self._depth > 1:  # nested use: the outermost guard restores
            return self
        self._modules = list(self.model.modules())
        # each module's hook and member dicts (the objects themselves), and copies of the
        # non-empty ones only: most of a host's hook dicts are empty, and an empty one need
        # only be empty again on exit (recording each dict with its own entry cost 10 ms per
        # call on a 442-module OSNet, and every explain call pays it; this takes 3)
        self._attrs = [vars(m) for m in self._modules]
        self._dicts = [_dicts_of(attrs) for attrs in self._attrs]
        every = [d for dicts in self._dicts for d in dicts if d is not None]
        self._empty = [d for d in every if not d]
        self._saved = [(d, dict(d)) for d in every if d]
        self._modes = [(m, m.training) for m in self._modules]
        self._params = [(p, p.requires_grad, p.grad) for p in self.model.parameters()]
        if self.eval_mode and any(mode for _, mode in self._modes):
            self.model.eval()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._depth -= 1
        if self._depth:
            return
        for attrs, dicts in zip(self._attrs, self._dicts, strict=True):
            if not all(map(operator.is_, _dicts_of(attrs), dicts)):  # a dict replaced outright
                for name, original in zip(_NAMES, dicts, strict=True):
                    if original is not None and attrs.get(name) is not original:
                        attrs[name] = original
        for original in self._empty:
            if original:
                original.clear()
        for original, saved in self._saved:
            if original.keys() != saved.keys() or any(original[k] is not v
                                                        for k, v in saved.items()):
                original.clear()
                original.update(saved)
        for module, mode in self._modes:
            if module.training is not mode:  # Module.__setattr__ is slow: set what changed
                module.training = mode
        for param, requires_grad, grad in self._params:
            param.requires_grad_(requires_grad)
            if param.grad is not grad:
                param.grad = grad
