"""Issue 26: PPIM's mechanism where only grounding succeeds, and a test for each defect found.

The task (reid_explain.studies.ppim_mechanism) puts three textured parts at random places of
each image, colours drawn from four with replacement, and one caption per part: no location
prior works, and a map of the phrase's colour alone lands on the wrong part when colours are
shared. Trained with the PPIM loss alone, the head's maps must put >= 0.8 of their energy on
the named part (the part's own mask drawn on the patch grid scores ~0.87, the best cell 1.0).
"""

from __future__ import annotations

import math
import warnings

import open_clip
import pytest
import torch

from reid_explain import training
from reid_explain.evaluation.phrase_grounding import location_prior_scores
from reid_explain.studies.ppim_mechanism import (
    COLOURS,
    PARTS,
    MechanismConfig,
    clip_config,
    grounding_only_task,
    run_mechanism,
)
from reid_explain.training.capture import ForwardCapture
from reid_explain.training.text_image import identity_phrase_texts, tiny_clip


def test_task_has_no_location_prior_and_parts_share_colours():
    train, test = grounding_only_task(300, 0), grounding_only_task(100, 1)
    assert test.images.shape == (100, 3, 32, 32) and len(test) == 300
    masks = test.masks.float()
    assert masks.sum(dim=1).max() == 1  # parts never overlap
    torch.testing.assert_close(masks.flatten(2).sum(-1), torch.full((100, 3), 144.0))
    for caption, phrases in zip(test.captions, test.phrases, strict=True):
        phrase = phrases[0]
        assert caption[phrase["start"]:phrase["end"]] == phrase["text"]
        assert phrase["text"].split() [1] == phrase["part"]
    # where a part usually is says next to nothing: the prior scores near chance (0.14)
    prior = location_prior_scores(train, test, (8, 8))
    assert prior["energy"] < 0.25 and prior["energy"] < 1.5 * prior["chance"], prior["energy"]
    colours = [[c.split()[1] for c in test.captions[3 * i:3 * i + 3]] for i in range(100)]
    shared = sum(len(set(c)) < 3 for c in colours) / 100
    assert shared > 0.4, shared  # 1 - 4*3*2/4**3 = 0.625 expected
    assert {c for row in colours for c in row} == set(COLOURS)


@pytest.mark.slow
def test_ppim_head_grounds_phrases_where_only_grounding_works():
    """The guarded figure: energy >= 0.8 on held-out images (measured 0.84-0.87 on data seeds
    0-7), far above the location prior and close to the ceiling."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_mechanism(MechanismConfig(threads=1))
    scores = result["scores"]
    assert scores["ppim"]["energy"] >= 0.8, scores
    assert scores["ppim"]["pointing"] >= 0.95, scores
    assert min(scores["ppim"]["by_part"].values()) >= 0.7, scores
    assert scores["ppim"]["energy"] <= scores["ceiling"]["energy"] + 1e-6
    assert scores["ceiling"]["energy"] == pytest.approx(1.0)  # a 3x3 part's centre cell
    assert 0.85 < scores["part_mask"]["energy"] < 0.9
    assert scores["location_prior"]["energy"] < 0.25
    assert set(scores["ppim"]["by_part"]) == set(PARTS)


def test_patch_grid_is_read_row_by_row_after_the_prefix_token():
    """Grid order: a bright patch at (row 2, column 5) of an 8x8 grid is patch token 2*8+5."""
    model = tiny_clip(clip_config(MechanismConfig())).eval()
    image = torch.zeros(1, 3, 32, 32)
    image[:, :, 8:12, 20:24] = 3.0
    with training.attach(model, losses=["ppim"], ppim={"patch_block": "embed"}) as session, \
            torch.no_grad():
        capture: ForwardCapture = session.losses["ppim"].capture
        model.encode_image(torch.zeros_like(image))
        blank = capture.patch_tokens[0]
        model.encode_image(image)
        assert capture.grid_size == (8, 8) and capture.patch_tokens.shape[1] == 64
        changed = (capture.patch_tokens[0] - blank).norm(dim=-1) > 1e-6
        assert changed.nonzero().flatten().tolist() == [2 * 8 + 5]


def _ppim_batch(model, captions, phrases, pids, identity_phrases=None, **options):
    with training.attach(model, losses=["ppim"], ppim={"phrase_contrast_weight": 0.0,
                                                      **options}) as session, torch.no_grad():
        model.encode_image(torch.randn(len(captions), 3, 32, 32,
                                       generator=torch.Generator().manual_seed(0)))
        model.encode_text(open_clip.tokenize(captions, context_length=model.context_length))
        ppim = session.losses["ppim"]
        ppim.loss({"captions": captions, "phrases": phrases, "pids": torch.tensor(pids),
                   "identity_phrases": identity_phrases})
        return ppim


def _one_phrase(captions):
    return [[{"start": 2, "end": len(c), "text": c[2:]}] for c in captions]


def test_images_whose_identity_names_the_phrase_anywhere_are_not_negatives():
    """False negatives: image 1's caption in the batch says "red hat", but its identity's other
    caption says "yellow shoe", so it shows one: not a negative for image 0's "yellow shoe"."""
    model = tiny_clip(clip_config(MechanismConfig()))
    captions = ["a yellow shoe", "a red hat", "a blue bag"]
    data = grounding_only_task(4, 0)
    data.captions = ["a yellow shoe", "a red hat", "a yellow shoe", "a blue bag"]
    data.phrases = _one_phrase(data.captions)
    data.caption_image = torch.tensor([0, 1, 1, 2]).numpy()
    named = identity_phrase_texts(data)
    assert named[int(data.image_pids[1])] == {"red hat", "yellow shoe"}
    pids = [int(data.image_pids[i]) for i in (0, 1, 2)]
    known = [named[p] for p in pids]
    phrases = _one_phrase(captions)
    batch_only = _ppim_batch(model, captions, phrases, pids, None, image_negatives="other_text")
    everywhere = _ppim_batch(model, captions, phrases, pids, known,
                             image_negatives="other_text")
    assert everywhere.last["ppim_image"] < batch_only.last["ppim_image"] - 1e-4
    # other_identity keeps every other identity's image as a negative, known or not
    plain = _ppim_batch(model, captions, phrases, pids, known)
    assert plain.last["ppim_image"] == pytest.approx(batch_only.last["ppim_image"], abs=1e-6)


def test_temperature_warmup_starts_soft_and_evaluation_does_not_advance_it():
    from reid_explain.plugins.training.ppim import PPIMHead

    torch.manual_seed(0)
    head = PPIMHead(16, temperature=0.05)
    phrases, patches = torch.randn(2, 16), torch.randn(3, 9, 16)
    soft, sharp = head.attention(phrases, patches, warm=0.0), head.attention(phrases, patches)
    logits = torch.einsum("kd,bnd->kbn", head.queries(phrases), head.keys(patches))
    torch.testing.assert_close(soft, logits.softmax(-1))  # temperature 1
    torch.testing.assert_close(sharp, (logits * 20).softmax(-1))
    model = tiny_clip(clip_config(MechanismConfig()))
    captions = ["a red hat", "a blue bag"]
    ppim = _ppim_batch(model, captions, _one_phrase(captions), [0, 1], temperature_warmup=10)
    assert ppim._steps == 0  # a no-grad call is evaluation


def _uniform_image_term(whole_image_negative: bool) -> float:
    model = tiny_clip(clip_config(MechanismConfig()))
    captions = ["a red hat", "a blue bag"]
    with training.attach(model, losses=["ppim"], ppim={
            "phrase_contrast_weight": 0.0, "whole_image_negative": whole_image_negative}) as s, \
            torch.no_grad():
        ppim = s.losses["ppim"]
        ppim.head.log_scale.fill_(-30.0)  # attention exactly uniform: the region is the image
        model.encode_image(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
        model.encode_text(open_clip.tokenize(captions, context_length=model.context_length))
        ppim.loss({"captions": captions, "phrases": _one_phrase(captions),
                   "pids": torch.tensor([0, 1])})
        return ppim.last["ppim_image"]


def test_a_region_no_more_phrase_like_than_the_whole_image_is_punished():
    """Whole-image negative: a phrase matched by its image as a whole (uniform attention: its
    region *is* the evenly pooled image) ties with the whole-image column, so the image loss
    cannot fall below log 2; without the column the same maps pay only the other images."""
    with_column, without = _uniform_image_term(True), _uniform_image_term(False)
    assert with_column >= math.log(2) - 1e-5
    assert with_column > without + 1e-3


def test_best_cell_is_the_energy_ceiling_of_any_map_on_the_grid():
    """No map on the grid scores more energy than its best single cell (energy is a ratio of
    linear functions of the map), whatever the map: the part's own mask, or random maps."""
    from reid_explain.evaluation.phrase_grounding import (
        PhraseMaps,
        best_cell_phrase_maps,
        mask_phrase_maps,
        score_phrase_maps,
    )

    data = grounding_only_task(20, 3, image_size=32, patch_size=8, part_cells=1)
    grid = (4, 4)
    ceiling = score_phrase_maps(data, best_cell_phrase_maps(data, grid))["records"]
    generator = torch.Generator().manual_seed(0)
    random_maps = PhraseMaps("random", (32, 32))
    for r, phrases in enumerate(data.phrases):
        random_maps.append(r, phrases, torch.rand(len(phrases), *grid, generator=generator))
    for other in (mask_phrase_maps(data, grid), random_maps):
        for best, record in zip(ceiling, score_phrase_maps(data, other)["records"],
                                strict=True):
            assert record["energy"] <= best["energy"] + 1e-6
    # a one-cell part: its cell's footprint spills (3/4)^2 inside at best, edges clamp higher
    energies = torch.tensor([r["energy"] for r in ceiling])
    assert energies.min() >= 0.5625 - 1e-6 and energies.max() <= 1.0
