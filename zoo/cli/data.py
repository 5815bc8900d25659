"""`zoo data prepare|verify|synth`: the data roots the tables are measured on (logic in zoo.data)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from zoo.cli import add_common, add_fetch_options, at_least


def _dataset(args: argparse.Namespace):  # noqa: ANN202 - zoo.data imported lazily (cv2 for every command)
    from zoo.data import load_registry

    return load_registry(args.manifests).get(args.dataset)


def _root(args: argparse.Namespace, dataset) -> Path:  # noqa: ANN001
    from zoo.data import default_root

    return args.root if args.root is not None else default_root(dataset)


def _non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0, with a one-line message naming the bad value."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _prepare(args: argparse.Namespace) -> int:
    from zoo.cli.fetch import configure_logging
    from zoo.data import datasets_lock, prepare

    configure_logging()
    dataset = _dataset(args)
    result = prepare(
        dataset,
        _root(args, dataset),
        lock=datasets_lock(args.manifests),
        cache=args.cache,
        offline=args.offline or None,
        jobs=args.jobs,
    )
    shown = set()
    for step in result.steps:
        if step.status != "manual":
            print(f"{step.status:8} {step.path}: {step.detail}")
            continue
        print(f"{'MANUAL':8} {step.path}")
        for label, url in step.links:
            print(f"{'':8}   source: {label}: {url}")
        if step.dest is not None:
            print(f"{'':8}   save as: {step.dest}")
        if step.sha256:
            trust = (
                ""
                if step.sha256_verified
                else " (third-party value, unconfirmed: a mismatch is only a warning)"
            )
            print(f"{'':8}   sha256: {step.sha256}{trust}")
        if step.detail not in shown:  # inputs from one download share their instructions
            print(f"{'':8}   {step.detail}")
            shown.add(step.detail)
    if result.complete:
        print(f"{dataset.id}: ready at {result.root}")
        return 0
    manual = sum(s.status == "manual" for s in result.steps)
    skipped = sum(s.status == "skipped" for s in result.steps)
    left = [f"{manual} file(s) need a manual step"] if manual else []
    left += [f"{skipped} download(s) skipped because of --offline"] if skipped else []
    print(f"zoo: error: {dataset.id}: {' and '.join(left)} (above); rerun this command once they are in place",
          file=sys.stderr)  # fmt: skip
    return 1


def _verify(args: argparse.Namespace) -> int:
    from zoo.data import verify

    dataset = _dataset(args)
    report = verify(
        dataset, _root(args, dataset), expect_count=args.expect_count, decode=args.decode, jobs=args.jobs
    )
    if args.json:
        findings = [{"level": f.level, "message": f.message} for f in report.findings]
        print(
            json.dumps(
                {"dataset": report.dataset, "root": str(report.root), "ok": report.ok, "findings": findings},
                indent=1,
            )
        )
    else:
        for f in report.findings:
            print(f"{f.level}: {f.message}", file=sys.stderr if f.level == "error" else sys.stdout)
        print(f"{report.dataset}: {'OK' if report.ok else 'FAILED'} ({report.root})")
    return 0 if report.ok else 1


def _synth(args: argparse.Namespace) -> int:
    from zoo.data import SynthSpec, synthesize

    spec = SynthSpec(max_side=args.max_side, fp_per_image=args.fp_per_image)
    p = synthesize(args.out, n_images=args.images, seed=args.seed, write_images=not args.no_images, spec=spec)
    images = f"{p.n_images} images" + ("" if p.images_written else " (annotations only, --no-images)")
    print(
        f"synthetic COCO-WholeBody at {p.root}: {images}, {p.n_annotations} annotations, {p.n_detections} detections"
    )
    print(f"  ann_file: {p.ann_file}\n  img_dir:  {p.img_dir}\n  det_file: {p.det_file}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="prepare, verify or synthesise evaluation data")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = dsub.add_parser("prepare", help="download/extract/build a dataset; print the manual steps left")
    add_common(p)
    p.add_argument(
        "dataset", help="dataset id or alias in manifests/datasets.yaml (e.g. coco-wholebody, ubody)"
    )
    p.add_argument("--root", type=Path, help="data root (default: $ZOO_DATA_ROOT/<root>, else data/<root>)")
    add_fetch_options(p)
    p.add_argument(
        "--jobs", type=at_least(1), default=2, help="parallel ffmpeg runs for UBody frames (default 2)"
    )
    p.set_defaults(handler=_prepare)

    p = dsub.add_parser(
        "verify", help="check a data root: layout, checksums, counts, formats; exit 1 on errors"
    )
    add_common(p)
    p.add_argument("dataset", help="dataset id or alias in manifests/datasets.yaml")
    p.add_argument("--root", type=Path, help="data root (default: $ZOO_DATA_ROOT/<root>, else data/<root>)")
    p.add_argument(
        "--expect-count",
        type=at_least(1),
        help="expected number of images (overrides registry and synthetic marker)",
    )
    p.add_argument(
        "--decode",
        action="store_true",
        help="also decode every annotated image as mmpose will (slower; names each unreadable one)",
    )
    p.add_argument(
        "--jobs", type=at_least(1), default=None, help="decoding threads (default: CPUs, at most 8)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_verify)

    p = dsub.add_parser("synth", help="write a deterministic synthetic COCO-WholeBody val set")
    add_common(p)
    p.add_argument(
        "--out", type=Path, required=True, help="data root to create (empty or an earlier synthetic root)"
    )
    p.add_argument(
        "--images", type=at_least(1), default=8, help="number of images (default 8; 5000 = full val size)"
    )
    p.add_argument("--seed", type=at_least(0), default=0, help="same seed, byte-identical files (default 0)")
    p.add_argument("--no-images", action="store_true", help="annotations and detections only")
    p.add_argument(
        "--max-side",
        type=int,
        default=640,
        help="long image side in pixels, at least 64 (default 640, as COCO)",
    )
    p.add_argument("--fp-per-image", type=_non_negative_float, default=1.0,
                   help="mean false-positive boxes per image (default 1; 19 gives the real file's ~104k at 5000 images)")  # fmt: skip
    p.set_defaults(handler=_synth)
