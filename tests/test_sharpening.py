"""A method's sharpen power chosen on validation pairs (reid_explain.evaluation.sharpening)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import images, make_osnet

from reid_explain import InputError, explainify
from reid_explain.evaluation.grounding_scores import energy_pointing_game
from reid_explain.evaluation.protocol import ReidEvalSet, true_matches


def _validation(masks: torch.Tensor | None) -> ReidEvalSet:
    return ReidEvalSet(query=images(4, (128, 64), seed=3), query_pids=[1, 2, 3, 4],
                       query_camids=[0, 0, 0, 0], gallery=images(5, (128, 64), seed=4),
                       gallery_pids=[1, 2, 3, 4, 4], gallery_camids=[1, 1, 1, 1, 0],
                       query_masks=masks, name="validation identities")


def _maps_and_matches(exp, data):
    match = true_matches(exp.embed(data.query), exp.embed(data.gallery), data.query_pids,
                         data.query_camids, data.gallery_pids, data.gallery_camids)
    # choose_sharpen explains evaluate's default score: centred on the whole gallery's mean
    expl = exp.explain(data.query, data.gallery[torch.as_tensor(match)], method="gradcam",
                       pairs=[(i, i) for i in range(4)], side="query",
                       centre=exp.embed(data.gallery).mean(dim=0))
    return expl.query.upsampled(size=(128, 64)).clamp_min(0), match


def test_the_power_is_the_validation_argmax_of_person_energy_computed_by_hand():
    with explainify(make_osnet()) as exp:
        maps, _ = _maps_and_matches(exp, _validation(None))
        # the person is each map's top 3% of pixels: sharper maps put more mass there
        top = maps.flatten(1) >= maps.flatten(1).quantile(0.97, dim=1, keepdim=True)
        peaked = top.view(4, 1, 128, 64)
        choice = exp.choose_sharpen(_validation(peaked), "gradcam", powers=(1, 4, 64))
        # the person is everything but the map's top half: the maps as produced are best
        spread = (~(maps.flatten(1) >= maps.flatten(1).median(dim=1, keepdim=True).values)
                  ).view(4, 1, 128, 64)
        flat = exp.choose_sharpen(_validation(spread), "gradcam", powers=(1, 4, 64))
    # each map over its own maximum, in float64: gradients of a random-init host are tiny,
    # and their 64th power taken as is underflows to zero in float32
    unit = maps.double() / maps.flatten(1).amax(dim=1).double()[:, None, None]
    for c, masks in ((choice, peaked), (flat, spread)):
        by_hand = {p: float(energy_pointing_game(unit.pow(p), masks)[:, 0].nanmean())
                   for p in (1, 4, 64)}
        assert c.energy == pytest.approx(by_hand, abs=1e-6)
        assert c.power == max(by_hand, key=by_hand.get)
        assert c.pairs == 4 and c.source == "validation identities"
    assert choice.power == 64 and flat.power == 1
    assert choice.energy[64] > choice.energy[1] + 0.2
    assert choice.to_json()["energy"]["64"] == pytest.approx(choice.energy[64], abs=1e-6)


def test_choosing_needs_validation_masks_and_owns_the_power():
    person = torch.zeros(4, 1, 128, 64, dtype=torch.bool)
    person[..., 32:96, 16:48] = True
    with explainify(make_osnet()) as exp:
        with pytest.raises(InputError, match="validation identities.*part masks"):
            exp.choose_sharpen(_validation(None), "gradcam")
        with pytest.raises(InputError, match="chooses it"):
            exp.choose_sharpen(_validation(person), "gradcam", method_options={"sharpen": 2})
        with pytest.raises(InputError, match="positive"):
            exp.choose_sharpen(_validation(person), "gradcam", powers=(1, -2))
        no_match = _validation(person)
        no_match.gallery_camids = np.zeros(5, dtype=int)
        with pytest.raises(InputError, match="no validation query has a true match"):
            exp.choose_sharpen(no_match, "gradcam")
