"""`zoo eval`: COCO-WholeBody metrics of a predictions file, without inference."""

from __future__ import annotations

import argparse
import json
from typing import Any

from zoo.cli import add_common, at_least

_HELP = """\
Compute the ten COCO keypoint stats (AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl) for body,
foot, face, lefthand, righthand and wholebody, plus the published tables' Hand (the mean of
lefthand and righthand), from a COCO-WholeBody results file.

The file is evaluated as given: mmpose's rescoring (bbox score x mean keypoint score above 0.2) and
OKS-NMS (0.9) are NOT applied here; they belong to `zoo run`, which applies them before it writes
the predictions file. The default fast evaluator gives exactly xtcocotools' numbers; --reference
runs xtcocotools' COCOeval itself (six times, as mmpose's CocoWholeBodyMetric does).

--per-keypoint prints instead where on the body the predictions are off: for each of the 133
keypoints, over the (prediction, GT) pairs the whole-body metric matches (OKS >= 0.5, area all,
maxDets 20), the mean OKS term, PCK@0.1 (distance < 0.1 x the GT box's longer side) and the mean
distance in pixels, pooled per part, then the --worst keypoints by OKS. With --json: the object
stored as `per_keypoint` in result records.
"""

_ROWS = ("body", "foot", "face", "hand", "wholebody", "lefthand", "righthand")


def _table(metrics: dict[str, dict[str, float]]) -> str:
    from tabulate import tabulate

    from zoo.metrics import STATS

    rows = [[part, *(metrics[part][s] for s in STATS)] for part in _ROWS]
    return tabulate(rows, headers=["part", *STATS], floatfmt=".4f")


def _per_keypoint(args: argparse.Namespace) -> int:
    from zoo.errors import InputError
    from zoo.keypoints import keypoint_stats, summary_text

    if args.reference:
        raise InputError("--reference does not apply to --per-keypoint (it has one matching, the metric's)")
    stats = keypoint_stats(args.preds, args.ann, use_area=args.use_area)
    worst = 10 if args.worst is None else args.worst
    print(json.dumps(stats.to_json()) if args.json else summary_text(stats, worst=worst))
    return 0


def _run(args: argparse.Namespace) -> int:
    from zoo.metrics import RESULT_KEYS, evaluate

    if args.per_keypoint:
        return _per_keypoint(args)
    if args.worst is not None:
        from zoo.errors import InputError

        raise InputError("--worst lists keypoints: it needs --per-keypoint")
    metrics = evaluate(args.preds, args.ann, use_area=args.use_area, reference=args.reference)
    if args.json:
        ordered: dict[str, Any] = {key: metrics[key] for key in RESULT_KEYS}
        print(json.dumps(ordered))
    else:
        print(_table(metrics))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="metrics of a predictions file as given (no rescoring/NMS: `zoo run` does those first)",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p)
    p.add_argument("--preds", required=True, help="COCO-WholeBody results (.json or gzipped JSON)")
    p.add_argument(
        "--ann", required=True, help="COCO-WholeBody annotation file (e.g. coco_wholebody_val_v1.0.json)"
    )
    p.add_argument(
        "--use-area",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="scale OKS by the annotation 'area' (default); --no-use-area uses bbox w*h*0.53, as the UBody2D row",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object: part -> stat -> value")
    p.add_argument("--reference", action="store_true", help="compute with xtcocotools COCOeval itself (slow)")
    p.add_argument(
        "--per-keypoint",
        action="store_true",
        help="per-keypoint OKS, PCK@0.1 and distance over the whole-body matches, per part and worst keypoints",
    )
    p.add_argument(
        "--worst",
        type=at_least(0),
        default=None,
        metavar="N",
        help="with --per-keypoint: how many worst keypoints to list (default 10)",
    )
    p.set_defaults(handler=_run)
