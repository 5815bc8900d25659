"""`zoo diff A B`: why two runs differ (a thin shell over zoo.diff).

Exit 0 whatever differs (it explains, it does not gate); 2 for bad input (a missing or malformed
record, an output that cannot be written, --plot without per-keypoint numbers).
"""

from __future__ import annotations

import argparse
from pathlib import Path

_HELP = """\
A and B are result records (<out>/<row>/result.json, or the row folder holding one) or results
folders of `zoo run` (rows matched by id; rows only one side has are listed). Two records of
different rows are compared too, and said to be.

Per row: the ten COCO stats of every part, A -> B (Δ = B - A), AP and AR always and the other stats
where they differ; then every recorded fact that differs, with both values: package versions,
python, platform, git commit, device, numerics flags, decode path, batch size, the effective config
key by key (model.head.decoder.blur_kernel_size: 17 -> 11), checkpoint, box source, data
fingerprint, subset, use_area, dataset, command, status and error. Clocks and timings are not
differences: they are shown on a speed line. When both records carry per-keypoint numbers: the
per-part OKS/PCK deltas and the 5 keypoints whose OKS dropped most (--plot draws them).
"""


def _diff(args: argparse.Namespace) -> int:
    from zoo.diff import diff_paths, render_json, render_markdown, write_plots
    from zoo.fileio import write_atomic
    from zoo.preflight import check_outputs

    check_outputs([("--out", args.out, False), ("--plot", args.plot, False)])
    diff = diff_paths(args.a, args.b, all_fields=args.all_fields)
    plots = write_plots(diff, args.plot) if args.plot else []
    text = render_json(diff, plots) if args.json else render_markdown(diff, plots)
    if args.out:
        write_atomic(args.out, text)
        print(args.out)
    else:
        print(text, end="")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diff",
        help="explain the difference between two runs: metrics Δ and every recorded fact that differs",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("a", type=Path, metavar="A", help="result.json, row folder or results folder")
    p.add_argument("b", type=Path, metavar="B", help="the same for the other run; Δ = B - A")
    p.add_argument(
        "--json", action="store_true", help="one JSON object (rows -> metrics deltas, differences)"
    )
    p.add_argument("--out", type=Path, metavar="FILE", help="write the output to FILE (atomically)")
    p.add_argument(
        "--plot", type=Path, metavar="FILE",
        help="per-keypoint Δ OKS plot (PNG; <stem>-<row>.png for several rows); needs per_keypoint in both",
    )  # fmt: skip
    p.add_argument(
        "--all-fields", action="store_true",
        help="also list volatile fields (clocks, timings, shared pass) and install/cache folders",
    )  # fmt: skip
    p.set_defaults(handler=_diff)
