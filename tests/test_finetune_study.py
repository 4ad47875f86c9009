"""InterPartAbility's fine-tuned regime (issue 15): held-out splits and the study end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reid_explain import zoo
from reid_explain.studies.interpartability import (
    StudyConfig,
    image_swap,
    markdown_tables,
    run_study,
    t_interval,
)
from reid_explain.synthpedes.planning import SynthConfig, plan
from reid_explain.zoo.data import garment_pairs, heldout_pid_splits

XDIST_COST_S = 37  # seconds on 2 cores: pytest-xdist starts the longest files first

DATA = {"n_ids": 60, "images_per_id": 4, "seed": 15, "height": 128, "width": 64,
        "train_fraction": 0.75, "val_fraction": 0.1, "captions_per_image": 1}


def test_heldout_splits_keep_their_garment_colour_combinations_out_of_training():
    data = {**DATA, "n_ids": 300}
    split, heldout = heldout_pid_splits(data, test_share=0.25, val_share=0.15, seed=3)
    people = {p.pid: garment_pairs(p) for p in plan(SynthConfig(**data)).identities}
    train_worn = {c for pid in split["train"] for c in people[pid]}
    assert not train_worn & (set(heldout["test"]) | set(heldout["val"]))
    assert all(set(people[pid]) & set(heldout["test"]) for pid in split["test"])
    assert all(set(people[pid]) & set(heldout["val"]) for pid in split["val"])
    assert not set(split["train"]) & set(split["test"]) and not set(split["val"]) & set(
        split["test"])
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(people)
    assert 0.25 <= len(split["test"]) / 300 < 0.45 and len(split["val"]) / 300 >= 0.15
    again = heldout_pid_splits(data, test_share=0.25, val_share=0.15, seed=3)
    assert again == (split, heldout)  # deterministic
    other = heldout_pid_splits(data, test_share=0.25, val_share=0.15, seed=4)[1]
    assert other != heldout


def test_image_swap_pairs_every_image_with_another_identity():
    class Data:
        image_pids = np.repeat(np.arange(7), 3)

    swap = image_swap(Data, seed=0)
    assert (Data.image_pids[swap] != Data.image_pids).all()
    assert len(set(Data.image_pids[swap].tolist())) == 7  # a cycle: every identity used


def test_t_interval_matches_scipy():
    from scipy import stats

    x = [0.1, 0.3, 0.2, 0.5, 0.4]
    mean, low, high = t_interval(x)
    ref = stats.t.interval(0.95, 4, loc=np.mean(x), scale=stats.sem(x))
    assert mean == pytest.approx(0.3) and (low, high) == pytest.approx(ref)


@pytest.mark.slow
def test_finetuning_from_the_zoo_runs_end_to_end_on_two_seeds(tmp_path):
    config = StudyConfig(data=DATA, steps=3, batch_size=8, val_captions=12, test_captions=12,
                         methods=("similarity", "attention_relevance"), prior_powers=(1.0, 4.0),
                         combinations=(("product", 1.0), ("sum", 0.5)))
    out = tmp_path / "study.json"
    variants = ["pretrained", "baseline", "ppim+constraint"]
    lines: list[str] = []
    result = run_study(config, [0, 1], variants, out=out, log=lines.append)
    runs = {(r["variant"], r["seed"]): r for r in result["runs"]}
    assert set(runs) == {("pretrained", 0), ("baseline", 0), ("baseline", 1),
                         ("ppim+constraint", 0), ("ppim+constraint", 1)}
    assert runs[("baseline", 0)]["steps"] == 3 and runs[("pretrained", 0)]["steps"] == 0
    assert runs[("ppim+constraint", 0)]["best_method"] in ("similarity", "attention_relevance",
                                                           "ppim")
    assert "ppim" in runs[("ppim+constraint", 1)]["val"]
    for run in result["runs"]:  # every figure is a real number on real phrases
        assert run["test"]["phrases"] > 0 and 0 <= run["test"]["energy"] <= 1
        assert np.isfinite(run["gap"]["gap"]) and np.isfinite(run["image_swap"]["energy"])
        assert set(run["reference_gaps"]) == {"prior", "sharpened prior"}
    mix = runs[("baseline", 0)]["prior_with_baseline"]
    assert mix["choice"] in (["product", 1.0], ["sum", 0.5]) and 0 <= mix["test"]["energy"] <= 1
    refs = result["references"]
    assert refs["strongest"] in ("prior", "sharpened prior") and refs["best_power"] in (1.0, 4.0)
    summary = result["summary"]["variants"]["ppim+constraint"]
    assert summary["seeds"] == [0, 1]
    share = summary["energy"]["image_dependent"]
    strongest = max(v["energy"] for v in refs["test"].values())  # the higher of the priors
    assert share["per_seed"] == pytest.approx([v - strongest
                                               for v in summary["energy"]["per_seed"]])
    swap = summary["image_swap_energy"]["own_minus_swap"]["per_seed"]
    assert swap == pytest.approx([runs[("ppim+constraint", s)]["test"]["energy"]
                                  - runs[("ppim+constraint", s)]["image_swap"]["energy"]
                                  for s in (0, 1)])
    gap_share = summary["gap"]["image_dependent"]["per_seed"]
    assert gap_share == pytest.approx([
        runs[("ppim+constraint", s)]["gap"]["gap"]
        - max(g["gap"] for g in runs[("ppim+constraint", s)]["reference_gaps"].values())
        for s in (0, 1)])
    assert "ppim_maps" in runs[("ppim+constraint", 0)]
    gain = summary["energy"]["gain_over_baseline"]["per_seed"]
    assert gain == pytest.approx([runs[("ppim+constraint", s)]["test"]["energy"]
                                  - runs[("baseline", s)]["test"]["energy"] for s in (0, 1)])
    assert set(summary["by_part"]) <= set(("upper_body", "lower_body", "hair", "shoes", "hat",
                                           "backpack", "bag", "handbag"))
    tables = markdown_tables(result)
    assert "| ppim+constraint |" in tables and "| chance |" in tables
    assert "nan" not in tables  # an interval that cannot exist is said so, not printed as NaN
    # strict JSON: the one-seed variant's interval is null, not a bare NaN (issue 27)
    saved = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert len(saved["runs"]) == 5 and saved["summary"] is not None
    assert saved["summary"]["variants"]["pretrained"]["energy"]["image_dependent"]["low"] is None
    assert "nan" not in markdown_tables(saved)  # the tables read back from the file too
    lines.clear()
    again = run_study(config, [0, 1], variants, out=out, log=lines.append)  # resumes
    assert any("resuming: 5 runs" in line for line in lines)
    assert again["runs"] == saved["runs"]


@pytest.mark.slow
def test_finetuning_changes_the_model_and_leaves_the_zoo_file_alone():
    from reid_explain.studies.interpartability import finetune, load_splits

    config = StudyConfig(data=DATA, steps=2, batch_size=8)
    splits = load_splits(config)
    before = zoo.load(config.model).state_dict()
    model, session, history = finetune("ppim+constraint", 0, splits, config)
    assert len(history) == 2 and session is not None and "ppim" in session.losses
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # fine-tuned in place
    assert all(torch.equal(v, zoo.load(config.model).state_dict()[k])
               for k, v in before.items())
