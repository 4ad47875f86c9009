"""Acceptance 4: every adapter x every attribution leaves hooks, parameters, modes and
requires_grad exactly as they were (also when the host starts in train mode with frozen parts
and a user's own hook)."""

from __future__ import annotations

import pytest
import torch
from conftest import images, make_osnet, make_plain, make_timm_vit, make_tiny_clip
from hygiene import host_state

from reid_explain import explainify
from reid_explain.plugin_manager import registry

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

    from reid_explain._io import json_safe, strict_json

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
