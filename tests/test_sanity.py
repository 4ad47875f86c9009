"""Sanity checks: model randomisation (Adebayo et al. 2018) and the random-map baseline."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import images, make_plain
from hygiene import host_state
from scipy.stats import spearmanr
from torch import nn

import reid_explain
from reid_explain.evaluation.sanity import (
    map_ssim,
    model_randomization_check,
    random_map_baseline,
    randomization_units,
    randomize_modules,
    spearman,
)
from reid_explain.plugin_api import manager as plugins
from reid_explain.plugin_api.maps import GroundingMap, PairExplanation
from reid_explain.plugin_api.metric import MetricContext
from reid_explain.plugins.metrics.grounding import energy_pointing_game, part_regions


class ConstantBlob(reid_explain.Attribution):
    """A deliberately broken third-party method: the same centred blob for every model."""

    name = "constant_blob"

    def attribute(self, inputs: torch.Tensor, target: Any, baselines: Any = None,
                  **options: Any) -> torch.Tensor:
        h, w = self.adapter.grid_size(tuple(inputs.shape[-2:]))
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w),
                                indexing="ij")
        return torch.exp(-(yy ** 2 + xx ** 2) / 0.3).expand(len(inputs), h, w).clone()


class ConstantPlugin:
    @reid_explain.hookimpl
    def register_attributions(self, register):
        register(ConstantBlob)


@pytest.fixture
def constant_method():
    name = reid_explain.register(ConstantPlugin(), name="test_constant_blob")
    try:
        yield "constant_blob"
    finally:
        reid_explain.unregister(name=name)


# --------------------------------------------------------------------------- similarity


def test_spearman_matches_scipy_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(5, 6, 4, generator=g) * 4).round()  # many ties
    b = (a + torch.rand(5, 6, 4, generator=g) * 3).round()
    ours = spearman(a, b)
    for i in range(5):
        rho = spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert ours[i].item() == pytest.approx(rho, abs=1e-6)
    assert spearman(a, -a).tolist() == pytest.approx([-1.0] * 5)
    flat, other = torch.ones(2, 3, 3), torch.rand(2, 3, 3, generator=g)
    assert spearman(flat, 2 * flat).tolist() == [1.0, 1.0]  # nothing ranked in either
    assert spearman(flat, other).tolist() == [0.0, 0.0]


def test_ssim_is_one_for_identical_maps_and_lower_for_unrelated() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 8, 4, generator=g), torch.rand(3, 8, 4, generator=g)
    assert map_ssim(a, 3 * a + 1, size=(64, 32)).tolist() == pytest.approx([1.0] * 3, abs=1e-4)
    assert (map_ssim(a, b, size=(64, 32)) < 0.5).all()


# --------------------------------------------------------------------------- randomisation


def test_units_are_the_modules_that_run_top_first() -> None:
    model = make_plain()
    with reid_explain.explainify(model, layer="trunk") as exp:
        assert randomization_units(exp, images(2)) == ["head", "trunk.2", "trunk.0"]


class Mix(nn.Module):
    """Owns a parameter and a child whose weights it uses without calling it (as
    nn.MultiheadAttention does with out_proj)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(8))
        self.out = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.permute(0, 2, 3, 1) * self.scale, self.out.weight, self.out.bias)
        return y.permute(0, 3, 1, 2)


class FunctionalHost(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, 3, 1, 1))  # used by features(), root not called
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = Mix()
        self.classifier = nn.Linear(8, 5)  # training only

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.conv(x + self.pos))


def test_units_include_parameters_used_without_a_call() -> None:
    model = FunctionalHost().eval()
    with reid_explain.explainify(model, layer="conv",
                                 embed=lambda m, x: m.features(x).mean(dim=(2, 3))) as exp:
        assert randomization_units(exp, images(1)) == ["mix.out", "mix", "conv", ""]


def test_randomize_modules_touches_only_named_parameters_and_not_the_global_rng() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 4))
    model[1].running_mean.fill_(0.5)
    model[1].weight.data.fill_(2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    randomize_modules(model, ["0", "1"], seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    after = model.state_dict()
    assert not torch.equal(after["0.weight"], before["0.weight"])
    assert torch.equal(after["1.weight"], torch.ones(4))  # BatchNorm's own reset
    assert torch.equal(after["1.running_mean"], torch.zeros(4))  # statistics reset with it
    assert torch.equal(after["1.running_var"], torch.ones(4))
    assert torch.equal(after["2.weight"], before["2.weight"])
    model.load_state_dict(before)
    randomize_modules(model, ["1"], seed=7, reset_statistics=False)
    assert torch.equal(model.state_dict()["1.running_mean"], before["1.running_mean"])


class _Overflowing(nn.Module):
    """A host whose embedding overflows once ``gate`` is re-initialised: trained, the gate's
    output is -1 and ``exp(1000 x -1)`` is 0; re-initialised, some output is above 0.09 and
    its ``exp`` is inf in float32."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.gate = nn.Linear(8, 8)
        self.head = nn.Linear(8, 8)
        with torch.no_grad():
            self.gate.weight.zero_()
            self.gate.bias.fill_(-1.0)  # trained: exp(-1000) = 0; random: exp(>88) = inf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.trunk(x)
        pooled = f.mean(dim=(2, 3))
        blow = torch.exp(self.gate(pooled) * 1000)  # finite only while the gate is trained
        return self.head(pooled) + blow


def test_randomization_with_non_finite_steps_is_undetermined_never_passes() -> None:
    import json

    model = _Overflowing().eval()
    x, refs = images(4, seed=1), images(4, seed=2)
    # one group at a time: the steps after the gate's are defined again
    result = model_randomization_check(model, x, refs, method="gradcam", steps=None,
                                       layers="independent",
                                       explainify_options={"layer": model.trunk})["gradcam"]
    assert result.steps[0] == "head" and "gate" in result.steps
    gate = result.steps.index("gate")
    assert "could not be computed" in result.undefined[gate]
    assert "NaN/inf" in result.undefined[gate]
    assert math.isnan(result.curve()[gate])
    assert min(v for v in result.curve() if v == v) < result.threshold  # would have passed
    assert result.verdict == "undetermined" and not result.passes
    record = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert record["curve"][gate] is None and record["verdict"] == "undetermined"
    assert any(n.startswith(f"step {gate} (gate)") for n in result.notes)


@pytest.mark.parametrize("layers", ["cascade", "independent"])
def test_randomization_flags_a_constant_map_and_never_touches_the_model(
        constant_method: str, layers: str) -> None:
    model = make_plain().train()
    before = host_state(model)
    x, refs = images(4, seed=1), images(4, seed=2)
    results = model_randomization_check(
        model, x, refs, method=["gradcam", constant_method], layers=layers,
        explainify_options={"layer": model.trunk}, measures=("spearman", "ssim"))
    assert host_state(model) == before
    const = results[constant_method]
    assert const.steps == ["head", "trunk.2", "trunk.0"] and const.mode == layers
    assert const.similarity["spearman_abs"].shape == (3, 4)
    assert const.curve() == pytest.approx([1.0, 1.0, 1.0])
    assert const.curve("ssim") == pytest.approx([1.0, 1.0, 1.0], abs=1e-4)
    assert not const.passes
    grad = results["gradcam"]
    assert grad.maps.shape == (3, *grad.original_maps.shape)
    assert grad.passes and min(grad.curve()) < 0.5
    assert {r["measure"] for r in grad.rows()} == {"spearman", "spearman_abs", "ssim"}


def test_randomization_explicit_units_fixed_references_and_bad_mode() -> None:
    model = make_plain()
    x = images(3)
    with torch.no_grad():
        refs = model(images(3, seed=5))
    out = model_randomization_check(model, x, refs, units=["trunk", "head"], steps=None,
                                    explainify_options={"layer": "trunk"})
    result = out["gradcam"]
    assert result.groups == [["trunk.2", "trunk.0"], ["head"]]
    assert len(result.curve()) == 2
    with pytest.raises(reid_explain.InputError, match="cascade"):
        model_randomization_check(model, x, refs, layers="bottom-up",
                                  explainify_options={"layer": "trunk"})


# --------------------------------------------------------------------------- random maps


def _grounding_context() -> MetricContext:
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(3, 2, 16, 8, dtype=torch.bool)
    masks[:, 0, 2:14, 2:6] = True  # a "person" box, 48 of 128 pixels
    masks[:2, 1, 2:5, 3:5] = True  # a "head" absent from image 2
    maps = torch.rand(3, 4, 2, generator=g)
    grounding = GroundingMap(maps=maps, scores=torch.zeros(3), method="hand",
                             image_size=(16, 8), grid_size=(4, 2))
    explanation = PairExplanation(pairs=torch.zeros(3, 2, dtype=torch.long),
                                  scores=torch.zeros(3), method="hand", query=grounding,
                                  gallery=None)
    return MetricContext(explainer=None, explanation=explanation, query_masks=masks,
                         part_names=("body", "head"))


def test_random_map_baseline_replaces_only_the_maps() -> None:
    context = _grounding_context()
    base = random_map_baseline("energy_pointing_game", context, n=4, seed=3,
                               parts=["person", "head"])
    assert set(base.draws) == {"person_energy", "head_energy", "mean_energy"}
    assert base.draws["person_energy"].shape == (4, 3)
    assert base.draws["head_energy"][:, 2].isnan().all()  # absent part stays NaN
    # the same draws, by hand: uniform maps of the grid's shape, generator seeded with `seed`
    g = torch.Generator().manual_seed(3)
    _, regions = part_regions(context.query_masks, ("body", "head"), ["person", "head"])
    for d in range(4):
        noise = torch.rand(3, 4, 2, generator=g)
        up = F.interpolate(noise[:, None], size=(16, 8), mode="bilinear",
                           align_corners=False)[:, 0]
        torch.testing.assert_close(base.draws["person_energy"][d],
                                   energy_pointing_game(up, regions)[:, 0])
    assert context.explanation.query.maps.shape == (3, 4, 2)  # the caller's maps are kept
    assert base.summary()["person_energy"] == pytest.approx(48 / 128, abs=0.05)
    assert base.mean["person_energy"].shape == (3,)
    again = random_map_baseline("energy_pointing_game", context, n=4, seed=3,
                                parts=["person", "head"])
    torch.testing.assert_close(again.draws["person_energy"], base.draws["person_energy"])


def test_random_map_baseline_of_a_metric_that_runs_the_model() -> None:
    model = make_plain()
    with reid_explain.explainify(model, layer="trunk") as exp:
        explanation = exp.explain(images(2), images(3, seed=1), top_k=1)
        context = MetricContext(explainer=exp, explanation=explanation)
        metric = plugins.get("metrics", "masking_drop").obj(n_random=1)
        base = random_map_baseline(metric, context, n=2)
        keys = set(metric.compute(context))
        with pytest.raises(reid_explain.InputError):
            random_map_baseline(metric, context, n=0)
    assert set(base.draws) == keys and base.draws["query_gap"].shape == (2, 2)


# --------------------------------------------------------------------------- acceptance

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class TinyReID(nn.Module):
    """Four conv blocks (128x64 -> 16x8 grid), pooled embedding, ID classifier in training."""

    def __init__(self, n_ids: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out, stride in ((3, 16, 2), (16, 32, 2), (32, 64, 2), (64, 64, 1)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(64, n_ids)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x).mean(dim=(2, 3))
        return self.classifier(f) if self.training else f


def synthpedes_setup(seed: int, epochs: int = 15) -> dict[str, Any]:
    """Render 24 ids at 128x64, train TinyReID with an ID loss on the 12 train ids."""
    from reid_explain.synthpedes import SynthConfig, iter_samples, masks_from_labels, plan

    config = SynthConfig(n_ids=24, images_per_id=8, seed=seed, height=128, width=64,
                         occlusion_prob=0.0, captions_per_image=1)
    samples = list(iter_samples(plan(config), with_captions=False))

    def tensor(ss: list) -> torch.Tensor:
        x = torch.from_numpy(np.stack([s.rendered.image for s in ss])).permute(0, 3, 1, 2)
        return (x.float() / 255 - MEAN) / STD

    train = [s for s in samples if s.spec.split == "train"]
    query = [s for s in samples if s.spec.split == "query"]
    gallery = [s for s in samples if s.spec.split == "gallery" and s.spec.pid]
    pids = sorted({s.spec.pid for s in train})
    x, y = tensor(train), torch.tensor([pids.index(s.spec.pid) for s in train])
    torch.manual_seed(seed)
    model = TinyReID(len(pids))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for rows in torch.randperm(len(x), generator=g).split(32):
            flip = (torch.rand(len(rows), generator=g) < 0.5).view(-1, 1, 1, 1)
            batch = torch.where(flip, x[rows].flip(-1), x[rows])
            loss = F.cross_entropy(model(batch), y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    masks = torch.from_numpy(np.stack([masks_from_labels(s.rendered.labels) for s in query]))
    return {"model": model.eval(), "query": tensor(query), "gallery": tensor(gallery),
            "masks": masks}


def acceptance_numbers(setup: dict[str, Any], constant: str) -> dict[str, Any]:
    """Grad-CAM's grounding vs the random-map baseline, and the randomisation check."""
    from reid_explain.data.schema import PARTS

    model, query, gallery = setup["model"], setup["query"], setup["gallery"]
    out: dict[str, Any] = {}
    with reid_explain.explainify(model, layer="features") as exp:
        explanation = exp.explain(query, gallery, method="gradcam", top_k=1, side="query")
        context = MetricContext(explainer=exp, explanation=explanation,
                                query_masks=setup["masks"][explanation.pairs[:, 0]],
                                part_names=PARTS)
        for name in ("energy_pointing_game", "pointing_game", "mask_iou"):
            metric = plugins.get("metrics", name).obj(parts=["person", "upper_body"])
            values = metric.summarize({k: v.numpy() for k, v in metric.compute(context).items()})
            baseline = random_map_baseline(metric, context, n=8).summary()
            out.update({f"gradcam.{k}": v for k, v in values.items()})
            out.update({f"random.{k}": baseline[k] for k in values})
        pairs = explanation.pairs[:16]
    checks = model_randomization_check(model, query[pairs[:, 0]], gallery[pairs[:, 1]],
                                       method=["gradcam", constant],
                                       explainify_options={"layer": "features"})
    out["gradcam.randomized"] = checks["gradcam"].curve()
    out["constant.randomized"] = checks[constant].curve()
    out["gradcam.passes"] = checks["gradcam"].passes
    out["constant.passes"] = checks[constant].passes
    return out


@pytest.mark.slow
def test_acceptance_synthpedes_gradcam_beats_random_and_constant_map_is_flagged(
        constant_method: str) -> None:
    numbers = acceptance_numbers(synthpedes_setup(seed=0), constant_method)
    # Grad-CAM of a host trained a few epochs on SynthPedes looks at the person more than
    # chance. Margins hold over seeds 0..3 (smallest gaps seen: person energy 0.12, upper-body
    # energy 0.06, pointing 0.25, IoU 0.09); random maps score about the mask's area share.
    # About 15 s of CPU on 2 cores (training 8-10 s), slow only when the machine is shared.
    assert numbers["gradcam.person_energy"] > numbers["random.person_energy"] + 0.07
    assert numbers["gradcam.upper_body_energy"] > numbers["random.upper_body_energy"] + 0.03
    assert numbers["gradcam.person_pointing"] > numbers["random.person_pointing"] + 0.15
    assert numbers["gradcam.person_iou"] > numbers["random.person_iou"] + 0.05
    # randomising the weights changes Grad-CAM's maps; a model-independent map is flagged
    assert numbers["gradcam.passes"] and min(numbers["gradcam.randomized"]) < 0.5
    assert not numbers["constant.passes"]
    assert numbers["constant.randomized"] == pytest.approx([1.0] * 8)
