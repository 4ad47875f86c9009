"""MoSAIC-ReID's residual LoRA mixture of experts, as a backbone-modification plugin.

Every expert is a peft LoRA adapter (``peft.inject_adapter_in_model``, one adapter name per
expert) on the chosen Linear projections of the host's last ``last_n`` blocks. peft's own path
keeps the adapters disabled; a forward hook on each peft ``LoraLayer`` adds the per-sample gated
sum of its experts (:class:`reid_explain.moe.mixture.GatedLoraSum`), so a batch can route every
sample to its own *set* of experts. Fresh experts have ``B = 0`` and change nothing.

Routing: ``with moe.route(codes):`` (oracle gates from attribute codes),
``with moe.route(gates=g):`` (any ``(B, E)`` gates, e.g. a learned router's),
``with moe.bypass():`` (experts off), ``with moe.ablate("lower_color"):`` (one group's gates
zeroed). A forward with no routing raises, so that a training loop cannot silently run without
experts. ``remove()`` puts the host's original modules back (module types, state_dict, hooks,
``requires_grad`` and the ``peft_config`` attribute as they were).
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reid_explain.hookspecs import hookimpl
from reid_explain.moe.experts import ExpertLayout
from reid_explain.moe.mixture import GatedLoraSum, Pooling, RoutingPlan, Workspace, make_plan
from reid_explain.plugin_api.adapter import Adapter
from reid_explain.plugin_api.training_hooks import BackboneModification

#: default rank, alpha, dropout and number of blocks (see docs/mosaic.md)
DEFAULTS: dict[str, Any] = {"schema": "market1501", "attributes": None, "last_n": 2,
                            "targets": None, "rank": 4, "alpha": 8.0, "dropout": 0.0,
                            "pooling": "mean", "freeze_backbone": True, "unfreeze_last": 0,
                            "prefix": "moe_"}
_UNSET = object()


def default_targets(block: nn.Module) -> list[str]:
    """Every ``nn.Linear`` of a block that its forward calls: not the ``out_proj`` inside an
    ``nn.MultiheadAttention`` (used through its weight only, and peft's MHA LoRA is buggy)."""
    inside_mha = {name for name, m in block.named_modules() if isinstance(m, nn.MultiheadAttention)}
    return [name for name, m in block.named_modules()
            if isinstance(m, nn.Linear) and name
            and not any(name.startswith(p + ".") for p in inside_mha)]


class LoraMoE(BackboneModification):
    """Attribute LoRA experts (peft) in the last blocks, mixed per sample by a router."""

    name = "lora_moe"
    description = "MoSAIC-ReID residual LoRA mixture of attribute experts (peft), routed per sample"
    requires = frozenset({"attention"})

    def __init__(self, adapter: Adapter, **options: Any) -> None:
        unknown = sorted(set(options) - set(DEFAULTS))
        if unknown:
            raise TypeError(f"lora_moe got unknown option(s) {unknown}; known: {sorted(DEFAULTS)}")
        super().__init__(adapter, **{**DEFAULTS, **options})
        o = self.options
        if o["pooling"] not in ("mean", "sum"):
            raise ValueError(f"pooling must be 'mean' or 'sum', got {o['pooling']!r}")
        self.layout = ExpertLayout(o["schema"], prefix=o["prefix"], attributes=o["attributes"])
        self.pooling: Pooling = o["pooling"]
        self._group_of = self.layout.group_of()
        self._gates: Tensor | None = None
        self._off: frozenset[str] = frozenset()
        self._plan: RoutingPlan | None = None
        self._plan_on: dict[torch.device, RoutingPlan] = {}
        self._layers: dict[str, nn.Module] = {}
        self._mixers: dict[str, GatedLoraSum] = {}
        self._workspace = Workspace()  # the layers' gathered factors, reused across forwards
        self._handles: list[Any] = []
        self._saved_requires_grad: dict[str, bool] = {}
        self._saved_peft_config: Any = _UNSET
        self.target_names: list[str] = []

    # -- placement -----------------------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        return self.adapter.model

    def _block_names(self) -> list[str]:
        blocks = self.adapter.blocks()
        n = int(self.options["last_n"])
        if not 1 <= n <= len(blocks):
            raise ValueError(f"last_n must be in 1..{len(blocks)} (the host's blocks), got {n}")
        names = {id(m): name for name, m in self.model.named_modules()}
        return [names[id(b)] for b in blocks[-n:]]

    def _resolve_targets(self) -> list[str]:
        out = []
        for block_name in self._block_names():
            block = self.model.get_submodule(block_name)
            targets = self.options["targets"] or default_targets(block)
            for target in targets:
                try:
                    module = block.get_submodule(target)
                except AttributeError:
                    raise ValueError(f"block {block_name!r} has no module {target!r}") from None
                if isinstance(module, nn.MultiheadAttention):
                    raise ValueError(
                        f"{block_name}.{target} is an nn.MultiheadAttention: peft 0.15-0.21 "
                        "applies the out_proj LoRA delta twice there; target Linear projections")
                if not isinstance(module, nn.Linear):
                    raise ValueError(f"{block_name}.{target} is a {type(module).__name__}; "
                                     "lora_moe targets nn.Linear projections")
                if _is_lora_layer(module):
                    raise ValueError(f"{block_name}.{target} already carries peft LoRA layers")
                out.append(f"{block_name}.{target}")
        if not out:
            raise ValueError("no target projections found; pass targets=[...]")
        return out

    def lora_config(self) -> Any:
        """The peft ``LoraConfig`` of every expert (an anchored regex over the exact targets)."""
        from peft import LoraConfig

        pattern = "^(" + "|".join(re.escape(n) for n in self.target_names) + ")$"
        o = self.options
        return LoraConfig(r=int(o["rank"]), lora_alpha=float(o["alpha"]),
                          lora_dropout=float(o["dropout"]), target_modules=pattern, bias="none")

    def _apply(self) -> None:
        from peft import inject_adapter_in_model

        model = self.model
        self.target_names = self._resolve_targets()
        self._saved_requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        self._saved_peft_config = model.__dict__.get("peft_config", _UNSET)
        config = self.lora_config()
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*peft_config.*")
                for name in self.layout.names:
                    inject_adapter_in_model(config, model, adapter_name=name)
            self._layers = {n: model.get_submodule(n) for n in self.target_names}
            for name, layer in self._layers.items():
                if not _is_lora_layer(layer):
                    raise RuntimeError(f"peft did not wrap {name} (got {type(layer).__name__})")
                layer.enable_adapters(False)  # peft's own path adds nothing; the hook mixes
                self._mixers[name] = GatedLoraSum(layer, self.layout.names, self._workspace)
                self._handles.append(layer.register_forward_hook(self._hook(name)))
            self._set_trainable()
        except Exception:
            self._restore()
            raise

    def _set_trainable(self) -> None:
        """Experts train; the host keeps its flags unless frozen (default), last blocks opt-in."""
        model = self.model
        expert_ids = {id(p) for p in self.parameters()}
        unfreeze = int(self.options["unfreeze_last"])
        thawed = tuple(n + "." for n in self._all_block_names()[-unfreeze:]) if unfreeze else ()
        for name, p in model.named_parameters():
            if id(p) in expert_ids:
                p.requires_grad_(True)
            elif thawed and _base_name(name).startswith(thawed):
                p.requires_grad_(True)
            elif self.options["freeze_backbone"]:
                p.requires_grad_(False)
            else:
                p.requires_grad_(self._saved_requires_grad.get(_base_name(name), True))

    def _all_block_names(self) -> list[str]:
        names = {id(m): name for name, m in self.model.named_modules()}
        return [names[id(b)] for b in self.adapter.blocks()]

    def _remove(self) -> None:
        self._restore()

    def _restore(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        model = self.model
        for name in self.target_names:
            module = model.get_submodule(name)
            if _is_lora_layer(module):
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name), child, module.get_base_layer())
        if self._saved_peft_config is _UNSET:
            model.__dict__.pop("peft_config", None)
        else:
            model.__dict__["peft_config"] = self._saved_peft_config
        for name, p in model.named_parameters():
            if name in self._saved_requires_grad:
                p.requires_grad_(self._saved_requires_grad[name])
        self._layers.clear()
        self._mixers.clear()
        self._workspace.clear()

    # -- the mixture ---------------------------------------------------------------------------
    def _hook(self, name: str):
        batch_dim = 0 if getattr(self.adapter, "batch_first", True) else 1

        def hook(_module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
            plan = self._current_plan(output.device)
            return self._mixers[name].add_to(output, args[0], plan, batch_dim,
                                             inplace=True)

        return hook

    def _current_plan(self, device: torch.device) -> RoutingPlan:
        if self._plan is None:
            if self._gates is None:
                raise RuntimeError("lora_moe: no routing for this forward; wrap it in "
                                   "moe.route(attribute_codes), moe.route(gates=...) or "
                                   "moe.bypass()")
            gates = self._gates.clone()
            if self._off:
                gates[:, self.layout.expert_mask(self._off)] = 0.0
            self._plan = make_plan(gates, self._group_of, len(self.layout.groups), self.pooling)
            self._plan_on = {}
        if device not in self._plan_on:
            self._plan_on[device] = self._plan.to(device)
        return self._plan_on[device]

    def set_gates(self, gates: Tensor | None) -> None:
        """Route the next forwards with ``(B, E)`` gates (expert order ``layout.names``)."""
        if gates is not None:
            gates = torch.as_tensor(gates).detach().float().cpu()
            if gates.dim() != 2 or gates.shape[1] != self.layout.num_experts:
                raise ValueError(f"gates must be (B, {self.layout.num_experts}), "
                                 f"got {tuple(gates.shape)}")
        self._gates = gates
        self._plan = None

    @contextlib.contextmanager
    def route(self, codes: Tensor | None = None, *, gates: Tensor | None = None
              ) -> Iterator[Tensor]:
        """Oracle routing from ``(B, A)`` attribute codes (schema order), or explicit gates."""
        if (codes is None) == (gates is None):
            raise ValueError("route() takes attribute codes or gates=, exactly one")
        previous = self._gates
        self.set_gates(self.layout.gates(codes) if codes is not None else gates)
        try:
            yield self._gates
        finally:
            self.set_gates(previous)

    @contextlib.contextmanager
    def bypass(self) -> Iterator[None]:
        """Experts off (the host's own output), e.g. a learned router's first pass."""
        previous = self._gates
        self._gates = torch.zeros(0, self.layout.num_experts)
        self._plan = RoutingPlan(0, dense=torch.zeros(0, self.layout.num_experts))
        self._plan_on = {}
        try:
            yield
        finally:
            self.set_gates(previous)

    @contextlib.contextmanager
    def ablate(self, *groups: str) -> Iterator[None]:
        """Switch expert groups off (their gates zeroed), for controlled attribute ablation."""
        for group in groups:
            self.layout.group(group)  # KeyError naming the groups
        previous = self._off
        self._off = previous | frozenset(groups)
        self._plan = None
        try:
            yield
        finally:
            self._off = previous
            self._plan = None

    @contextlib.contextmanager
    def peft_active(self, names: Sequence[str]) -> Iterator[None]:
        """peft's own forward with ``names`` active (its multi-active sum) and the gated hook
        off: the reference the gated sum is checked against."""
        flags = {id(p): p.requires_grad for p in self.parameters()}
        previous = self._gates, self._plan
        self._plan = RoutingPlan(0, dense=torch.zeros(0, self.layout.num_experts))
        self._plan_on = {}
        try:
            for layer in self._layers.values():
                layer.enable_adapters(True)
                layer.set_adapter(list(names))
            yield
        finally:
            for layer in self._layers.values():
                layer.enable_adapters(False)
            for p in self.parameters():
                p.requires_grad_(flags[id(p)])
            self._gates, self._plan = previous
            self._plan_on = {}

    # -- parameters and checkpoints ------------------------------------------------------------
    def lora_layers(self) -> dict[str, nn.Module]:
        """The peft ``LoraLayer`` modules, by host module name."""
        return dict(self._layers)

    def parameters(self) -> Iterator[nn.Parameter]:
        for layer in self._layers.values():
            for name in self.layout.names:
                yield layer.lora_A[name].weight
                yield layer.lora_B[name].weight

    def expert_state_dicts(self) -> dict[str, dict[str, Tensor]]:
        """peft's per-adapter state dicts (``get_peft_model_state_dict``, adapter name removed)."""
        from peft.functional import get_peft_model_state_dict

        self._check_applied()
        full = self.model.state_dict()
        return {name: {k: v.detach().clone() for k, v in get_peft_model_state_dict(
            self.model, state_dict=full, adapter_name=name).items()}
            for name in self.layout.names}

    def load_expert_state_dicts(self, states: Mapping[str, Mapping[str, Tensor]]) -> None:
        """Load peft per-adapter state dicts (``set_peft_model_state_dict``), strictly."""
        from peft.functional import set_peft_model_state_dict

        self._check_applied()
        missing = [n for n in self.layout.names if n not in states]
        extra = [n for n in states if n not in self.layout.names]
        if missing or extra:
            raise ValueError(f"expert states: missing {missing}, unexpected {extra}")
        expected = {f"{t}.{ab}.weight" for t in self.target_names for ab in ("lora_A", "lora_B")}
        for name in self.layout.names:
            got = set(states[name])
            if got != expected:
                raise ValueError(f"expert {name!r}: keys differ from this host's targets "
                                 f"(missing {sorted(expected - got)[:4]}, "
                                 f"unexpected {sorted(got - expected)[:4]})")
            result = set_peft_model_state_dict(self.model, dict(states[name]), adapter_name=name)
            bad = [k for k in getattr(result, "unexpected_keys", []) if name in k]
            if bad:
                raise ValueError(f"expert {name!r}: peft did not load {bad[:4]}")

    def state_dict(self) -> dict[str, Tensor]:
        return {f"{name}/{k}": v for name, state in self.expert_state_dicts().items()
                for k, v in state.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        nested: dict[str, dict[str, Tensor]] = {}
        for key, value in state.items():
            name, _, rest = key.partition("/")
            nested.setdefault(name, {})[rest] = value
        self.load_expert_state_dicts(nested)

    def save_pretrained(self, path: str | Path) -> Path:
        """One peft adapter folder per expert (``adapter_model.safetensors`` +
        ``adapter_config.json``, as ``PeftModel.save_pretrained``) and ``moe.json``."""
        from safetensors.torch import save_file

        path = Path(path)
        config = self.lora_config()
        for name, state in self.expert_state_dicts().items():
            folder = path / name
            folder.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in state.items()},
                      str(folder / "adapter_model.safetensors"))
            config.save_pretrained(str(folder))
        options = {k: v for k, v in self.options.items() if k != "schema"}
        (path / "moe.json").write_text(json.dumps(
            {"plugin": self.name, "options": options, "targets": self.target_names,
             "layout": self.layout.describe()}, indent=2, default=str))
        return path

    def load_pretrained(self, path: str | Path) -> None:
        """Load experts saved by :meth:`save_pretrained` into this (applied) modification."""
        from safetensors.torch import load_file

        path = Path(path)
        saved = json.loads((path / "moe.json").read_text())
        if saved["layout"] != self.layout.describe():
            raise ValueError(f"{path}: saved for expert layout {saved['layout']['groups'].keys()}, "
                             "which differs from this one")
        self.load_expert_state_dicts({
            name: load_file(str(path / name / "adapter_model.safetensors"))
            for name in self.layout.names})

    def _check_applied(self) -> None:
        if not self.applied and not self._layers:
            raise RuntimeError("lora_moe is not applied; call apply() or use it as a context")


def _is_lora_layer(module: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return isinstance(module, LoraLayer)


def _base_name(name: str) -> str:
    """The host's own parameter name for a parameter of a peft-wrapped layer."""
    return name.replace(".base_layer.", ".")


@hookimpl
def register_backbone_modifications(register):
    register(LoraMoE)
