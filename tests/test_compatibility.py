"""Every common host family, built as a user would (random init, small input), explained end to
end: which adapter and layer it gets, on what grid, which methods give finite, non-degenerate
maps on both sides, and that the host is left as it was. Hosts that cannot work fail with a
clear error whose text is checked.

The rows are the compatibility table of ``docs/adapters.md``; the test checks that the table
there is the one it measures. Rewrite it with ``REID_EXPLAIN_WRITE_DOCS=1 pytest
tests/test_compatibility.py``.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from hygiene import host_state
from torch import nn

from reid_explain import AdapterError, explainify
from reid_explain.report.image_section import image_methods

DOC = Path(__file__).resolve().parents[1] / "docs" / "adapters.md"
BEGIN, END = "<!-- compatibility-table:begin -->", "<!-- compatibility-table:end -->"
CAPTIONS = ["a man in a red shirt and blue jeans", "a woman with a black backpack"]


def method_options(method: str, size: tuple[int, int]) -> dict:
    """Options that keep the run small (the maps are checked here, not their quality): two
    Integrated Gradients steps (two token_ig steps for the text side, too), occlusion over 2x2
    patches, and Grad-CAM (also Guided Grad-CAM's) before its ReLU,
    which on a random network often sends every cell to zero (a property of the weights,
    not of the adapter)."""
    if method == "integrated_gradients":
        return {"n_steps": 2}
    if method == "occlusion":
        return {"patch_size": (-(-size[0] // 2), -(-size[1] // 2))}
    if method in ("gradcam", "guided_gradcam"):
        return {"relu_attributions": False}
    return {}

TORCHREID = [
    "densenet121", "densenet121_fc512", "densenet161", "densenet169", "densenet201", "hacnn",
    "inceptionresnetv2", "inceptionv4", "mlfn", "mobilenetv2_x1_0", "mobilenetv2_x1_4",
    "mudeep", "nasnsetmobile", "osnet_ain_x0_25", "osnet_ain_x0_5", "osnet_ain_x0_75",
    "osnet_ain_x1_0", "osnet_ibn_x1_0", "osnet_x0_25", "osnet_x0_5", "osnet_x0_75",
    "osnet_x1_0", "pcb_p4", "pcb_p6", "resnet101", "resnet152", "resnet18", "resnet34",
    "resnet50", "resnet50_fc512", "resnet50_ibn_a", "resnet50_ibn_b", "resnet50mid",
    "resnext101_32x8d", "resnext50_32x4d", "se_resnet101", "se_resnet50", "se_resnet50_fc512",
    "se_resnext101_32x4d", "se_resnext50_32x4d", "shufflenet", "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "squeezenet1_0",
    "squeezenet1_0_fc512", "squeezenet1_1", "xception",
]
#: timm names and the size they are built for: a ReID-shaped 128x64 wherever timm rebuilds the
#: model for it (``img_size=``: windows, relative positions and patch grids follow), LeViT at
#: its own size
TIMM = {
    "vit_small_patch16_224": (128, 64), "deit_tiny_patch16_224": (128, 64),
    "deit_tiny_distilled_patch16_224": (128, 64), "vit_base_patch16_clip_224": (128, 64),
    "eva02_tiny_patch14_224": (126, 70), "swin_tiny_patch4_window7_224": (128, 64),
    "maxvit_tiny_tf_224": (128, 64), "coatnet_0_rw_224": (128, 64), "resnet18": (128, 64),
    "resnet50": (128, 64), "convnext_atto": (128, 64), "efficientnet_b0": (128, 64),
    "mobilenetv3_small_100": (128, 64), "regnetx_002": (128, 64), "pvt_v2_b0": (128, 64),
    "fastvit_t8": (128, 64), "repvit_m1": (128, 64), "levit_128s": (224, 224),
}
#: open_clip names and sizes (the ResNets' attention pool takes a square size only)
OPEN_CLIP = {"ViT-B-32": (128, 64), "ViT-S-16": (128, 64), "ViT-M-32": (128, 64),
             "RN50": (128, 128), "RN101": (128, 128), "convnext_tiny": (128, 64)}
#: hosts that cannot be explained here: the words their error must say, and why
EXPECTED_ERRORS = {
    "torchreid:hacnn": ("failed on a 160x64 probe image on cpu",
                        "torchreid's HACNN calls .cuda() in its forward: it runs on a GPU only"),
    "timm:levit_128s": ("a spatial layer must output (B, C, h, w)",
                        "LeViT's stages carry (B, N, C) tokens with no class token: name a "
                        "4-D layer with layer=, or use a ViT or CNN"),
}


@dataclass
class Row:
    family: str
    name: str
    size: tuple[int, int]
    adapter: str = ""
    layer: str = ""
    grid: str = ""
    works: list[str] = field(default_factory=list)
    fails: dict[str, str] = field(default_factory=dict)
    error: str = ""
    warnings: list[str] = field(default_factory=list)
    host_unchanged: bool = True

    @property
    def key(self) -> str:
        return f"{self.family}:{self.name}"

    def markdown(self) -> str:
        if self.error:
            words, why = EXPECTED_ERRORS.get(self.key, (self.error.splitlines()[0][:140], ""))
            return f"| {self.key} | — | — | — | clear error: \"{words}\" ({why}) |"
        methods = ", ".join(self.works) + "".join(f"; {m} fails" for m in self.fails)
        return (f"| {self.key} | `{self.adapter}` | `{self.layer}` | {self.grid} at "
                f"{self.size[0]}x{self.size[1]} | {methods} |")


def build(family: str, name: str, size: tuple[int, int]) -> nn.Module:
    torch.manual_seed(0)
    if family == "torchreid":
        import torchreid

        return torchreid.models.build_model(name, num_classes=8, pretrained=False)
    if family == "timm":
        import timm

        sized = "patch" in name or name.startswith(("maxvit", "coatnet"))  # take img_size=
        kwargs = {"img_size": size} if sized and size != (224, 224) else {}
        return timm.create_model(name, pretrained=False, **kwargs)
    import open_clip

    square = size[0] if size[0] == size[1] else size  # ModifiedResNet wants an int
    kwargs = {"force_image_size": square} if size != (224, 224) else {}
    return open_clip.create_model(name, **kwargs)


def non_degenerate(maps: torch.Tensor) -> str:
    """'' if every map is finite and not constant, else why not."""
    flat = maps.detach().float().flatten(1)
    if not torch.isfinite(flat).all():
        return "non-finite values"
    spread = (flat.max(dim=1).values - flat.min(dim=1).values)
    if (spread <= 1e-12 * flat.abs().max().clamp_min(1e-30)).any():
        return "a constant map"
    return ""


#: torchreid models that need more than 128x64 (their strided stems, MuDeep's fixed fc)
TORCHREID_FULL_SIZE = {"inceptionresnetv2", "inceptionv4", "mudeep"}


def image_size_for(family: str, name: str) -> tuple[int, int]:
    if family == "torchreid":
        if name == "hacnn":
            return (160, 64)
        return (256, 128) if name in TORCHREID_FULL_SIZE else (128, 64)
    return TIMM[name] if family == "timm" else OPEN_CLIP[name]


def run_row(family: str, name: str) -> Row:
    size = image_size_for(family, name)
    row = Row(family, name, size)
    model = build(family, name, size).eval()
    before = host_state(model)
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(1, 3, *size, generator=generator)
    gallery = torch.randn(1, 3, *size, generator=generator)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            exp_cm = explainify(model, image_size=size)
        row.warnings = [str(w.message) for w in caught if "spatial layer" in str(w.message)]
    except AdapterError as exc:
        row.error = str(exc)
        row.host_unchanged = host_state(model) == before
        return row
    with exp_cm as exp:
        info = exp.adapter.describe()
        row.adapter = info["adapter"]
        row.layer = str(info.get("layer", ""))
        grid = exp.adapter.grid_size(size)
        row.grid = f"{grid[0]}x{grid[1]}"
        for method in image_methods(exp, None):
            try:
                result = exp.explain(query, gallery, method=method, top_k=1,
                                     **method_options(method, size))
                why = non_degenerate(result.query.maps) or non_degenerate(result.gallery.maps)
            except Exception as exc:  # recorded: the row says which method fails and why
                why = f"{type(exc).__name__}: {exc}"
            if why:
                row.fails[method] = why
            else:
                row.works.append(method)
        if "text" in exp.adapter.capabilities:
            try:
                text = exp.explain_text(CAPTIONS, torch.cat([query, gallery]),
                                        method="gradcam", text_method="token_ig",
                                        pairs=[(0, 0), (1, 1)], relu_attributions=False,
                                        text_options={"n_steps": 2})
                why = non_degenerate(text.image.maps) or non_degenerate(text.text.relevance)
            except Exception as exc:
                why = f"{type(exc).__name__}: {exc}"
            if why:
                row.fails["text (gradcam + token_ig)"] = why
            else:
                row.works.append("text (gradcam + token_ig)")
    row.host_unchanged = host_state(model) == before
    return row


CASES = ([("torchreid", n) for n in TORCHREID] + [("timm", n) for n in TIMM]
         + [("open_clip", n) for n in OPEN_CLIP])
ROWS: dict[str, Row] = {}
#: seconds this file takes on 2 cores: pytest-xdist starts it first (tests/conftest.py)
XDIST_COST_S = 150
WRITE_DOCS = os.environ.get("REID_EXPLAIN_WRITE_DOCS") == "1"


def documented_rows() -> dict[str, str]:
    """docs/adapters.md's compatibility table: model key -> its markdown line, in page order."""
    text = DOC.read_text()
    body = text.split(BEGIN)[1].split(END)[0] if BEGIN in text else ""
    lines = [line for line in body.strip().splitlines()[2:] if line.startswith("| ")]
    return {line.split(" | ")[0][2:]: line for line in lines}


@pytest.mark.slow
@pytest.mark.parametrize("family,name", CASES, ids=[f"{f}:{n}" for f, n in CASES])
def test_host_is_explained_or_refused_clearly(family: str, name: str) -> None:
    row = run_row(family, name)
    ROWS[row.key] = row
    assert row.host_unchanged, f"{row.key}: the host changed"
    if not WRITE_DOCS:  # the row docs/adapters.md shows is the one measured here
        assert documented_rows().get(row.key) == row.markdown(), (
            f"docs/adapters.md's row for {row.key} differs from the measured one; rewrite the "
            "table with REID_EXPLAIN_WRITE_DOCS=1 pytest -n 0 tests/test_compatibility.py")
    if row.key in EXPECTED_ERRORS:
        assert EXPECTED_ERRORS[row.key][0] in row.error, row.error
        return
    assert not row.error, row.error
    assert not row.fails, row.fails
    assert "gradcam" in row.works
    h, w = (int(v) for v in row.grid.split("x"))
    assert h > 1 and w > 1, f"{row.key}: degenerate {row.grid} grid on {row.layer}"
    assert not row.warnings, row.warnings


def test_cases_cover_at_least_30_models_across_three_libraries() -> None:
    assert len(CASES) >= 30
    assert {f for f, _ in CASES} == {"torchreid", "timm", "open_clip"}
    import torchreid

    assert set(TORCHREID) == set(torchreid.models.__model_factory)  # every torchreid name


def table(rows: list[Row]) -> str:
    head = ("| model | adapter | spatial layer | grid at input | methods with finite, "
            "non-constant maps on both sides |\n|---|---|---|---|---|")
    return "\n".join([head] + [r.markdown() for r in rows])


def test_docs_table_lists_every_case_in_order() -> None:
    """The table in docs/adapters.md has one row per case, in the cases' order, under its
    header; each row's content is checked by the row's own test. With
    REID_EXPLAIN_WRITE_DOCS=1 every row is measured here (one process: ``-n 0``) and the table
    rewritten."""
    if WRITE_DOCS:
        for family, name in CASES:  # rows not run in this process are measured here
            if f"{family}:{name}" not in ROWS:
                ROWS[f"{family}:{name}"] = run_row(family, name)
        measured = table([ROWS[f"{f}:{n}"] for f, n in CASES])
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        DOC.write_text(pattern.sub(lambda _m: f"{BEGIN}\n{measured}\n{END}", DOC.read_text()))
    text = DOC.read_text()
    assert BEGIN in text and END in text, "docs/adapters.md lost its table markers"
    assert text.split(BEGIN)[1].split(END)[0].strip().startswith(table([])), "table header"
    assert list(documented_rows()) == [f"{f}:{n}" for f, n in CASES]
