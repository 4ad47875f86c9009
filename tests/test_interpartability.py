"""InterPartAbility plugins: PPIM, the attention constraint, sessions, grounding, checkpoints."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from hygiene import host_state

from reid_explain import explainify, training
from reid_explain.cli import main as cli_main
from reid_explain.errors import AdapterError, DataFormatError, InputError
from reid_explain.evaluation.grounding_scores import energy_pointing_game
from reid_explain.evaluation.phrase_grounding import (
    location_prior_scores,
    phrase_grounding_scores,
)
from reid_explain.explain.grounding import part_wise_similarity
from reid_explain.plugins.training.attention_constraint import spatial_spread
from reid_explain.training.grid import fourier_positions, grid_coordinates
from reid_explain.training.objectives import itc_loss, sdm_loss
from reid_explain.training.text_image import (
    TinyClipConfig,
    TrainConfig,
    load_checkpoint,
    save_checkpoint,
    synthpedes_text_image,
    tiny_clip,
    train_text_image,
)

CAPTIONS = ["A man wearing a red shirt and black trousers.",
            "A woman in a blue dress with a black backpack."]
PHRASES = [[{"start": 16, "end": 25}, {"start": 30, "end": 44}],
           [{"start": 11, "end": 23}, {"start": 29, "end": 45}]]
SMALL = TinyClipConfig(image_size=(64, 32), patch_size=8, width=64, layers=2, text_width=64,
                       text_layers=2, text_heads=2, embed_dim=32, context_length=32)


def _forward(model, seed=0, captions=CAPTIONS):
    g = torch.Generator().manual_seed(seed)
    model.encode_image(torch.randn(len(captions), 3, 64, 32, generator=g))
    model.encode_text(open_clip.tokenize(captions, context_length=model.context_length))


def _grads(model):
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0)
            for n, p in model.named_parameters()}


def test_spans_map_to_tokens():
    model = tiny_clip(SMALL)
    with explainify(model) as exp:
        tokens = exp.adapter.tokenize(CAPTIONS)
        t0, t1 = exp.adapter.token_span(CAPTIONS[0], 16, 25)
        words = exp.adapter.decode_tokens(tokens[:1, t0:t1])[0]
    assert [CAPTIONS[0][p["start"]:p["end"]] for p in PHRASES[0]] == ["red shirt",
                                                                      "black trousers"]
    assert words == ["red", "shirt"]


def test_ppim_trains_both_towers_and_its_head_only():
    model = tiny_clip(SMALL)
    with training.attach(model, losses=["ppim"]) as session:
        _forward(model)
        loss = training.auxiliary_losses(model, {"captions": CAPTIONS, "phrases": PHRASES,
                                                 "pids": torch.tensor([0, 1])})
        loss.backward()
        grads = _grads(model)
        head = list(session.parameters())
        assert head and all(p.grad is not None for p in head)
    assert grads["visual.transformer.resblocks.1.mlp.c_fc.weight"]
    assert grads["visual.proj"] and grads["text_projection"]
    assert grads["transformer.resblocks.0.attn.in_proj_weight"]
    assert grads["token_embedding.weight"]
    assert not grads["logit_scale"]  # the retrieval temperature is not PPIM's business


def test_attention_constraint_trains_the_visual_attention_only():
    model = tiny_clip(SMALL)
    with training.attach(model, losses=["attention_constraint"],
                         attention_constraint={"blocks": (-1,)}):
        _forward(model)
        training.auxiliary_losses(model, {"captions": CAPTIONS, "phrases": PHRASES}).backward()
    grads = _grads(model)
    assert grads["visual.transformer.resblocks.1.attn.in_proj_weight"]
    assert grads["visual.transformer.resblocks.0.attn.in_proj_weight"]  # feeds block 1
    # the phrase distribution is a fixed weighting: nothing reaches the text tower
    assert not any(v for n, v in grads.items() if n.startswith(("transformer.", "token_")))
    # blocks after the constrained one, the final norm and projection are untouched
    assert not grads["visual.transformer.resblocks.1.mlp.c_fc.weight"]
    assert not grads["visual.proj"]


def test_spread_penalty_prefers_concentrated_attention():
    from reid_explain.plugins.training.attention_constraint import (
        grid_coordinates,
        normalized_entropy,
        spatial_spread,
    )

    coords = grid_coordinates(4, 2)
    one_cell = torch.zeros(1, 8)
    one_cell[0, 3] = 1
    uniform = torch.full((1, 8), 1 / 8)
    assert float(spatial_spread(one_cell, coords)) == 0.0
    # uniform over a 4x2 grid of unit-square cells: variance (16-1)/(12*16) + (4-1)/(12*4)
    assert float(spatial_spread(uniform, coords)) == pytest.approx(15 / 192 + 3 / 48)
    assert float(normalized_entropy(uniform)) == pytest.approx(1.0)
    assert float(normalized_entropy(one_cell)) == pytest.approx(0.0, abs=1e-6)


def test_nothing_is_injected_until_asked_and_detach_restores_the_host():
    model = tiny_clip(SMALL)
    before = host_state(model)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        reference = model.encode_image(x)
    session = training.TrainingSession(model, ["ppim", "attention_constraint"])
    assert host_state(model) == before
    session.attach()
    assert host_state(model) != before  # hooks are on
    with torch.no_grad():  # capturing attention takes MHA's non-fused path: equal up to rounding
        torch.testing.assert_close(model.encode_image(x), reference, atol=1e-5, rtol=1e-5)
    session.detach()
    assert host_state(model) == before
    with torch.no_grad():
        assert torch.equal(model.encode_image(x), reference)  # bit-identical once removed
    with pytest.raises(RuntimeError, match="no training losses are attached"):
        training.auxiliary_losses(model, {"captions": CAPTIONS})


def test_objectives_match_their_definitions():
    torch.manual_seed(0)
    img, txt = torch.randn(4, 8), torch.randn(4, 8)
    pids = torch.tensor([0, 0, 1, 2])
    scale = 10.0
    sim = F.normalize(txt, dim=1) @ F.normalize(img, dim=1).T
    labels = (pids[:, None] == pids[None]).float()
    labels = labels / labels.sum(1, keepdim=True)
    expected = 0.0
    for s in (sim.T, sim):  # image-to-text, then text-to-image
        p = F.softmax(scale * s, dim=1)
        expected += (p * (F.log_softmax(scale * s, dim=1) - torch.log(labels + 1e-8))).sum(1)\
            .mean()
    torch.testing.assert_close(sdm_loss(img, txt, pids, scale), expected)
    logits = scale * F.normalize(img, dim=1) @ F.normalize(txt, dim=1).T
    clip = (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.T,
                                                                       torch.arange(4))) / 2
    torch.testing.assert_close(itc_loss(img, txt, scale), clip)


@pytest.fixture(scope="module")
def synth_splits():
    return synthpedes_text_image(n_ids=12, images_per_id=4, seed=0, image_size=(64, 32))


def test_training_decreases_loss_and_checkpoint_round_trips(synth_splits, tmp_path):
    model = tiny_clip(SMALL)
    before = host_state(model)
    config = TrainConfig(epochs=6, batch_size=16, lr=2e-3, losses=("ppim",
                                                                   "attention_constraint"))
    history, session = train_text_image(model, synth_splits["train"], config)
    first = sum(h["loss"] for h in history[:3]) / 3
    last = sum(h["loss"] for h in history[-3:]) / 3
    assert last < first
    after = host_state(model)
    assert after["hooks"] == before["hooks"] and after["modules"] == before["modules"]
    path = save_checkpoint(tmp_path / "ckpt.pt", model, SMALL, session, config)
    loaded, loaded_session, payload = load_checkpoint(path)
    x = synth_splits["test"].images[:3]
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(x), model.encode_image(x), rtol=0,
                                   atol=0)
    for key, value in session.losses["ppim"].state_dict().items():
        assert torch.equal(loaded_session.losses["ppim"].state_dict()[key], value)
    assert list(payload["train_config"]["losses"]) == ["ppim", "attention_constraint"]
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_ground_gives_one_map_per_phrase(synth_splits):
    model = tiny_clip(SMALL)
    data = synth_splits["test"]
    with explainify(model) as exp:
        images = data.images[torch.as_tensor(data.caption_image[:2])]
        captions = data.captions[:2]
        similarity = exp.ground(images, captions, method="similarity", phrases=data.phrases[:2])
        gradcam = exp.ground(images, captions, method="gradcam", phrases=data.phrases[:2])
        extracted = exp.ground(images, captions)  # phrases found by the rule extractor
    for row, (sim, cam, auto) in enumerate(zip(similarity, gradcam, extracted, strict=True)):
        assert len(sim) == len(data.phrases[row]) == len(cam)
        assert sim.maps.maps.shape == (len(sim), 8, 4)
        torch.testing.assert_close(sim.maps.maps.flatten(1).sum(1), torch.ones(len(sim)))
        assert [p["text"] for p in auto.phrases] == [p["text"] for p in sim.phrases]
    with pytest.raises(InputError, match="pairs each image with its caption"):
        with explainify(model) as exp:
            exp.ground(images[:1], captions)


def test_colour_foils_contrast_a_phrase_with_its_other_colours(synth_splits):
    """foils="colours" explains cos(x, phrase) - mean cos(x, the phrase in other colours):
    the map equals the attribution of that contrast built by hand; a phrase with no colour
    word keeps the plain target; bad values fail before any work."""
    from reid_explain.explain.grounding import FOIL_COLOURS, colour_foils
    from reid_explain.plugin_api.targets import CosineSimilarity

    foils = colour_foils("short Black hair.")
    assert len(foils) == len(FOIL_COLOURS) - 1 and "short white hair." in foils
    assert not any("black" in f.lower() for f in foils)
    grey = colour_foils("a grey shirt")  # gray and grey are one colour: neither is a foil
    assert len(grey) == len(FOIL_COLOURS) - 2 and not {"a gray shirt", "a grey shirt"} & set(grey)
    assert colour_foils("a backpack") == []
    model = tiny_clip(SMALL)
    data = synth_splits["test"]
    image = data.images[int(data.caption_image[0])][None]
    phrases = [[{"text": "a red shirt", "start": 0, "end": 11},
                {"text": "a backpack", "start": 16, "end": 26}]]
    with explainify(model) as exp:
        contrasted = exp.ground(image, ["a red shirt and a backpack"], method="gradcam",
                                phrases=phrases, foils="colours")[0].maps.maps
        plain = exp.ground(image, ["a red shirt and a backpack"], method="gradcam",
                           phrases=phrases)[0].maps.maps
        emb = torch.nn.functional.normalize(exp.embed_text(["a red shirt"]), dim=-1)[0]
        foil = torch.nn.functional.normalize(exp.embed_text(colour_foils("a red shirt")),
                                             dim=-1).mean(dim=0)
        by_hand = exp.attribute(image, CosineSimilarity((emb - foil)[None]), method="gradcam")
        with pytest.raises(InputError, match="foils must be None or 'colours'"):
            exp.ground(image, ["a red shirt"], method="gradcam", foils="parts")
        with pytest.raises(InputError, match="applies to attribution methods"):
            exp.ground(image, ["a red shirt"], method="similarity", foils="colours")
    torch.testing.assert_close(contrasted[0], by_hand[0], atol=1e-6, rtol=1e-4)
    assert not torch.allclose(contrasted[0], plain[0])  # the contrast changes the map
    torch.testing.assert_close(contrasted[1], plain[1])  # no colour word: the plain target


def _part_masks(data, row, parts):
    masks = data.masks[data.caption_image[row]]
    return torch.stack([masks[data.part_names.index(p)] for p in parts])[:, None]


def test_phrase_grounding_scores_each_phrase_against_its_own_part(synth_splits):
    model = tiny_clip(SMALL)
    data = synth_splits["test"]
    with explainify(model) as exp:
        scores = phrase_grounding_scores(exp, data, "similarity", max_captions=5, batch_size=2)
        first = exp.ground(data.images[data.caption_image[:1]], data.captions[:1],
                           method="similarity", phrases=data.phrases[:1])[0]
    parts = [p["part"] for p in first.phrases]
    expected = energy_pointing_game(first.maps.upsampled(), _part_masks(data, 0, parts))[:, 0]
    got = [r["energy"] for r in scores["records"] if r["caption"] == 0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5)
    assert scores["phrases"] == sum(len(p) for p in data.phrases[:5])
    assert scores["energy"] == pytest.approx(np.nanmean([r["energy"]
                                                         for r in scores["records"]]))


def test_shared_random_cells_give_each_method_the_gap_it_gets_alone(synth_splits):
    """The report reuses one set of random-cell drops for every method's maps: the gaps must
    equal those computed alone, and a second method's call must not re-draw the random cells
    (the shared entry is made once)."""
    from reid_explain.evaluation.phrase_grounding import (
        collect_phrase_maps,
        maps_counterfactual_gap,
    )

    model = tiny_clip(SMALL)
    data = synth_splits["test"]
    shared: dict = {}
    with explainify(model) as exp:
        maps = {m: collect_phrase_maps(exp, data, m, max_captions=6, batch_size=4)
                for m in ("similarity", "gradcam")}
        alone = {m: maps_counterfactual_gap(exp, data, maps[m], batch_size=4) for m in maps}
        together = {m: maps_counterfactual_gap(exp, data, maps[m], batch_size=4, shared=shared)
                    for m in maps}
    assert len(shared) == 1
    for m in maps:
        assert together[m]["captions"] == alone[m]["captions"] == 6
        for key in ("top_drop", "random_drop", "gap", "gap_ci_low", "gap_ci_high"):
            assert together[m][key] == pytest.approx(alone[m][key], abs=1e-6), (m, key)
    assert alone["similarity"]["top_drop"] != alone["gradcam"]["top_drop"]


def test_pixel_level_phrase_maps_are_scored_at_pixels_and_masked_on_the_grid(synth_splits):
    """A pixel-level phrase method (relevance_ig) is scored at the resolution it draws, not
    pooled to the patch grid first (which scored it as a coarser method than it is); its
    counterfactual gap masks grid cells as every other method's does, so it equals the gap of
    the same maps area-averaged onto the grid."""
    from reid_explain.evaluation.phrase_grounding import (
        collect_phrase_maps,
        maps_counterfactual_gap,
        score_phrase_maps,
    )

    model = tiny_clip(SMALL)
    data = synth_splits["test"]
    size = tuple(data.images.shape[-2:])
    with explainify(model) as exp:
        grid = exp.adapter.grid_size(size)
        pixel = collect_phrase_maps(exp, data, "relevance_ig", max_captions=6, batch_size=4,
                                    n_steps=2)
        pooled = pixel.mapped("pooled", lambda _i, m: F.adaptive_avg_pool2d(m[:, None], grid)
                              [:, 0])
        gaps = [maps_counterfactual_gap(exp, data, maps, batch_size=4)
                for maps in (pixel, pooled)]
    shapes = {tuple(m.shape[-2:]) for m in pixel.maps if m is not None}
    assert shapes == {size} and tuple(grid) != size
    at_pixels, on_grid = score_phrase_maps(data, pixel), score_phrase_maps(data, pooled)
    assert at_pixels["phrases"] == on_grid["phrases"] > 0
    assert abs(at_pixels["energy"] - on_grid["energy"]) > 1e-4  # the resolution is kept
    for key in ("top_drop", "random_drop", "gap"):
        assert gaps[0][key] == pytest.approx(gaps[1][key], abs=1e-6), key


def test_location_prior_knows_where_parts_usually_are(synth_splits):
    train, test = synth_splits["train"], synth_splits["test"]
    prior = location_prior_scores(train, test, grid=(8, 4))
    chance = np.nanmean([float(_part_masks(test, r["caption"], [r["part"]]).float().mean())
                         for r in prior["records"]])
    assert prior["phrases"] == sum(len(p) for p in test.phrases)
    assert prior["energy"] > 2 * chance  # an image-blind map already scores well above chance
    assert prior["by_part"]["upper_body"]["energy"] > prior["by_part"]["shoes"]["energy"]
    with pytest.raises(ValueError, match="reference split with part masks"):
        location_prior_scores(dataclasses.replace(train, masks=None), test, grid=(8, 4))


def test_phrase_reference_chooses_grid_or_pixels_per_part_on_validation(synth_splits):
    """The strongest image-blind phrase reference may draw each part on the patch grid or at
    pixels: per part, the (resolution, power) with the highest energy on the selection half
    wins; with one resolution it is the grid-only reference, and a part drawn on the grid
    scores as the grid-only prior at its power does."""
    from reid_explain.evaluation.phrase_grounding import (
        choose_phrase_reference,
        prior_phrase_maps,
        score_phrase_maps,
    )

    train, test = synth_splits["train"], synth_splits["test"]
    grid, size = (8, 4), tuple(test.images.shape[-2:])
    only_grid = choose_phrase_reference(train, grid)
    assert choose_phrase_reference(train, grid, resolutions=[grid])["powers"] == \
        only_grid["powers"]
    assert set(only_grid["grids"].values()) == {grid}
    both = choose_phrase_reference(train, grid, resolutions=[grid, size])
    assert set(both["grids"]) == set(both["powers"]) == set(only_grid["powers"])
    for part, by_res in both["resolution_selection"].items():
        chosen = f"{both['grids'][part][0]}x{both['grids'][part][1]}"
        assert by_res[chosen] == max(by_res.values())  # the winner on the selection half
        assert by_res[chosen] >= max(only_grid["selection"][part].values())
    assert len(set(both["grids"].values())) == 2, both["resolution_selection"]  # mixed here
    mixed = prior_phrase_maps(both["build"], test, grid, None, both["powers"], both["grids"])
    assert {tuple(m.shape[-2:]) for m in mixed.maps if m is not None} == {size}
    scored = score_phrase_maps(test, mixed)["by_part"]
    for part, g in both["grids"].items():
        if g == grid and part in scored:
            alone = score_phrase_maps(test, prior_phrase_maps(
                both["build"], test, grid, None, {part: both["powers"][part]}))["by_part"]
            assert scored[part]["energy"] == pytest.approx(alone[part]["energy"], abs=1e-6)


def test_part_wise_similarity_adds_phrase_region_agreement(synth_splits):
    model = tiny_clip(SMALL)
    data = synth_splits["test"]
    images = data.images[:3]
    with training.attach(model, losses=["ppim"]) as session:
        ppim = session.losses["ppim"]
    with explainify(model) as exp:
        plain = part_wise_similarity(exp, images, data.captions[:2], ppim, alpha=0.0,
                                     phrases=data.phrases[:2])
        mixed = part_wise_similarity(exp, images, data.captions[:2], ppim, alpha=0.5,
                                     phrases=data.phrases[:2])
        global_sim = exp.embed_text(data.captions[:2]) @ exp.embed(images).T
    torch.testing.assert_close(plain, global_sim, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mixed, plain)


@pytest.mark.slow
def test_train_command_writes_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "model.pt"
    assert cli_main(["train", "--task", "text-image", "--ids", "12", "--epochs", "1",
                     "--batch-size", "32", "--ppim", "--constraint", "--out", str(out),
                     "--ppim-options", '{"patch_block": 0}',
                     "--constraint-options", '{"blocks": [0]}']) == 0
    printed = capsys.readouterr().out
    report = json.loads(printed[printed.rindex("\n{"):])
    assert report["checkpoint"] == str(out) and out.exists()
    model, session, payload = load_checkpoint(out)
    assert set(session.losses) == {"ppim", "attention_constraint"}
    assert session.losses["ppim"].patch_block == 0
    assert session.losses["attention_constraint"].blocks == (0,)
    assert payload["extra"]["test"]["R1"] == report["test"]["R1"]


@pytest.mark.parametrize("text", ["{patch_block: 0}", "[0]"])
def test_train_command_names_bad_plugin_options(text, capsys, tmp_path):
    with pytest.raises(SystemExit):
        cli_main(["train", "--task", "text-image", "--ppim", "--ppim-options", text,
                  "--out", str(tmp_path / "m.pt")])
    assert "--ppim-options" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("patch_block, module", [
    (-2, lambda model: model.visual.transformer.resblocks[-2]),  # second-to-last block's output
    ("embed", lambda model: model.visual.ln_pre),  # the tokens entering the first block
])
def test_ppim_can_read_an_earlier_token_source(patch_block, module):
    """The chosen tokens, through ln_post and proj like the final ones."""
    model = tiny_clip(SMALL)
    saved = {}
    handle = module(model).register_forward_hook(lambda m, a, out: saved.update(tokens=out))
    with training.attach(model, losses=["ppim"], ppim={"patch_block": patch_block}) as session:
        with torch.no_grad():
            _forward(model)
        captured = session.capture.patch_tokens
    handle.remove()
    expected = model.visual.ln_post(saved["tokens"])[:, 1:] @ model.visual.proj
    torch.testing.assert_close(captured, expected)


@pytest.mark.parametrize("patch_block, features, block", [("kk", "kk", -1),
                                                           ("value:-2", "value", -2)])
def test_ppim_can_read_dense_features_of_the_same_forward(patch_block, features, block):
    """Dense-CLIP keys (issue 26): the tokens PPIM reads equal the adapter's inference-time
    dense embeddings of the same images, and carry gradient to the host's blocks."""
    from reid_explain.explain.explainer import choose_adapter

    model = tiny_clip(SMALL)
    images = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = choose_adapter(model)(model).dense_embeddings(images, features, block)
    with training.attach(model, losses=["ppim"], ppim={"patch_block": patch_block}) as session:
        model.encode_image(images)
        captured = session.capture.patch_tokens
        torch.testing.assert_close(captured.detach(), expected)
        captured.square().sum().backward()
    blocks = model.visual.transformer.resblocks
    target = blocks[block]
    assert target.attn.in_proj_weight.grad.abs().sum() > 0
    assert blocks[0].attn.in_proj_weight.grad.abs().sum() > 0  # through the block's input
    assert target.mlp.c_fc.weight.grad is None  # dense features drop the block's MLP
    before = host_state(model)
    with pytest.raises(AdapterError, match="or one of .*'kk'.*got 'qk'"):
        training.attach(model, losses=["ppim"], ppim={"patch_block": "qk"})
    assert host_state(model) == before  # nothing left behind by the refused attach


def test_dense_ppim_keys_leave_the_attention_constraint_its_attention():
    """Reading dense keys runs ``ln_post`` inside the tower's forward; the capture must not
    take that call for the tower's output (it did: the constraint then found no attention
    and PPIM+constraint with ``patch_block="value"`` failed on its first step)."""
    model = tiny_clip(SMALL)
    with training.attach(model, losses=["ppim", "attention_constraint"],
                         ppim={"patch_block": "value"},
                         attention_constraint={"blocks": [0], "include_phrase_map": True}
                         ) as session:
        _forward(model)
        capture = session.capture
        loss = training.auxiliary_losses(model, {"captions": CAPTIONS, "phrases": PHRASES,
                                                 "pids": torch.tensor([0, 1])})
        assert len(capture.attention) == 1 and capture.attention[0].shape[-1] == 1 + 32
        assert capture.patch_tokens.shape[1] == 32
        assert torch.isfinite(loss) and loss.requires_grad
        assert session.losses["attention_constraint"].last["constraint_attention"] > 0


def _isolated_reference(model, texts):
    """Each text encoded alone; token features (joint space) averaged between SOT and EOT."""
    saved = {}
    handle = model.ln_final.register_forward_hook(lambda m, a, out: saved.update(x=out))
    tokens = open_clip.tokenize(texts, context_length=model.context_length)
    with torch.no_grad():
        model.encode_text(tokens)
    handle.remove()
    features = saved["x"] @ model.text_projection
    end = tokens.argmax(dim=-1)  # the end-of-text token
    return torch.stack([features[i, 1:end[i]].mean(0) for i in range(len(texts))])


def test_isolated_phrases_are_encoded_on_their_own():
    model = tiny_clip(SMALL)
    batch = {"captions": CAPTIONS, "phrases": PHRASES, "pids": torch.tensor([0, 1])}
    with training.attach(model, losses=["ppim"], ppim={"phrase_context": "isolated"}) as session:
        with torch.no_grad():
            _forward(model)
            caption_tokens = session.capture.text_tokens
            embeddings, index = session.losses["ppim"].phrase_embeddings(batch)
        assert session.capture.text_tokens is caption_tokens  # the captions' forward is kept
    texts = [c[p["start"]:p["end"]] for c, ps in zip(CAPTIONS, PHRASES, strict=True)
             for p in ps]
    assert list(index.texts) == texts
    expected = _isolated_reference(model, texts)
    torch.testing.assert_close(embeddings, expected)
    # in context, the same words give other features (the caption before them is seen)
    with training.attach(model, losses=["ppim"], ppim={"phrase_context": "caption"}) as session:
        with torch.no_grad():
            _forward(model)
            in_context, _ = session.losses["ppim"].phrase_embeddings(batch)
    assert not torch.allclose(in_context[1:], expected[1:], atol=1e-3)


def _phrase_loss(model, pids, negatives):
    options = {"phrase_negatives": negatives, "image_contrast_weight": 0.0,
               "phrase_contrast_weight": 1.0}
    with training.attach(model, losses=["ppim"], ppim=options) as session, torch.no_grad():
        _forward(model)
        session.losses["ppim"].loss({"captions": CAPTIONS, "phrases": PHRASES,
                                     "pids": torch.tensor(pids)})
        return session.losses["ppim"].last["ppim_phrase"]


def test_batch_negatives_add_the_other_captions_phrases_unless_same_identity():
    model = tiny_clip(SMALL)
    own_caption = _phrase_loss(model, [0, 1], "caption")
    # two more negatives per region: the softmax denominator only grows
    assert _phrase_loss(model, [0, 1], "batch") > own_caption + 1e-4
    # same identity: the other caption's phrases describe the same person, not negatives
    assert _phrase_loss(model, [3, 3], "batch") == pytest.approx(own_caption, abs=1e-6)


def _spans(caption, *texts):
    return [{"start": caption.index(t), "end": caption.index(t) + len(t)} for t in texts]


def _image_term(model, captions, phrases, negatives):
    options = {"image_negatives": negatives, "phrase_contrast_weight": 0.0}
    with training.attach(model, losses=["ppim"], ppim=options) as session, torch.no_grad():
        _forward(model, captions=captions)
        ppim = session.losses["ppim"]
        ppim.loss({"captions": captions, "phrases": phrases, "pids": torch.tensor([0, 1, 2])})
        return ppim.last["ppim_image"], ppim.last_index.texts


def test_images_whose_caption_has_the_same_phrase_are_not_its_negatives():
    model = tiny_clip(SMALL)
    captions = ["A man wearing a red shirt and black trousers.",
                "A woman wearing a red shirt and a black backpack.",
                "A man in a green coat."]
    phrases = [_spans(captions[0], "red shirt", "black trousers"),
               _spans(captions[1], "red shirt", "black backpack"),
               _spans(captions[2], "green coat")]
    every, texts = _image_term(model, captions, phrases, "other_identity")
    other_text, _ = _image_term(model, captions, phrases, "other_text")
    assert texts == ("red shirt", "black trousers", "red shirt", "black backpack", "green coat")
    assert other_text < every - 1e-4  # "red shirt" loses one negative in each of two images
    distinct = [phrases[0], _spans(captions[1], "black backpack"), phrases[2]]
    assert _image_term(model, captions, distinct, "other_text")[0] == pytest.approx(
        _image_term(model, captions, distinct, "other_identity")[0], abs=1e-6)


def test_position_keys_start_neutral_and_need_the_grid():
    from reid_explain.plugins.training.ppim import PPIMHead

    torch.manual_seed(0)
    plain, positioned = PPIMHead(16), PPIMHead(16, position_frequencies=2)
    phrases, patches = torch.randn(3, 16), torch.randn(2, 8, 16)
    torch.testing.assert_close(positioned.attention(phrases, patches, (4, 2)),
                               plain.attention(phrases, patches))
    with torch.no_grad():
        positioned.position_proj.weight.normal_()
    moved = positioned.attention(phrases, patches, (4, 2))
    assert not torch.allclose(moved, plain.attention(phrases, patches))
    torch.testing.assert_close(moved.sum(-1), torch.ones(3, 2))
    with pytest.raises(ValueError, match="patch grid"):
        positioned.attention(phrases, patches, (3, 2))


def test_position_values_start_neutral_then_say_where_the_region_is():
    from reid_explain.plugins.training.ppim import PPIMHead

    torch.manual_seed(0)
    plain, head = PPIMHead(16), PPIMHead(16, position_frequencies=2, position_values=True)
    phrases, patches = torch.randn(3, 16), torch.randn(2, 8, 16)
    attention = head.attention(phrases, patches, (4, 2))
    torch.testing.assert_close(head.regions(attention, patches, (4, 2)),
                               plain.regions(attention, patches))
    with torch.no_grad():
        head.position_value_proj.weight.normal_()
    # a region is the attention-weighted mean of patch + position value, cell by cell
    where = head.position_value_proj(fourier_positions(4, 2, 2))
    expected = torch.einsum("kbn,bnd->kbd", attention, patches + where)
    torch.testing.assert_close(head.regions(attention, patches, (4, 2)), expected)
    with pytest.raises(ValueError, match="position_frequencies"):
        PPIMHead(16, position_values=True)


@pytest.mark.parametrize("option", [{"phrase_negatives": "images"}, {"image_negatives": "all"},
                                    {"phrase_context": "sentence"}])
def test_unknown_ppim_options_are_named(option):
    name = next(iter(option))
    with pytest.raises(ValueError, match=name):
        with training.attach(tiny_clip(SMALL), losses=["ppim"], ppim=option):
            pass


def test_grounding_follows_the_ppim_phrase_context(synth_splits):
    model = tiny_clip(SMALL)
    data = synth_splits["test"]
    images = data.images[torch.as_tensor(data.caption_image[:2])]
    options = {"phrase_context": "isolated", "position_frequencies": 2}
    with training.attach(model, losses=["ppim"], ppim=options) as session:
        ppim = session.losses["ppim"]
    with explainify(model) as exp:
        groundings = exp.ground(images, data.captions[:2], method="ppim", ppim=ppim,
                                phrases=data.phrases[:2])
        scores = part_wise_similarity(exp, images, data.captions[:2], ppim,
                                      phrases=data.phrases[:2])
    texts = [p["text"] for p in data.phrases[0]]
    phrases = _isolated_reference(model, texts)
    saved = {}
    handle = model.visual.ln_post.register_forward_hook(lambda m, a, out: saved.setdefault(
        "x", out))
    with torch.no_grad():
        model.encode_image(images[:1])
    handle.remove()
    patches = (saved["x"][:, 1:] @ model.visual.proj).expand(len(texts), -1, -1)
    with torch.no_grad():
        expected = ppim.head.own_attention(phrases, patches, (8, 4)).view(-1, 8, 4)
    torch.testing.assert_close(groundings[0].maps.maps, expected)
    assert scores.shape == (2, 2) and torch.isfinite(scores).all()


def test_ppim_and_constraint_can_share_the_first_block():
    """Reading block 0's tokens must not swallow block 0's attention for the constraint."""
    model = tiny_clip(SMALL)
    saved = {}
    handle = model.visual.transformer.resblocks[0].attn.register_forward_hook(
        lambda m, a, out: saved.update(attention=out[1]))
    with training.attach(model, losses=["ppim", "attention_constraint"], ppim={"patch_block": 0},
                         attention_constraint={"blocks": (0,)}) as session:
        _forward(model)
        loss = training.auxiliary_losses(model, {"captions": CAPTIONS, "phrases": PHRASES,
                                                 "pids": torch.tensor([0, 1])})
        attention = session.capture.attention
    handle.remove()
    assert torch.isfinite(loss) and len(attention) == 1
    torch.testing.assert_close(attention[0], saved["attention"])  # (B, heads, 1+N, 1+N)


def test_constraint_weighs_the_spread_of_the_ppim_maps():
    model = tiny_clip(SMALL)
    batch = {"captions": CAPTIONS, "phrases": PHRASES, "pids": torch.tensor([0, 1])}
    with training.attach(model, losses=["ppim", "attention_constraint"], ppim={"patch_block": 0},
                         attention_constraint={"blocks": (0,), "weight": 0.5,
                                               "include_phrase_map": True,
                                               "phrase_map_weight": 3.0}) as session:
        _forward(model)
        ppim = session.losses["ppim"]
        ppim.loss(batch)
        constraint = session.losses["attention_constraint"]
        value = constraint.loss(batch)
    spread = spatial_spread(ppim.last_attention, grid_coordinates(8, 4)).mean()
    assert constraint.last["constraint_phrase_map"] == pytest.approx(spread.item(), rel=1e-5)
    assert value.item() == pytest.approx(0.5 * (constraint.last["constraint_attention"]
                                                + 3.0 * spread.item()), rel=1e-5)


def test_constraint_warms_up_the_ppim_map_term_over_training_steps():
    model = tiny_clip(SMALL)
    batch = {"captions": CAPTIONS, "phrases": PHRASES, "pids": torch.tensor([0, 1])}
    with training.attach(model, losses=["ppim", "attention_constraint"], ppim={"patch_block": 0},
                         attention_constraint={"blocks": (0,), "include_phrase_map": True,
                                               "phrase_map_weight": 2.0,
                                               "phrase_map_warmup": 4}) as session:
        constraint = session.losses["attention_constraint"]
        ramps = []
        for grad in (True, True, False, True, True, True):
            with torch.set_grad_enabled(grad):
                _forward(model)
                session.losses["ppim"].loss(batch)
                value = constraint.loss(batch).item()
            parts = constraint.last
            ramps.append((value - parts["constraint_attention"])
                         / (2.0 * parts["constraint_phrase_map"]))
    # training calls advance the ramp (1/4, 2/4, ...); an evaluation call reads it unchanged
    np.testing.assert_allclose(ramps, [0.25, 0.5, 0.5, 0.75, 1.0, 1.0], rtol=1e-4)


@pytest.mark.parametrize("include_phrase_map", [False, True])
def test_constraint_trains_the_ppim_maps_only_when_asked(include_phrase_map):
    model = tiny_clip(SMALL)
    batch = {"captions": CAPTIONS, "phrases": PHRASES, "pids": torch.tensor([0, 1])}
    with training.attach(model, losses=["ppim", "attention_constraint"], ppim={"patch_block": 0},
                         attention_constraint={"blocks": (0,),
                                               "include_phrase_map": include_phrase_map}
                         ) as session:
        _forward(model)
        session.losses["ppim"].loss(batch)
        session.losses["attention_constraint"].loss(batch).backward()
        head = [p.grad is not None and bool(p.grad.abs().sum() > 0)
                for p in session.losses["ppim"].parameters()]
    grads = _grads(model)
    assert grads["visual.transformer.resblocks.0.attn.in_proj_weight"]
    # the PPIM map's spread trains what makes the map: the head, the phrase embeddings (text
    # tower) and the block-0 tokens through the projection into the joint space
    assert any(head) is include_phrase_map
    assert grads["token_embedding.weight"] is include_phrase_map
    assert grads["visual.proj"] is include_phrase_map
    assert not grads["visual.transformer.resblocks.1.attn.in_proj_weight"]


def test_explainify_with_the_trained_ppim_offers_its_head_as_a_phrase_method(synth_splits,
                                                                               tmp_path):
    """Issue 26, step 3: the paper's maps are the head's maps. A model explained with the PPIM
    it was trained with grounds phrases with that head (method "ppim", nothing else to pass),
    and the report's phrase grounding scores the head beside the other methods."""
    from reid_explain.report.html import Section
    from reid_explain.report.text_section import grounding_part

    model = tiny_clip(SMALL)
    config = TrainConfig(epochs=1, batch_size=16, lr=2e-3, losses=("ppim",))
    _, session = train_text_image(model, synth_splits["train"], config)
    test = synth_splits["test"]
    images, captions = test.images[test.caption_image[:4]], test.captions[:4]
    with explainify(model) as plain:
        given = plain.ground(images, captions, method="ppim", ppim=session.losses["ppim"])
        with pytest.raises(InputError, match=r"explainify\(model, ppim=session\)"):
            plain.ground(images, captions, method="ppim")
    with explainify(model, ppim=session) as exp:
        own = exp.ground(images, captions, method="ppim")
        assert [g.phrases for g in own] == [g.phrases for g in given] and len(own[0])
        for a, b in zip(own, given, strict=True):
            torch.testing.assert_close(a.maps.on_grid(), b.maps.on_grid())
        summary = grounding_part(exp, test, synth_splits["train"], tmp_path, Section("t", "t"),
                                 max_captions=16)
    assert "ppim" in summary["scores"] and summary["scores"]["ppim"]["phrases"] > 0
    constraint_only = training.TrainingSession(model, ("attention_constraint",))
    with pytest.raises(InputError, match="not 'ppim'"):
        explainify(model, ppim=constraint_only)


@pytest.mark.slow
def test_report_shows_the_ppim_head_of_a_train_checkpoint(synth_splits, tmp_path, capsys):
    """``report --model train:text-image --weights CKPT``: the CLIP and the PPIM head it was
    trained with come back from the checkpoint, and the caption maps add the head's own phrase
    maps (phrases found by the rule extractor: a CUHK-PEDES JSON has no spans)."""
    from reid_explain.explain.hosts import load_host, native_image_size

    model = tiny_clip(SMALL)
    config = TrainConfig(epochs=1, batch_size=16, lr=2e-3, losses=("ppim",), max_steps=2)
    _, session = train_text_image(model, synth_splits["train"], config)
    ckpt = save_checkpoint(tmp_path / "ckpt.pt", model, SMALL, session, config)
    host = load_host("train:text-image", ckpt)
    assert host.image_size == SMALL.image_size and host.fixed_size
    assert native_image_size("train:text-image", ckpt) == SMALL.image_size
    for key, value in session.losses["ppim"].state_dict().items():
        assert torch.equal(host.ppim.state_dict()[key], value)
    assert cli_main(["synth", "--out", str(tmp_path / "data"), "--ids", "8", "--seed", "6",
                     "--format", "cuhk"]) == 0
    annotations = next((tmp_path / "data").rglob("reid_raw.json"))
    out = tmp_path / "report"
    capsys.readouterr()
    assert cli_main(["report", "--model", "train:text-image", "--weights", str(ckpt),
                     "--captions", str(annotations), "--methods", "gradcam", "--queries", "4",
                     "--out", str(out)]) == 0, capsys.readouterr().err
    page = (out / "index.html").read_text()
    assert "img/ppim_phrase_maps.png" in page and "trained PPIM head" in page
    assert (out / "img" / "ppim_phrase_maps.png").stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["text"]["retrieval"]["captions"] > 0
    assert cli_main(["report", "--model", "train:text-image", "--weights", str(ckpt),
                     "--captions", str(annotations), "--height", "128", "--out",
                     str(tmp_path / "other")]) != 0
    assert "--height/--width 128x32: " in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
    with pytest.raises(InputError, match="give the checkpoint"):
        load_host("train:text-image")
    with pytest.raises(InputError, match="train checkpoints are of the tasks"):
        load_host("train:image", ckpt)
    with pytest.raises(DataFormatError, match="not a reid-explain text-image checkpoint"):
        torch.save({"format": "other"}, tmp_path / "other.pt")
        load_host("train:text-image", tmp_path / "other.pt")
