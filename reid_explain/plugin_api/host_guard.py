"""HostGuard: whatever happens inside, the host model leaves as it came in.

On entry it records every module's train/eval mode, hooks, submodules, parameters, buffers and
each parameter's ``requires_grad`` and ``.grad``, then puts the model in eval mode (explanations
of a single pair must not depend on the rest of the batch through batch-norm statistics). On
exit, also after an exception, it restores all of them: hooks a plugin forgot are removed,
modules it injected are taken out.
"""

from __future__ import annotations

from types import TracebackType

from torch import nn

_HOOK_DICTS = (
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
    "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)
_MEMBER_DICTS = ("_modules", "_parameters", "_buffers")


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
        # (module's __dict__, name, the dict object, a copy of it or None when empty): most of
        # a host's hook dicts are empty, and copying each of them on every metric call cost
        # ~21 ms per entry on a 442-module OSNet; an empty one is only checked on exit
        self._dicts = [(attrs, name, value, dict(value) if value else None)
                       for attrs in (vars(m) for m in self._modules)
                       for name in _HOOK_DICTS + _MEMBER_DICTS
                       if (value := attrs.get(name)) is not None]
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
        for attrs, name, original, saved in self._dicts:
            if attrs.get(name) is not original:  # the dict itself was replaced
                attrs[name] = original
            if saved is None:
                if original:
                    original.clear()
            elif original.keys() != saved.keys() or any(original[k] is not v
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
