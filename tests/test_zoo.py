"""The model zoo: training writes safetensors + a card, loading rebuilds an ordinary host from
them alone (no pickle, no network), and the shipped checkpoints score what their cards say."""

from __future__ import annotations

import json
import socket
import struct

import pytest
import torch

from reid_explain import explainify, zoo
from reid_explain.cli import main
from reid_explain.errors import DataFormatError, InputError
from reid_explain.zoo.registry import TOKEN_ROWS, TOKEN_VALUES
from reid_explain.zoo.training import train

XDIST_COST_S = 50  # seconds on 2 cores: pytest-xdist starts the longest files first


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """Both zoo models trained for a few steps on a small SynthPedes set."""
    root = tmp_path_factory.mktemp("zoo")
    cards = {name: train(name, out=root, steps=4, n_ids=40, log=lambda p: None)
             for name in zoo.available()}
    return root, cards


def _safetensors_header(path):
    """The JSON header of a safetensors file, read by hand: the format is 8 bytes of header
    length, the header, raw tensor bytes; nothing in it can execute."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length])


def test_training_writes_weights_and_a_complete_card(tiny_zoo):
    root, cards = tiny_zoo
    for name, info in cards.items():
        card = zoo.card(name, root)
        assert card == json.loads(json.dumps(info))
        assert card["training"]["steps_run"] == 4 and card["data"]["config"]["n_ids"] == 40
        assert card["training"]["command"] == f"reid-explain zoo train {name} --steps 4 --ids 40"
        assert set(card["test"]) >= {"R1", "R5", "R10", "mAP", "mINP", "queries", "gallery"}
        assert 0 <= card["test"]["R1"] <= card["test"]["R5"] <= card["test"]["R10"] <= 100
        assert card["curve"] and card["curve"][-1]["step"] == 4
        header = _safetensors_header(zoo.weights_path(name, root))
        assert header["__metadata__"]["format"] == "reid-explain/zoo-card/1"
        assert (root / f"{name}.md").read_text().startswith(f"# {name}")


def test_loaded_models_are_ordinary_hosts_and_deterministic(tiny_zoo, monkeypatch):
    import open_clip
    import torchreid

    root, _ = tiny_zoo

    def no_network(*args, **kwargs):
        raise AssertionError("zoo.load tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    osnet = zoo.load("osnet-synthpedes", root=root)
    assert isinstance(osnet, torchreid.models.osnet.OSNet) and not osnet.training
    clip = zoo.load("clip-synthpedes", root=root)
    assert isinstance(clip, open_clip.CLIP)
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        assert torch.equal(osnet(x), zoo.load("osnet-synthpedes", root=root)(x))
    with explainify(osnet) as exp:  # wrapped like any user model
        assert exp.adapter.name == "torchreid"
        maps = exp.explain(x[:1], x[1:], method="gradcam", top_k=1)
        assert maps.query.maps.shape[0] == 1


def test_clip_stores_only_the_token_rows_its_captions_use(tiny_zoo):
    from safetensors.torch import load_file

    root, _ = tiny_zoo
    tensors = load_file(str(zoo.weights_path("clip-synthpedes", root)))
    rows, values = tensors[TOKEN_ROWS], tensors[TOKEN_VALUES]
    assert "token_embedding.weight" not in tensors
    assert 50 < len(rows) < 2000 and values.shape == (len(rows), 128)
    clip = zoo.load("clip-synthpedes", root=root)
    table = clip.token_embedding.weight.detach()
    assert torch.equal(table[rows], values)
    unused = torch.ones(len(table), dtype=torch.bool)
    unused[rows] = False
    assert table[unused].abs().sum() == 0  # never-seen tokens embed to zero, as documented


def test_tampered_or_missing_files_are_refused_by_name(tiny_zoo, tmp_path):
    import shutil

    root, _ = tiny_zoo
    copy = tmp_path / "zoo"
    shutil.copytree(root, copy)
    weights = zoo.weights_path("osnet-synthpedes", copy)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match="SHA-256"):
        zoo.load("osnet-synthpedes", root=copy)
    zoo.weights_path("clip-synthpedes", copy).unlink()
    with pytest.raises(InputError, match="weights file"):
        zoo.load("clip-synthpedes", root=copy)
    with pytest.raises(InputError, match="no zoo model 'nope'"):
        zoo.load("nope")
    with pytest.raises(InputError, match="has no card"):
        zoo.load("osnet-synthpedes", root=tmp_path / "empty")


def test_zoo_cli_lists_and_shows(tiny_zoo, capsys):
    root, cards = tiny_zoo
    assert main(["zoo", "list", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    for name, card in cards.items():
        assert name in out and f"R@1 {card['test']['R1']:.1f}" in out
    assert main(["zoo", "show", "osnet-synthpedes", "--root", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "osnet-synthpedes"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["osnet-synthpedes", "clip-synthpedes"])
def test_shipped_checkpoint_scores_what_its_card_says(name):
    """The shipped file, reloaded, reproduces the card's test figures on the card's split, and
    the card's target is met."""
    from reid_explain.zoo.data import render_splits
    from reid_explain.zoo.training import image_retrieval, text_retrieval

    card = zoo.card(name)
    model = zoo.load(name)
    test = render_splits(card["data"]["config"], splits=("test",))["test"]
    scores = (image_retrieval(model, test, torch.device("cpu")) if card["task"] == "image"
              else text_retrieval(model, test))
    for key in ("R1", "R5", "mAP"):
        assert scores[key] == pytest.approx(card["test"][key], abs=0.011)
    assert card["target_met"] and all(card["test"][k] >= v for k, v in card["targets"].items())
