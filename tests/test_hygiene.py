"""Acceptance 4: every adapter x every attribution leaves hooks, parameters, modes and
requires_grad exactly as they were (also when the host starts in train mode with frozen parts
and a user's own hook)."""

from __future__ import annotations

import pytest
import torch
from conftest import images, make_osnet, make_plain, make_timm_vit, make_tiny_clip
from hygiene import host_state

from reid_explain import explainify
from reid_explain.plugin_api.manager import registry

HOSTS = {
    "torchreid": (make_osnet, {}, (128, 64)),
    "open_clip": (make_tiny_clip, {}, (64, 32)),
    "timm_vit": (make_timm_vit, {}, (64, 32)),
    "module": (make_plain, {"layer": "trunk"}, (64, 32)),
}
FAST = {"integrated_gradients": {"n_steps": 4}, "occlusion": {"perturbations_per_eval": 16}}


def _prepare(model: torch.nn.Module) -> list[torch.Tensor]:
    """A host as users have it mid-training: train mode, a frozen layer, a hook of their own."""
    model.train()
    first = next(model.parameters())
    first.requires_grad_(False)
    calls: list[torch.Tensor] = []
    leaf = next(m for m in model.modules() if not list(m.children()) and
                any(True for _ in m.parameters()))
    leaf.register_forward_hook(lambda m, a, out: calls.append(out))
    return calls


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_every_attribution_leaves_the_host_untouched(host):
    factory, options, size = HOSTS[host]
    model = factory()
    user_hook_calls = _prepare(model)
    before = host_state(model)
    methods = [name for name, e in registry("attributions").items()
               if e.obj.modality == "image" and not name.startswith("test_")]
    exp = explainify(model, **options)
    assert host_state(model) == before
    ran = []
    for method in methods:
        if not set(registry("attributions")[method].obj.requires) <= exp.adapter.capabilities:
            continue
        result = exp.explain(images(1, size), images(2, size, seed=1), method=method, top_k=1,
                             **FAST.get(method, {}))
        assert len(result) == 1
        assert host_state(model) == before, f"{method} changed the host"
        ran.append(method)
    exp.score(result, ["masking_drop"])
    assert host_state(model) == before
    if "text" in exp.adapter.capabilities:
        exp.explain_text(["a man in a red shirt"], images(2, size), top_k=1)
        assert host_state(model) == before
    exp.close()
    assert host_state(model) == before
    assert model.training
    assert user_hook_calls, "the user's own hook must keep working during explanation"
    expected = {"gradcam", "integrated_gradients", "occlusion"}
    if "attention" in exp.adapter.capabilities:
        expected |= {"rollout", "attention_relevance"}
    assert expected <= set(ran)


def test_context_manager_closes_on_error():
    model = make_tiny_clip()
    before = host_state(model)
    with pytest.raises(ZeroDivisionError), explainify(model) as exp:
        with exp.adapter.capture_attention():
            raise ZeroDivisionError
    assert host_state(model) == before
    with pytest.raises(RuntimeError, match="closed"):
        exp.embed(images(1))


def test_strict_json_writes_undefined_figures_as_null_never_nan():
    import json
    import math

    import numpy as np
    import torch

    from reid_explain._util.io import json_safe, strict_json

    record = {"nan": float("nan"), "inf": -math.inf, "np": np.float32("nan"),
              "array": np.array([1.5, np.nan]), "tensor": torch.tensor([0.25, float("inf")]),
              "nested": [{"x": (1, float("nan"))}], 3: "int key", "ok": 0.5}
    text = strict_json(record)
    assert json.loads(text) == {"nan": None, "inf": None, "np": None, "array": [1.5, None],
                                "tensor": [0.25, None], "nested": [{"x": [1, None]}],
                                "3": "int key", "ok": 0.5}
    assert json_safe(np.int64(7)) == 7 and isinstance(json_safe(np.int64(7)), int)
    with pytest.raises(ValueError):  # what the plain call does: strict_json must differ
        json.dumps(record, allow_nan=False, default=str)



def test_every_recorded_result_is_strict_json():
    """The results the docs quote (benchmarks/*.json) parse with NaN and Infinity refused: an
    undefined figure (a CI over one seed) is null, which no reader can mistake for a number."""
    import json
    from pathlib import Path

    def refuse(constant: str) -> None:
        raise ValueError(f"bare {constant}")

    files = sorted((Path(__file__).resolve().parents[1] / "benchmarks").rglob("*.json"))
    assert len(files) >= 10
    for path in files:
        try:
            json.loads(path.read_text(), parse_constant=refuse)
        except ValueError as exc:
            pytest.fail(f"{path.name}: {exc}")

def test_host_guard_undoes_what_a_careless_plugin_does_inside_it():
    """Everything a plugin can leave behind, undone on exit: hooks in dicts that were empty and
    in ones that were not, a hook dict replaced outright, an injected module, a parameter
    swapped out, requires_grad, .grad and train mode; a nested guard leaves the restoring to
    the outermost one."""
    from collections import OrderedDict

    from reid_explain.plugin_api.host_guard import HostGuard

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.Sequential(torch.nn.ReLU()))
    model.train()
    calls: list[int] = []
    model[0].register_forward_hook(lambda *_: calls.append(0))  # the user's own hook
    before = host_state(model)
    weight = model[0].weight
    guard = HostGuard(model)
    with guard:
        assert not model.training and not model[1].training
        model[0].register_forward_hook(lambda *_: calls.append(1))  # a non-empty dict
        model[1].register_forward_pre_hook(lambda *_: calls.append(2))  # an empty one
        model[2]._forward_hooks = OrderedDict({99: lambda *_: calls.append(3)})  # replaced
        model[2].add_module("stray", torch.nn.Identity())
        model[0].weight = torch.nn.Parameter(torch.zeros_like(weight))
        model[1].bias.requires_grad_(False)
        model[1].weight.grad = torch.ones(4)
        with guard:  # nested: nothing restored yet
            pass
        assert len(model[0]._forward_hooks) == 2 and "stray" in model[2]._modules
    assert host_state(model) == before
    assert model[0].weight is weight and model.training and model[1].training
    assert model[1].bias.requires_grad and model[1].weight.grad is None
    assert not model[1]._forward_pre_hooks and not model[2]._forward_hooks
    model(torch.zeros(1, 3, 5, 5))
    assert calls == [0]  # only the user's hook runs


def test_host_guard_takes_a_module_that_lacks_a_hook_dict():
    """A module unpickled from an older torch may lack a newer hook dict: the guard still
    undoes hooks in the dicts it has and leaves the missing one missing."""
    from reid_explain.plugin_api.host_guard import HostGuard

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    del model[1].__dict__["_forward_hooks_always_called"]
    before = host_state(model)
    with HostGuard(model):
        model[1]._forward_hooks[7] = lambda *_: None
        model[0].register_forward_pre_hook(lambda *_: None)
    assert host_state(model) == before
    assert not model[1]._forward_hooks and not model[0]._forward_pre_hooks
    assert "_forward_hooks_always_called" not in model[1].__dict__


def test_the_fingerprint_sees_one_flipped_bit_and_names_its_tensor():
    """What every hygiene check rests on: a change of one bit of one weight (the smallest a
    stray in-place update can make) changes ``host_state``, and at that tensor only."""
    model = make_plain()
    before = host_state(model)
    name, weight = next(iter(model.state_dict().items()))
    with torch.no_grad():
        weight.view(-1)[3:4].view(torch.int32).bitwise_xor_(1)  # the mantissa's lowest bit
    after = host_state(model)
    assert after != before
    changed = [k for k in before["state_dict"] if before["state_dict"][k] != after["state_dict"][k]]
    assert changed == [name]
