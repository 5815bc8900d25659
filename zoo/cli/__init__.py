"""The `zoo` command: a thin shell that parses arguments and calls the library.

Each command group lives in its own module under `zoo.cli` and exposes `register(subparsers)`;
handlers return an exit code. Every `ZooError` becomes one line on stderr and its exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from zoo import __version__
from zoo.errors import ZooError

# Command modules, in the order they appear in `zoo --help`.
_COMMAND_MODULES = ("env", "manifests", "fetch", "data", "run", "eval", "gate", "diff")


def default_manifests_dir() -> Path:
    """`--manifests` default: $ZOO_MANIFESTS, else the project's `manifests/` next to the package."""
    env = os.environ.get("ZOO_MANIFESTS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "manifests"


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options every command accepts."""
    parser.add_argument(
        "--manifests",
        type=Path,
        default=None,
        help="manifest folder (default: $ZOO_MANIFESTS, else the project's manifests/)",
    )


def at_least(minimum: int):
    """argparse type: an integer >= minimum, with a one-line message naming the bad value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def seconds(text: str) -> float:
    """argparse type: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (a number >= 0), got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds (a number >= 0), got {text}")
    return value


def add_fetch_options(parser: argparse.ArgumentParser) -> None:
    """Where checkpoints are cached and whether the network may be used (fetch, run, reproduce)."""
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="checkpoint cache (default: $ZOO_CACHE, else the user cache dir)",
    )
    parser.add_argument("--offline", action="store_true", help="never touch the network (also ZOO_OFFLINE=1)")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of `zoo run` that `zoo reproduce` shares."""
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        metavar="DIR",
        help="dataset root, or a folder holding coco/ and UBody/ (default $ZOO_DATA_ROOT/<dataset>)",
    )
    parser.add_argument(
        "--boxes",
        default=None,
        help="det | det:<file> | gt | mmdet:<config>:<checkpoint> (default: the row's source); several, "
        "comma-separated (det,gt): the row's own source and each listed other, whose records go to "
        "<out>/boxes/<source>/ for the report's box-source comparison",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument(
        "--batch-size", type=at_least(1), default=None, help="default: the config's test batch size"
    )
    parser.add_argument(
        "--workers", type=at_least(0), default=None, help="data loader workers (default: config)"
    )
    parser.add_argument(
        "--subset", type=at_least(1), default=None, metavar="N", help="only the first N images (quick checks)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs"), metavar="DIR", help="results folder (default runs/)"
    )
    parser.add_argument("--force", action="store_true", help="redo rows even when their record is current")
    parser.add_argument(
        "--reference",
        action="store_true",
        help="mmpose's own data pipeline and xtcocotools metrics instead of the (identical) fast paths",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (a progress line every 30 s instead)"
    )
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="replay each model's forward pass as a CUDA graph (the same kernels, less launch overhead)",
    )
    parser.add_argument(
        "--decode-workers", type=at_least(1), default=None, metavar="N",
        help="workers decoding heatmaps beside the model (default: the cores the data workers leave;"
        " threads; for DARK/UDP a process pool from zoo.inference.POOL_MIN_WORKERS workers)",
    )  # fmt: skip
    parser.add_argument(
        "--checkpoint-every", type=seconds, default=60.0, metavar="SECONDS",
        help="seconds between checkpointed chunks of a running row; a killed row resumes there (default 60)",
    )  # fmt: skip
    add_fetch_options(parser)


def run_options(args: argparse.Namespace):  # -> zoo.evaluate.RunOptions (imported lazily: torch stack)
    """The RunOptions the parsed `add_run_options` arguments describe."""
    from zoo.evaluate import RunOptions

    return RunOptions(
        data_root=args.data_root, boxes=args.boxes, device=args.device, batch_size=args.batch_size,
        workers=args.workers, subset=args.subset, out=args.out, force=args.force, cache=args.cache,
        offline=args.offline or None, launcher=getattr(args, "launcher", "auto"),
        progress=not args.no_progress, reference=args.reference, cuda_graphs=args.cuda_graphs,
        decode_workers=args.decode_workers, checkpoint_every=args.checkpoint_every, argv=list(args.argv),
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoo",
        description="Re-measure mmpose's published whole-body pose results.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(f"zoo.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = ["zoo", *argv]  # what this invocation was given, recorded in its results
    if getattr(args, "manifests", "absent") is None:
        args.manifests = default_manifests_dir()
    try:
        return int(args.handler(args) or 0)
    except ZooError as exc:
        print(f"zoo: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("zoo: interrupted", file=sys.stderr)
        return 130
