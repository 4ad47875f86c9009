"""The ``reid-explain`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .plugin_api import manager as plugins


def cmd_plugins(args: argparse.Namespace) -> int:
    """List every loaded plugin and what it provides."""
    records = plugins.list_plugins()
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    for record in records:
        print(f"{record['name']}  [{record['source']}]")
        for kind, names in record["provides"].items():
            print(f"    {kind}: {', '.join(names)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .studies.demo import run_demo

    return run_demo(out=args.out, methods=args.methods, seed=args.seed, quick=args.quick,
                    crops=args.crops)


def _eval_data(exp, root: str, size: tuple[int, int]):
    """A data set folder (Market-1501 style, or a SynthPedes export with part masks) as the
    explainer's host expects its pixels."""
    from pathlib import Path

    from .data.datasets import default_transform
    from .evaluation.protocol import ReidEvalSet

    transform = default_transform(*size)
    transform.transforms[-1].mean = list(exp.adapter.pixel_mean)
    transform.transforms[-1].std = list(exp.adapter.pixel_std)
    path = Path(root)
    return (ReidEvalSet.from_synthpedes(path, transform)
            if (path / "synthpedes" / "annotations.json").is_file()
            else ReidEvalSet.from_market(path, transform))


def _stage_printer(command: str) -> Callable[[str], None]:
    """One line per stage on stderr, flushed at once, so a long run is never silent (also
    when stderr is a log file, where progress bars would be noise)."""

    def log(message: str) -> None:
        print(f"reid-explain {command}: {message}", file=sys.stderr, flush=True)

    return log


def _check_market_root(root: str, flag: str = "--data") -> None:
    """``root`` holds a Market-1501-style query and gallery (a SynthPedes export does too)."""
    from pathlib import Path

    from .data.datasets import MARKET_FOLDERS, resolve_market_root
    from .errors import DataFormatError

    path = Path(root)
    if not path.exists():
        raise DataFormatError(f"{flag} {root}: no such folder")
    if not path.is_dir():
        raise DataFormatError(f"{flag} {root}: is a file; give the root folder of a "
                              "Market-1501-style data set or a SynthPedes export")
    try:
        market = resolve_market_root(path)
    except DataFormatError as exc:
        raise DataFormatError(f"{flag}: {exc} (a Market-1501-style folder or a SynthPedes "
                              "export, e.g. from reid-explain synth)") from None
    for split in ("query", "gallery"):
        folder = market / MARKET_FOLDERS[split]
        if not folder.is_dir() or next(folder.glob("*.jpg"), None) is None:
            raise DataFormatError(f"{flag} {root}: no {split} images ({folder} holds no *.jpg)")
    side = path / "synthpedes"
    if (side / "annotations.json").is_file() and not (side / "masks.npz").is_file():
        raise DataFormatError(f"{flag} {root}: a SynthPedes export without its part masks "
                              f"({side / 'masks.npz'} is missing); export it with "
                              "--format market,masks")


def _check_writable(out: str, flag: str = "--out") -> None:
    """``out`` can be written: it is a folder or absent, and the nearest existing folder above
    it (where the output is created and atomically renamed) is writable."""
    import os
    from pathlib import Path

    from .errors import InputError

    path = Path(out).absolute()
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {out}: exists and is not a folder")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{flag} {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {out}: cannot write in {parent}")


def _check_plugin_name(kind: str, name: str, flag: str) -> type:
    """The registered class of ``name``; an unknown name names the flag and the known ones."""
    from .errors import UnknownPluginError

    try:
        return plugins.get(kind, name).obj
    except UnknownPluginError as exc:
        raise UnknownPluginError(f"{flag}: {exc}") from None


def check_evaluate_args(args: argparse.Namespace) -> dict[str, type]:
    """Every input of ``evaluate`` checked before the host is built or any image read, so a
    typo fails in seconds rather than after the gallery is embedded. Returns the attribution
    and masker classes (their host capabilities are checked once the host is built)."""
    from .errors import InputError
    from .explain.hosts import check_spec

    for flag, value in (("--height", args.height), ("--width", args.width),
                        ("--batch-size", args.batch_size), ("--max-queries", args.max_queries)):
        if value is not None and value < 1:
            raise InputError(f"{flag} must be a positive integer, got {value}")
    method = _check_plugin_name("attributions", args.method, "--method")
    if method.modality != "image":
        images = sorted(n for n, e in plugins.registry("attributions").items()
                        if e.obj.modality == "image")
        raise InputError(f"--method {args.method!r} explains {method.modality} inputs; "
                         f"evaluate explains image pairs: use one of {', '.join(images)}")
    for name in args.metrics:
        _check_plugin_name("metrics", name, "--metrics")
    masker = _check_plugin_name("maskers", args.masker, "--masker")
    check_spec(args.model, args.weights)
    _check_market_root(args.data)
    _check_writable(args.out)
    if args.feature_cache is not None:
        _check_writable(args.feature_cache, "--feature-cache")
    if args.device != "auto":
        _device(args.device)
    return {"method": method, "masker": masker}


def _check_capabilities(adapter: object, classes: dict[str, type]) -> None:
    """The host's adapter offers what the method and masker need (e.g. attention)."""
    from .errors import AdapterError

    have = set(getattr(adapter, "capabilities", ()))
    for flag, cls in classes.items():
        missing = set(getattr(cls, "requires", ())) - have
        if missing:
            raise AdapterError(f"--{flag} {cls.name!r} needs {sorted(missing)}, which this host "
                               f"({getattr(adapter, 'name', '?')} adapter) lacks")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Explain every query of a data set against its true match and score the maps.

    All inputs are checked first; then one line per stage goes to stderr, with progress bars
    for the gallery and the query batches when stderr is a terminal (``--no-progress``: no
    bars, and the stage lines instead, one per batch).

    Launched by ``torchrun --nproc_per_node N``, the N processes share the gallery chunks and
    query batches (gloo on CPU, NCCL with one GPU each) and rank 0 writes what a single
    process writes."""
    import shutil

    classes = check_evaluate_args(args)

    from .evaluation.distributed import close_distributed, current_shard, init_distributed

    device = init_distributed() if args.device == "auto" else _device(args.device)
    shard = current_shard()
    log = _stage_printer("evaluate") if shard.is_main else (lambda message: None)
    bars = not args.no_progress and sys.stderr.isatty() and shard.is_main

    from .explain.explainer import explainify

    log(f"building host {args.model}" + (f" from {args.weights}" if args.weights else "")
        + (f" on {shard.world_size} processes" if shard.active else "")
        + (f" ({device})" if device.type != "cpu" else ""))
    host, size = _host_and_size(args)
    model = host.model.to(device)
    partial = f"{args.out.rstrip('/')}.partial"  # completed batches, for --resume
    try:
        with explainify(model, layer=args.layer) as exp:
            _check_capabilities(exp.adapter, classes)
            log(f"loading data {args.data}")
            data = _eval_data(exp, args.data, size)
            log(f"data: {len(data.query_pids)} queries, {len(data.gallery_pids)} gallery images")
            result = exp.evaluate(data, method=args.method, metrics=args.metrics,
                                  masker=args.masker, batch_size=args.batch_size,
                                  max_queries=args.max_queries, seed=args.seed,
                                  random_baseline=not args.no_random_baseline,
                                  reference=None if args.reference == "none" else
                                  args.reference, progress=bars, log=log, checkpoint=partial,
                                  resume=args.resume, feature_cache=args.feature_cache,
                                  score=args.score)
        shard.barrier()  # every process is done with the checkpoint folder
    finally:
        close_distributed()
    if not shard.is_main:
        return 0
    log(f"writing {args.out}")
    result.save(args.out)
    shutil.rmtree(partial, ignore_errors=True)
    print(result.summary.to_string(index=False))
    if result.comparison is not None and len(result.comparison):
        print(comparison_text(result))
    print(f"{result.info['queries']} queries ({result.info['skipped_no_valid_match']} without a "
          f"valid match skipped); wrote {args.out}/per_query.csv, summary.csv, summary.json")
    timing = result.info.get("timing", {})
    if timing.get("queries_computed"):
        print(f"{timing['queries_per_s']:.2f} queries/s (forward limit "
              f"{timing['forward_limit_queries_per_s']:.2f}: one no-grad pass of the images); "
              f"seconds: load {timing['load_s']:.1f}, embed {timing['embed_s']:.1f}, explain "
              f"{timing['explain_s']:.1f}, metrics {timing['metrics_s']:.1f}"
              + (f"; {timing['world_size']} processes" if timing.get("world_size", 1) > 1
                 else ""))
    return 0


def comparison_text(result: Any) -> str:
    """Each figure of an evaluation beside random maps and the image-blind reference, with
    the paired 95% CI and the verdicts (the lines ``reid-explain evaluate`` prints)."""
    from .evaluation.verdicts import verdict_text

    reference = result.info.get("reference") or {}
    lines = [f"each figure beside random maps and the image-blind reference "
             f"({reference.get('name', 'none')}); beats = the paired 95% CI excludes 0:",
             f"  {'figure':40s} {'value':>7s} {'random':>7s} {'beats':>6s} {'reference':>9s} "
             f"{'- reference [95% CI]':>27s} {'beats the reference':>20s}"]

    def num(value: Any) -> str:
        return "-" if value is None or value != value else f"{value:.3f}"

    for row in result.comparison.to_dict(orient="records"):
        diff = row.get("reference_diff")
        ci = ("-" if diff is None or diff != diff else
              f"{diff:+.3f} [{row['reference_diff_low']:+.3f},{row['reference_diff_high']:+.3f}]")
        arrow = "" if row["higher_is_better"] else " ↓"
        lines.append(f"  {row['metric'] + '.' + row['key'] + arrow:40s} {num(row['method']):>7s} "
                     f"{num(row.get('random')):>7s} "
                     f"{verdict_text(row.get('random_beaten')) if 'random' in row else '-':>6s} "
                     f"{num(row.get('reference')):>9s} {ci:>27s} "
                     f"{verdict_text(row.get('reference_beaten')):>20s}")
    return "\n".join(lines)


#: image size of hosts whose spec records none (torchreid's Market-1501 default)
DEFAULT_SIZE = (256, 128)


def _host_and_size(args: argparse.Namespace, num_classes: int = 1) -> tuple[Any, tuple[int, int]]:
    """The host of ``--model``/``--weights`` and the (height, width) to read data at:
    ``--height``/``--width``, else the size the model was trained at where its spec records
    it (zoo models, ``train:`` checkpoints), else 256x128."""
    from .errors import InputError
    from .explain.hosts import load_host

    given = (args.height, args.width)
    wanted = tuple(g if g is not None else d for g, d in zip(given, DEFAULT_SIZE, strict=True))
    host = load_host(args.model, args.weights, image_size=wanted, num_classes=num_classes)
    native = host.image_size or DEFAULT_SIZE
    wanted = tuple(g if g is not None else n for g, n in zip(given, native, strict=True))
    if host.fixed_size and wanted != host.image_size:
        raise InputError(f"--height/--width {wanted[0]}x{wanted[1]}: {args.weights or args.model}"
                         f" was trained at {host.image_size[0]}x{host.image_size[1]} and its "
                         "position embeddings admit no other size; drop --height/--width")
    return host, (int(wanted[0]), int(wanted[1]))


def _device(name: str) -> Any:
    """``--device``: a torch device that exists on this machine."""
    import torch

    from .errors import InputError

    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"--device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name!r}: CUDA is not available on this machine")
    return device


def cmd_report(args: argparse.Namespace) -> int:
    """The HTML report of a user's model on a user's data: image ReID on a Market-1501-style
    folder, text-to-image ReID (CLIP hosts) on a CUHK-PEDES-style JSON, or both."""
    from .errors import InputError
    from .explain.explainer import explainify

    if args.data is None and args.captions is None:
        raise InputError("give --data (a Market-1501-style folder), --captions (a "
                         "CUHK-PEDES-style JSON, CLIP hosts) or both")
    if args.trees < 1 or args.rank_bootstrap < 0:
        raise InputError(f"--trees must be at least 1 and --rank-bootstrap at least 0, got "
                         f"{args.trees} and {args.rank_bootstrap}")
    attributes = None
    if args.attributes:
        from .data.attributes import load_attribute_mat

        attributes = load_attribute_mat(args.attributes)
    host, size = _host_and_size(args, args.num_classes)
    with explainify(host.model, layer=args.layer, ppim=host.ppim) as exp:
        data = None if args.data is None else _eval_data(exp, args.data, size)
        captions = None
        if args.captions is not None:
            from .training.text_image import cuhk_text_image

            if "text" not in exp.adapter.capabilities:
                raise InputError(f"--captions needs a host with a text tower (CLIP-style); "
                                 f"{args.model} has none")
            captions = cuhk_text_image(args.captions, args.split, size)
        causal = None
        if data is not None and attributes is not None:
            from .attributes.causal import synth_config_of

            config = synth_config_of(args.data)  # a SynthPedes export can be re-rendered
            causal = None if config is None else {"config": config}
        exp.report(data, args.out, methods=args.methods, n_queries=args.queries,
                   attributes=attributes, captions=captions, causal=causal,
                   **({"sanity_images": args.sanity_images, "trees": args.trees,
                       "rank_bootstrap": args.rank_bootstrap} if data is not None else {}),
                   command="reid-explain " + " ".join(args.argv),
                   settings={"model": args.model, "weights": args.weights,
                             "image_size": list(size), "layer": args.layer})
    print((Path(args.out) / "summary.txt").read_text(), end="")
    print(f"wrote {args.out}/index.html (open it in a browser)")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """What the model loses when one attribute of the same person changes, per attribute."""
    from .attributes.causal import audit_explainer, synth_config_of
    from .errors import InputError
    from .explain.explainer import explainify
    from .report.stages import StageClock

    config = synth_config_of(args.data)
    if config is None:
        raise InputError(f"--data {args.data}: not a SynthPedes export (no "
                         "synthpedes/annotations.json); the audit re-renders its images")
    host, size = _host_and_size(args, args.num_classes)
    with explainify(host.model) as exp:
        data = _eval_data(exp, args.data, size)
        with StageClock().stage("causal attribute audit", f"{args.data}, 12 attributes"):
            audit = audit_explainer(exp, data, {"config": config, "max_ids": args.ids})
    audit.save(args.out)
    shown = audit.table[["rank", "attribute", "ap_drop", "ap_drop_low", "ap_drop_high",
                         "shift", "flip"]]
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"{audit.per_query['query'].nunique()} queries of {audit.per_query['pid'].nunique()} "
          f"identities; wrote {args.out}/table.csv, per_query.csv, summary.json")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "audit": cmd_audit,
    "evaluate": cmd_evaluate,
    "report": cmd_report,
    "plugins": cmd_plugins,
    "demo": cmd_demo,
}


def _add_size_arguments(p: argparse.ArgumentParser) -> None:
    """``--height``/``--width``: unset, the size the host was trained at (``_host_and_size``)."""
    p.add_argument("--height", type=int, default=None,
                   help="image height (default: the size the model was trained at where its "
                        "spec records it, zoo: and train:, else 256)")
    p.add_argument("--width", type=int, default=None,
                   help="image width (default: as --height, else 128)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reid-explain",
        description="Explain person re-identification models: grounding maps, faithfulness "
                    "scores, attribute audits.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plugins", help="list loaded plugins and what they provide")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("demo", help="explain the zoo's trained models and write an HTML report")
    p.add_argument("--out", default="reid_explain_output/demo", help="output directory")
    p.add_argument("--methods", nargs="+", default=None,
                   help="attribution methods (default: every one each host supports)")
    p.add_argument("--seed", type=int, default=None,
                   help="SynthPedes seed of the identities explained (default: the zoo's own "
                        "held-out test split; another seed draws identities never seen)")
    p.add_argument("--quick", action="store_true",
                   help="fewer identities and queries (about a minute)")
    p.add_argument("--crops", choices=("aligned", "misaligned"), default="misaligned",
                   help="SynthPedes crops explained: detector-like misaligned boxes (default), "
                        "where a map must look at the image to find the person, or the crops "
                        "as rendered, where a map drawn without the image is near perfect")
    p = sub.add_parser("evaluate", help="explain and score every query of a data set")
    p.add_argument("--data", required=True,
                   help="root of a Market-1501-style folder or a SynthPedes export")
    p.add_argument("--model", default="zoo:osnet-synthpedes",
                   help="family:name, e.g. torchreid:osnet_x1_0, open_clip:ViT-B-16, "
                        "timm:vit_base_patch16_224, zoo:osnet-synthpedes (default)")
    p.add_argument("--weights", default=None, help="local checkpoint file")
    p.add_argument("--layer", default=None, help="spatial layer name for other models")
    p.add_argument("--method", default="gradcam")
    p.add_argument("--score", choices=("centred", "cosine"), default="centred",
                   help="pair score the maps explain: the cosine minus each image's mean "
                        "cosine with the gallery (centred, default: same ranking, without what "
                        "every gallery image shares), or the plain cosine")
    p.add_argument("--metrics", nargs="+", default=["counterfactual_masking"])
    p.add_argument("--masker", default="mean")
    _add_size_arguments(p)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-queries", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-random-baseline", action="store_true")
    p.add_argument("--reference", choices=("auto", "centred", "none"), default="auto",
                   help="image-blind reference scored beside the method: auto (learnt from "
                        "the training images' masks where the data has them, else a centred "
                        "prior), centred, or none")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars; one line per stage and per query batch on stderr "
                        "instead (the default when stderr is not a terminal)")
    p.add_argument("--resume", action="store_true",
                   help="reuse the query batches a killed run completed (kept in OUT.partial)")
    p.add_argument("--feature-cache", default=None, metavar="FOLDER",
                   help="keep the gallery's features in FOLDER (safetensors, keyed by the "
                        "weights and images) and reuse them in later runs")
    p.add_argument("--device", default="auto",
                   help="torch device of the host (default: one GPU per process where CUDA "
                        "is available, else cpu)")
    p.add_argument("--out", default="reid_explain_output/evaluate")
    p = sub.add_parser("report", help="HTML report of your model on your data")
    p.add_argument("--data", default=None,
                   help="root of a Market-1501-style folder or a SynthPedes export")
    p.add_argument("--captions", default=None,
                   help="CUHK-PEDES / ICFG-PEDES / RSTPReid annotation JSON (CLIP hosts): adds "
                        "text-to-image retrieval, caption maps and word relevance")
    p.add_argument("--split", default="test", help="split of --captions to report on")
    p.add_argument("--model", required=True,
                   help="family:name, e.g. torchreid:osnet_x1_0, zoo:osnet-synthpedes, or "
                        "train:text-image (a 'reid-explain train' checkpoint as --weights: "
                        "the report then shows its PPIM head's own phrase maps)")
    p.add_argument("--weights", default=None, help="local checkpoint file")
    p.add_argument("--num-classes", type=int, default=1,
                   help="classifier size of a torchreid checkpoint (its classifier is "
                        "skipped when it does not fit)")
    p.add_argument("--attributes", default=None,
                   help="market_attribute.mat of the data set: adds the attribute study")
    p.add_argument("--layer", default=None, help="spatial layer name for other models")
    p.add_argument("--methods", nargs="+", default=None,
                   help="attribution methods (default: every one the host supports)")
    p.add_argument("--queries", type=int, default=100, help="queries explained and scored")
    p.add_argument("--sanity-images", type=int, default=8,
                   help="queries whose maps the model-randomisation check recomputes")
    p.add_argument("--trees", type=int, default=100,
                   help="trees of the attribute study's random forests")
    p.add_argument("--rank-bootstrap", type=int, default=20,
                   help="bootstrap draws of the attribute ranks' intervals (0: none)")
    _add_size_arguments(p)
    p.add_argument("--out", default="reid_explain_output/report")
    p = sub.add_parser("audit", help="causal attribute audit: re-render each query of a "
                                     "SynthPedes export with one attribute changed")
    p.add_argument("--data", required=True, help="root of a SynthPedes export (reid-explain "
                                                 "synth): its config is re-rendered")
    p.add_argument("--model", required=True,
                   help="family:name, e.g. torchreid:osnet_x1_0, zoo:osnet-synthpedes")
    p.add_argument("--weights", default=None, help="local checkpoint file")
    p.add_argument("--num-classes", type=int, default=1)
    p.add_argument("--ids", type=int, default=None,
                   help="first test identities only (default: every query, whole gallery)")
    p.add_argument("--seed", type=int, default=0, help="draws of the replacement states")
    _add_size_arguments(p)
    p.add_argument("--out", default="reid_explain_output/audit")
    sub.add_parser("train", add_help=False,
                   help="reference training loops: --task text-image (InterPartAbility "
                        "plugins) or --task image --moe (MoSAIC experts)")
    sub.add_parser("attributes", add_help=False,
                   help="attribute-importance study: which attributes the model relies on")
    sub.add_parser("synth", add_help=False,
                   help="render and export a SynthPedes data set (see synth --help)")
    sub.add_parser("zoo", add_help=False,
                   help="models trained on SynthPedes: list, show, train (see zoo --help)")
    return parser


#: subcommands with their own argument parser: everything after the name is theirs
DELEGATED = {"synth": ("reid_explain.synthpedes", "synth_main"),
             "attributes": ("reid_explain.attributes.cli", "attributes_main"),
             "zoo": ("reid_explain.zoo.cli", "zoo_main")}
#: ``reid-explain train --task TASK``: the reference training loop of each task
TRAIN_TASKS = {"text-image": ("reid_explain.training.text_image", "train_text_image_main"),
               "image": ("reid_explain.moe.train", "train_image_moe_main")}


def _train(argv: list[str]) -> int:
    import importlib

    if "--task" not in argv or argv.index("--task") + 1 >= len(argv):
        print(f"reid-explain train: error: --task is required ({', '.join(TRAIN_TASKS)})",
              file=sys.stderr)
        return 2
    at = argv.index("--task")
    task = argv[at + 1]
    if task not in TRAIN_TASKS:
        print(f"reid-explain train: error: unknown task {task!r}; known: "
              f"{', '.join(TRAIN_TASKS)}", file=sys.stderr)
        return 2
    module, function = TRAIN_TASKS[task]
    return getattr(importlib.import_module(module), function)(argv[:at] + argv[at + 2:])


@contextmanager
def _warnings_as_notes() -> Iterator[None]:
    """A warning raised during a command reaches the terminal as one ``reid-explain: note:``
    line, not as Python's ``file:line: UserWarning:`` dump with a source line: it is advice
    about the run (an exploratory study, a coarse layer), not a fault of the program. Which
    warnings are shown (the filters) is left as it is; library calls are untouched."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"reid-explain: note: {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def main(argv: Sequence[str] | None = None) -> int:
    with _warnings_as_notes():
        return _main(list(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    if os.environ.get("REID_EXPLAIN_MALLOC") == "keep":
        from ._util.memory import keep_freed_memory

        keep_freed_memory()  # batched forwards reuse freed pages (see _memory.py)
    if argv and argv[0] == "train":
        from .errors import ReidExplainError

        try:
            return _train(argv[1:])
        except ReidExplainError as exc:
            print(f"reid-explain train: error: {exc}", file=sys.stderr)
            return 2
    if argv and argv[0] in DELEGATED:
        import importlib

        module, function = DELEGATED[argv[0]]
        return getattr(importlib.import_module(module), function)(argv[1:])
    args = build_parser().parse_args(argv)
    args.argv = argv
    from .errors import ReidExplainError

    try:
        return COMMANDS[args.command](args)
    except ReidExplainError as exc:
        print(f"reid-explain {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
