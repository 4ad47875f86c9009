"""Acceptance 3: third-party plugins via register() and via an entry point; clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import images, make_osnet
from hygiene import host_state

import reid_explain
from reid_explain import (
    Attribution,
    Metric,
    PluginConflictError,
    PluginError,
    UnknownPluginError,
    explainify,
    hookimpl,
)
from reid_explain.cli import main as cli_main

THIRD_PARTY = textwrap.dedent('''
    import torch
    import reid_explain


    class CenterPrior(reid_explain.Attribution):
        """A custom map: distance to the image centre, scaled by the score."""

        name = "center_prior"

        def attribute(self, inputs, target, baselines=None):
            h, w = self.adapter.grid_size(tuple(inputs.shape[-2:]))
            ys = torch.linspace(-1, 1, h)[:, None]
            xs = torch.linspace(-1, 1, w)[None, :]
            prior = 1 - (ys ** 2 + xs ** 2).sqrt() / 2 ** 0.5
            with torch.no_grad():
                scores = self.forward_func(target)(inputs, *target.args)
            return scores[:, None, None] * prior


    class MapMass(reid_explain.Metric):
        """Total mass of the query maps."""

        name = "map_mass"

        def compute(self, context):
            return {"map_mass": context.explanation.query.maps.flatten(1).sum(1)}


    @reid_explain.hookimpl
    def register_attributions(register):
        register(CenterPrior)


    @reid_explain.hookimpl
    def register_metrics(register):
        register(MapMass)
''')


class Saliency(Attribution):
    """Third-party vanilla gradient saliency, defined in the test."""

    name = "test_saliency"

    def attribute(self, inputs, target, baselines=None):
        inputs = inputs.detach().requires_grad_(True)
        with torch.enable_grad():
            score = self.forward_func(target)(inputs, *target.args).sum()
            grad, = torch.autograd.grad(score, inputs)
        return grad.abs().amax(dim=1)


class MeanMap(Metric):
    name = "test_mean_map"

    def compute(self, context):
        return {"test_mean_map": context.explanation.gallery.maps.flatten(1).mean(1)}


class TestPlugin:
    @hookimpl
    def register_attributions(self, register):
        register(Saliency)

    @hookimpl
    def register_metrics(self, register):
        register(MeanMap)


@pytest.fixture
def third_party():
    plugin = TestPlugin()
    reid_explain.register(plugin, name="test-third-party")
    yield plugin
    reid_explain.unregister(plugin)


def test_register_lists_and_uses_by_name(third_party, capsys):
    assert cli_main(["plugins", "--json"]) == 0
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["test-third-party"]["provides"] == {"attributions": ["test_saliency"],
                                                       "metrics": ["test_mean_map"]}
    assert listed["test-third-party"]["source"] == "register()"
    assert "gradcam" in listed["gradcam"]["provides"]["attributions"]
    model = make_osnet()
    q, g = images(1, (128, 64)), images(2, (128, 64), seed=1)
    with explainify(model) as exp:
        result = exp.explain(q, g, method="test_saliency")
        assert result.query.maps.shape == (2, 128, 64)
        inputs = g[result.pairs[:, 1]].clone().requires_grad_(True)
        q_emb = model(q).detach()
        score = torch.nn.functional.cosine_similarity(model(inputs), q_emb.expand(2, -1)).sum()
        expected = torch.autograd.grad(score, inputs)[0].abs().amax(1)
        torch.testing.assert_close(result.gallery.maps, expected, atol=1e-6, rtol=1e-5)
        scored = exp.score(result, ["test_mean_map"])
        torch.testing.assert_close(scored["test_mean_map"], expected.flatten(1).mean(1),
                                   atol=1e-7, rtol=1e-5)
    reid_explain.unregister(third_party)
    with pytest.raises(UnknownPluginError):
        reid_explain.plugin_api.manager.get("attributions", "test_saliency")
    reid_explain.register(third_party, name="test-third-party")


def test_entry_point_plugin_is_loaded_listed_and_used(tmp_path):
    """A package installed the standard way: a module plus a .dist-info with entry_points.txt
    on sys.path, found by importlib.metadata in a fresh interpreter."""
    (tmp_path / "thirdparty_reid.py").write_text(THIRD_PARTY)
    dist = tmp_path / "thirdparty_reid-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-reid\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[reid_explain]\ncenter = thirdparty_reid\n")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    listing = subprocess.run([sys.executable, "-m", "reid_explain", "plugins", "--json"],
                             capture_output=True, text=True, env=env, check=True)
    listed = {r["name"]: r for r in json.loads(listing.stdout)}
    assert listed["center"]["provides"] == {"attributions": ["center_prior"],
                                            "metrics": ["map_mass"]}
    assert listed["center"]["source"].startswith("entry point (thirdparty-reid 1.0")
    use = textwrap.dedent('''
        import torch, reid_explain
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.ReLU(),
                                    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        with reid_explain.explainify(model, layer="1") as exp:
            r = exp.explain(torch.randn(1, 3, 32, 16), torch.randn(2, 3, 32, 16),
                            method="center_prior")
            m = exp.score(r, ["map_mass"])["map_mass"]
            diff = (r.query.maps.flatten(1).sum(1) - m).abs().max()
            print(tuple(r.query.maps.shape), float(diff))
    ''')
    out = subprocess.run([sys.executable, "-c", use], capture_output=True, text=True, env=env,
                         check=True)
    shape, diff = out.stdout.strip().rsplit(" ", 1)
    assert shape == "(2, 8, 4)" and float(diff) == 0.0


def test_unknown_method_lists_known_ones():
    with explainify(make_osnet()) as exp, pytest.raises(UnknownPluginError) as info:
        exp.explain(images(1, (128, 64)), images(1, (128, 64)), method="gradcamm")
    message = str(info.value)
    assert "'gradcamm'" in message
    for known in ("gradcam", "integrated_gradients", "occlusion", "rollout"):
        assert known in message
    with explainify(make_osnet()) as exp, pytest.raises(UnknownPluginError, match="map_mass|known"):
        exp.score(None, ["no_such_metric"])


class Exploding(Attribution):
    """Leaves a hook and an injected module behind, flips a flag, then raises."""

    name = "test_exploding"

    def attribute(self, inputs, target, baselines=None):
        model = self.adapter.model
        self.forward_func(target)(inputs, *target.args).sum().backward()  # fills .grad
        model.conv1.register_forward_hook(lambda *a: None)
        model.add_module("stray", torch.nn.Linear(2, 2))
        model.train()
        next(model.parameters()).requires_grad_(False)
        raise RuntimeError("boom")


class ExplodingPlugin:
    @hookimpl
    def register_attributions(self, register):
        register(Exploding)


def test_plugin_that_raises_is_named_and_host_untouched():
    plugin = ExplodingPlugin()
    reid_explain.register(plugin, name="exploder")
    try:
        model = make_osnet()
        before = host_state(model)
        with explainify(model) as exp, pytest.raises(PluginError) as info:
            exp.explain(images(1, (128, 64)), images(2, (128, 64)), method="test_exploding")
        assert "'exploder'" in str(info.value) and "boom" in str(info.value)
        assert host_state(model) == before
        assert not hasattr(model, "stray")
    finally:
        reid_explain.unregister(plugin)


def test_conflicting_names_are_an_error_naming_both_plugins():
    class Twin:
        @hookimpl
        def register_attributions(self, register):
            class GradCAMAgain(Attribution):
                name = "gradcam"
            register(GradCAMAgain)

    twin = Twin()
    reid_explain.register(twin, name="twin")
    try:
        expected = ("attribution method 'gradcam' is registered by both plugin 'gradcam' and "
                    "plugin 'twin'")
        with pytest.raises(PluginConflictError, match=expected):
            reid_explain.plugin_api.manager.registry("attributions")
    finally:
        reid_explain.unregister(twin)
    assert "gradcam" in reid_explain.plugin_api.manager.registry("attributions")
