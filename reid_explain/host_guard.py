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
        self._dicts = [(m, name, dict(getattr(m, name))) for m in self._modules
                       for name in _HOOK_DICTS + _MEMBER_DICTS if hasattr(m, name)]
        self._modes = [(m, m.training) for m in self._modules]
        self._params = [(p, p.requires_grad, p.grad) for p in self.model.parameters()]
        if self.eval_mode:
            self.model.eval()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._depth -= 1
        if self._depth:
            return
        for module, name, saved in self._dicts:
            current = getattr(module, name)
            if current.keys() != saved.keys() or any(current[k] is not v
                                                     for k, v in saved.items()):
                current.clear()
                current.update(saved)
        for module, mode in self._modes:
            module.training = mode
        for param, requires_grad, grad in self._params:
            param.requires_grad_(requires_grad)
            if param.grad is not grad:
                param.grad = grad
