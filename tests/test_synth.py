"""SynthPedes acceptance tests: determinism, real-format exports, masks, spans, planted order."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from reid_explain.data.schema import MARKET1501, PARTS
from reid_explain.errors import InputError
from reid_explain.synthpedes import (
    DEFAULT_PLANTED_ORDER,
    LABEL,
    SynthConfig,
    attribute_entropies,
    export_synthpedes,
    make_identities,
    market_codes,
    masks_from_labels,
    plan,
    planted_entropies,
    render,
    render_sample,
    synth_main,
)

SMALL = SynthConfig(n_ids=10, images_per_id=4, seed=3, occlusion_prob=0.3, captions_per_image=3)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthroot") / "data"
    summary = export_synthpedes(root, SMALL)
    return root, summary


def test_same_seed_gives_byte_identical_export(export, tmp_path):
    root, _ = export
    again = tmp_path / "again"
    export_synthpedes(again, SMALL)
    first, second = _files(root), _files(again)
    assert sorted(first) == sorted(second)
    assert any(name.endswith(".jpg") for name in first)
    assert [n for n in first if first[n] != second[n]] == []
    other = tmp_path / "other"
    export_synthpedes(other, replace(SMALL, seed=4))
    jpgs = [n for n in first if n.endswith(".jpg") and n in _files(other)]
    assert any(first[n] != (other / n).read_bytes() for n in jpgs)


def test_torchreid_market1501_loads_the_export(export):
    root, summary = export
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchreid

        data = torchreid.data.datasets.image.Market1501(root=str(root), verbose=False)
    assert len(data.train) == summary.n_train == 5 * 4
    assert len(data.query) == summary.n_query
    assert len(data.gallery) == summary.n_gallery
    assert data.num_train_pids == summary.n_train_ids == 5
    query_pids = {item[1] for item in data.query}
    gallery_pids = {item[1] for item in data.gallery}
    assert len(query_pids) == summary.n_test_ids
    assert 0 in gallery_pids and query_pids <= gallery_pids
    with Image.open(data.train[0][0]) as im:
        assert im.size == (SMALL.width, SMALL.height) and im.format == "JPEG"


def test_query_gallery_protocol():
    sp = plan(replace(SMALL, n_ids=30, images_per_id=6))
    assert not set(sp.train_pids) & set(sp.test_pids)
    for pid in sp.test_pids:
        specs = [s for s in sp.samples if s.pid == pid]
        query_cams = [s.cam for s in specs if s.split == "query"]
        gallery_cams = {s.cam for s in specs if s.split == "gallery"}
        assert len(query_cams) == len(set(query_cams)) == len({s.cam for s in specs}) >= 2
        for cam in query_cams:  # a true match from another camera exists
            assert gallery_cams - {cam}
    assert all(s.split == "train" for s in sp.samples if s.pid in set(sp.train_pids))
    assert any(s.pid == 0 and s.split == "gallery" for s in sp.samples)
    names = [s.name for s in sp.samples]
    assert len(names) == len(set(names))


def test_side_file_spans_point_at_non_empty_masks(export):
    root, _ = export
    ann = json.loads((root / "synthpedes" / "annotations.json").read_text())
    with np.load(root / "synthpedes" / "masks.npz") as npz:
        labels, names = npz["labels"], list(npz["names"])
        assert list(npz["parts"]) == list(PARTS)
    assert labels.shape == (len(ann["images"]), SMALL.height, SMALL.width)
    n_phrases = 0
    for image in ann["images"]:
        lab = labels[image["mask_index"]]
        assert names[image["mask_index"]] == image["name"]
        if image["pid"] == 0:
            continue
        assert len(image["captions"]) == SMALL.captions_per_image
        for caption in image["captions"]:
            for phrase in caption["phrases"]:
                n_phrases += 1
                assert caption["text"][phrase["start"]:phrase["end"]] == phrase["text"]
                pixels = int((lab == ann["labels"][phrase["part"]]).sum())
                assert pixels >= SMALL.min_caption_pixels, (image["name"], phrase)
    assert n_phrases > 100


def test_spans_over_many_renders_and_accessories_are_mentioned():
    sp = plan(SynthConfig(n_ids=60, images_per_id=4, seed=11, planted_order=(
        "backpack", "bag", "handbag", "hat")))
    mentioned = set()
    for spec in sp.samples[:240]:
        sample = render_sample(sp, spec)
        for caption in sample.captions:
            for phrase in caption.phrases:
                assert caption.text[phrase.start:phrase.end] == phrase.text
                assert sample.rendered.part_pixels[phrase.part] >= sp.config.min_caption_pixels
                mentioned.add(phrase.part)
    assert set(PARTS) - {"head"} <= mentioned


def test_backpack_hidden_from_front_visible_from_back_and_wins_over_torso():
    sp = plan(replace(SMALL, n_ids=40))
    person = next(i for i in sp.identities if i.get("backpack") == "yes")
    spec = next(s for s in sp.samples if s.pid == person.pid)
    camera = sp.cameras[spec.cam - 1]
    view = replace(render_sample(sp, spec).rendered.view, occluder=None)
    front = render(person, camera, replace(view, viewpoint="front"))
    back = render(person, camera, replace(view, viewpoint="back"))
    assert front.part_pixels["backpack"] == 0
    assert back.part_pixels["backpack"] > 50
    no_bag = replace(person, attributes=tuple(
        (k, "no" if k == "backpack" else v) for k, v in person.attributes))
    without = render(no_bag, camera, replace(view, viewpoint="back"))
    under = without.labels[back.labels == LABEL["backpack"]]
    assert (under == LABEL["upper_body"]).mean() > 0.5  # it covers the torso there
    masks = masks_from_labels(back.labels)
    assert masks.shape == (len(PARTS), SMALL.height, SMALL.width)
    assert masks.sum(axis=0).max() <= 1  # distinct parts never overlap


def test_occluders_remove_mask_pixels():
    sp = plan(replace(SMALL, n_ids=20, occlusion_prob=1.0))
    checked = 0
    for spec in sp.samples[:20]:
        occluded = render_sample(sp, spec, with_captions=False).rendered
        assert occluded.view.occluder is not None
        camera = sp.cameras[spec.cam - 1]
        clear = render(sp.identity_of(spec), camera, replace(occluded.view, occluder=None),
                       SMALL.height, SMALL.width)
        for k in range(1, len(PARTS) + 1):  # occlusion only ever removes part pixels
            assert not ((occluded.labels == k) & (clear.labels != k)).any()
        lost = sum(clear.part_pixels.values()) - sum(occluded.part_pixels.values())
        checked += lost > 0
    assert checked >= 15


def test_planted_order_drives_identity_statistics():
    reverse = tuple(reversed(DEFAULT_PLANTED_ORDER))
    for order in (DEFAULT_PLANTED_ORDER, reverse):
        ids = make_identities(600, seed=5, planted_order=order)
        bits = attribute_entropies(ids)
        values = [bits[name] for name in order]
        assert all(a > b for a, b in zip(values, values[1:], strict=False)), values
        target = planted_entropies(order)
        assert max(abs(bits[n] - target[n]) for n in order) < 0.02
    default = attribute_entropies(make_identities(600, seed=5))
    reversed_bits = attribute_entropies(make_identities(600, seed=5, planted_order=reverse))
    assert default["lower_color"] > 3 * reversed_bits["lower_color"]
    assert reversed_bits["handbag"] > 3 * default["handbag"]


def test_identities_can_share_all_attributes_but_differ_in_detail():
    ids = make_identities(200, seed=1)
    by_attrs: dict = {}
    for identity in ids:
        by_attrs.setdefault(identity.attributes, []).append(identity)
    twins = next(group for group in by_attrs.values() if len(group) > 1)
    assert twins[0].detail != twins[1].detail


def test_market_attribute_mat_has_the_official_layout(export):
    root, summary = export
    mat = scipy.io.loadmat(root / "market1501" / "market_attribute.mat")
    top = mat["market_attribute"]
    assert top.shape == (1, 1) and set(top.dtype.names) == {"train", "test"}
    ann = json.loads((root / "synthpedes" / "annotations.json").read_text())
    codes = {i["pid"]: i["codes"] for i in ann["identities"]}
    orders = []
    for split, pids in (("train", ann["train_pids"]), ("test", ann["test_pids"])):
        s = top[split][0, 0]
        orders.append(s.dtype.names)
        assert set(s.dtype.names) == set(MARKET1501.fields) | {"image_index"}
        index = [str(c[0]) for c in s["image_index"][0, 0][0]]
        assert index == [f"{p:04d}" for p in pids]
        for field in MARKET1501.fields:
            arr = s[field][0, 0]
            assert arr.dtype == np.uint8 and arr.shape == (1, len(pids))
            assert arr[0].tolist() == [codes[p][field] for p in pids]
    assert orders[0] != orders[1]  # field order differs between splits, as in the official file
    person = make_identities(1, seed=0)[0]
    assert set(market_codes(person).values()) <= {1, 2, 3, 4}


def test_cuhk_pedes_json_and_images(export):
    root, summary = export
    records = json.loads((root / "CUHK-PEDES" / "reid_raw.json").read_text())
    assert len(records) == summary.n_train + summary.n_query + summary.n_gallery \
        - summary.n_distractors
    assert {r["split"] for r in records} == {"train", "val", "test"}
    for r in records:
        assert list(r) == ["split", "captions", "file_path", "processed_tokens", "id"]
        assert (root / "CUHK-PEDES" / "imgs" / r["file_path"]).is_file()
        assert r["id"] >= 1 and len(r["captions"]) == SMALL.captions_per_image
        assert len(set(r["captions"])) >= 2
        assert r["processed_tokens"][0] == [w for w in r["processed_tokens"][0] if w.isalnum()]


def test_images_are_order_independent_and_any_size():
    sp = plan(SMALL)
    late = sp.samples[-5]
    alone = render_sample(sp, late).rendered
    for spec in sp.samples:
        render_sample(sp, spec)
    again = render_sample(sp, late).rendered
    assert np.array_equal(alone.image, again.image)
    big = plan(replace(SMALL, height=256, width=96))
    r = render_sample(big, big.samples[0]).rendered
    assert r.image.shape == (256, 96, 3) and r.labels.shape == (256, 96)
    assert r.part_pixels["upper_body"] > 4 * alone.part_pixels["upper_body"] // 2


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(InputError, match="planted_order"):
        SynthConfig(planted_order=("shoe_size",))
    with pytest.raises(InputError, match="images_per_id"):
        SynthConfig(images_per_id=3)
    with pytest.raises(InputError, match="n_cams"):
        SynthConfig(n_cams=7)
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "thesis.txt").write_text("do not delete")
    with pytest.raises(InputError, match="not a SynthPedes export"):
        export_synthpedes(keep, SMALL)
    assert (keep / "thesis.txt").read_text() == "do not delete"
    with pytest.raises(InputError, match="unknown format"):
        export_synthpedes(tmp_path / "x", SMALL, formats="market,coco")


def test_cli_writes_chosen_formats(tmp_path, capsys):
    out = tmp_path / "cli"
    assert synth_main(["--out", str(out), "--ids", "4", "--images-per-id", "4", "--seed", "1",
                       "--height", "64", "--width", "32", "--format", "market",
                       "--planted-order", "handbag,bag"]) == 0
    summary = json.loads(capsys.readouterr().out)["export"]
    assert summary["formats"] == ["market"]
    assert (out / "market1501" / "Market-1501-v15.09.15" / "query").is_dir()
    assert not (out / "CUHK-PEDES").exists()
    ann = json.loads((out / "synthpedes" / "annotations.json").read_text())
    assert ann["planted"]["order"][:2] == ["handbag", "bag"]
    assert synth_main(["--out", str(out), "--ids", "4", "--planted-order", "nope"]) == 2


def test_a_killed_export_leaves_nothing_the_next_run_keeps(tmp_path):
    """SIGKILL mid-write skips every cleanup: the hidden temporary folder stays. The next
    write beside it removes it (its process is gone) and leaves a live process's alone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "synthpedes_root"
    child = subprocess.Popen([sys.executable, "-c", (
        "import time\n"
        "from reid_explain._util.io import atomic_path\n"
        f"with atomic_path({str(out)!r}) as tmp:\n"
        "    tmp.mkdir(); (tmp / 'half.jpg').write_bytes(b'x'); print('ready', flush=True)\n"
        "    time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    live = [p for p in tmp_path.iterdir() if p.name.startswith(".synthpedes_root.tmp")]
    assert len(live) == 1
    from reid_explain._util.io import remove_stale_temporaries

    assert remove_stale_temporaries(out) == []  # its writer is alive: not touched
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    time.sleep(0.1)
    assert live[0].exists() and not out.exists()  # what a kill leaves: hidden, never final
    export_synthpedes(out, SynthConfig(n_ids=4, images_per_id=4, seed=1),
                      formats=("market",))
    assert out.is_dir() and not live[0].exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
