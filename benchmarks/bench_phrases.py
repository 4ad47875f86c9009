"""Part-phrase extraction on SynthPedes captions: precision/recall against the generator's spans,
and captions per second on one core.

Gold: every ``Phrase`` span SynthPedes records while writing a caption (issue 6, acceptance 2).
Three criteria: exact span; exact span and same part; relaxed = character-span IoU >= 0.5 and
same part (the acceptance criterion). Throughput is the extractor alone on the same captions
(steady state, tag cache warm), next to a floor measured in the same run: tokenising the captions
with one compiled regex. Usage::

    python benchmarks/bench_phrases.py [--seeds 0 1 2 3 4] [--n-ids 60] [--extractor rules]
                                       [--check]

``--check`` exits 1 when a P/R figure is below 0.95 or the rate below 2000 captions/s.
"""

from __future__ import annotations

import argparse
import re
import time

from reid_explain.plugin_api.phrases import get_extractor, match_counts
from reid_explain.synthpedes.planning import SynthConfig, iter_samples, plan

CRITERIA = {  # name -> (min_iou, same_part)
    "exact span": (1.0, False),
    "exact span + part": (1.0, True),
    "relaxed (IoU>=0.5) + part": (0.5, True),
}


def synth_captions(seeds: list[int], n_ids: int, images_per_id: int = 4) -> list:
    """SynthPedes ``Caption`` objects (text + gold phrases) from several seeds."""
    captions = []
    for seed in seeds:
        sp = plan(SynthConfig(n_ids=n_ids, images_per_id=images_per_id, seed=seed))
        for sample in iter_samples(sp):
            captions.extend(sample.captions)
    return captions


def _rate(fn, items: list[str], min_seconds: float = 1.0) -> float:
    """Items per second of ``fn`` over ``items``, repeated until ``min_seconds`` have passed."""
    n, t0 = 0, time.perf_counter()
    while True:
        for item in items:
            fn(item)
        n += len(items)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return n / elapsed


def _show(text: str, spans: set) -> list:
    return [(text[s:e], part) for s, e, part in sorted(spans)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--n-ids", type=int, default=60)
    p.add_argument("--extractor", default="rules")
    p.add_argument("--check", action="store_true", help="exit 1 below the acceptance targets")
    p.add_argument("--show-errors", type=int, default=0, help="print this many mismatches")
    args = p.parse_args(argv)
    extractor = get_extractor(args.extractor)
    captions = synth_captions(args.seeds, args.n_ids)
    texts = [c.text for c in captions]
    predicted = [extractor.extract(t) for t in texts]

    print(f"extractor: {args.extractor}; captions: {len(captions)} "
          f"(seeds {args.seeds}, {args.n_ids} ids each); gold phrases: "
          f"{sum(len(c.phrases) for c in captions)}")
    ok = len(captions) >= 500
    for name, (min_iou, same_part) in CRITERIA.items():
        tp = n_pred = n_gold = 0
        for caption, pred in zip(captions, predicted, strict=True):
            m, np_, ng = match_counts(caption.phrases, pred, min_iou, same_part)
            tp, n_pred, n_gold = tp + m, n_pred + np_, n_gold + ng
        precision, recall = tp / max(n_pred, 1), tp / max(n_gold, 1)
        ok &= precision >= 0.95 and recall >= 0.95
        print(f"{name}: precision {precision:.4f}  recall {recall:.4f}  "
              f"({tp} matched, {n_pred} predicted, {n_gold} gold)")

    shown = 0
    for caption, pred in zip(captions, predicted, strict=True):
        if shown >= args.show_errors:
            break
        gold = {(g.start, g.end, g.part) for g in caption.phrases}
        got = {(q.start, q.end, q.part) for q in pred}
        if gold != got:
            shown += 1
            print(f"  mismatch: {caption.text!r}\n    gold {_show(caption.text, gold)}\n"
                  f"    got  {_show(caption.text, got)}")

    token = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*|\S")  # the rules tokeniser
    floor = _rate(token.findall, texts)
    rate = _rate(extractor.extract, texts)
    ok &= rate >= 2000
    print(f"throughput: {rate:,.0f} captions/s on one core "
          f"(tokenise-only floor {floor:,.0f} captions/s, {rate / floor:.2f}x of it)")
    if args.check and not ok:
        print("FAILED: below the acceptance targets (P/R >= 0.95, >= 2000 captions/s, "
              ">= 500 captions)")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
