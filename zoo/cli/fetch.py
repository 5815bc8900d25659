"""`zoo fetch`: download checkpoints into the verified cache and print their local paths."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from zoo.cli import add_common, add_fetch_options
from zoo.errors import InputError, ZooError


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted (tests and redirects swap it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        """Ignored: the stream is always the current sys.stderr."""


def configure_logging() -> None:
    """Progress and notes go to stderr as `zoo: ...` lines (stdout carries only results), unless
    someone set up logging. Only the `zoo` logger: libraries' raw log lines do not reach the user."""
    logger = logging.getLogger("zoo")
    if not logger.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("zoo: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _check_args(args: argparse.Namespace) -> bool:
    """Reject contradictory options; True when every manifest row is meant."""
    all_rows = args.all or (args.update_lock and not args.rows and args.url is None)  # bare --update-lock
    if sum([bool(args.rows), all_rows, args.url is not None]) != 1:
        raise InputError("zoo fetch: give ROW ids, --all, or --url URL (exactly one of them)")
    if args.url is None and (args.sha256 or args.no_verify):
        raise InputError("zoo fetch: --sha256 and --no-verify apply only to --url")
    if args.url is not None and args.update_lock:
        raise InputError("zoo fetch: --update-lock records manifest rows; use it with ROW ids or --all")
    if args.sha256 and args.no_verify:
        raise InputError("zoo fetch: --sha256 and --no-verify contradict each other")
    return all_rows


def _run(args: argparse.Namespace) -> int:
    from zoo import fetch as f

    all_rows = _check_args(args)
    configure_logging()
    cache = f.Cache(f.resolve_cache_dir(args.cache))
    cache.check(writable=False)
    offline = args.offline or f.offline_from_env()
    lock = f.ChecksumLock(args.manifests / "checkpoints.lock")
    if args.update_lock:
        lock.check_writable()  # the lock file is the output: refuse before hashing or fetching anything
    config = f.FetchConfig.from_env()
    f.parse_mirrors(os.environ.get("ZOO_MIRROR"))
    if args.url is not None:
        expected = f.resolve_expected(
            args.url, sha256=args.sha256, locked=lock.get(args.url), lock_path=lock.path
        )
        fetched = f.fetch(
            args.url, expected, cache=cache, offline=offline, config=config, allow_unverified=args.no_verify
        )
        print(fetched.path, flush=True)
        return 0

    from zoo.manifest import load_manifests

    manifests = load_manifests(args.manifests)
    rows = manifests.rows if all_rows else [manifests.row(r) for r in args.rows]
    for row in rows:  # a manifest, lock file or file name that disagree: bad input, before any download
        f.row_expected(row, lock, update_lock=args.update_lock)
    worst = 0
    with f.make_session(config) as session:
        for row in rows:  # one failing row does not stop the others; each failure is one line
            try:
                fetched = f.fetch_row(
                    row,
                    lock=lock,
                    update_lock=args.update_lock,
                    cache=cache,
                    offline=offline,
                    config=config,
                    session=session,
                )
            except f.NotCachedError as exc:  # offline: this row is missing, the others may be there
                print(f"zoo: error: {row.id}: {exc}", file=sys.stderr)
                worst = max(worst, exc.exit_code)
                continue
            except InputError:  # an unusable cache or lock file: the same for every row
                raise
            except ZooError as exc:
                print(f"zoo: error: {row.id}: {exc}", file=sys.stderr)
                worst = max(worst, exc.exit_code)
                continue
            print(fetched.path, flush=True)
    return worst


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fetch",
        help="download checkpoints (sha256-verified, resumable) and print their cached paths",
        description="Download checkpoints into the verified cache and print one local path per line. "
        "A file is handed out only after its sha256 matched the manifest, the lock file or the "
        "8-hex hash in its OpenMMLab file name.",
    )
    add_common(p)
    p.add_argument("rows", nargs="*", metavar="ROW", help="manifest row ids")
    p.add_argument("--all", action="store_true", help="every manifest row")
    p.add_argument("--url", help="any URL (hash from --sha256, else from its OpenMMLab file name)")
    p.add_argument("--sha256", metavar="HEX", help="full expected sha256 for --url")
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="allow a --url with no known hash; it is stored under unverified/ and never loaded",
    )
    add_fetch_options(p)
    p.add_argument(
        "--update-lock",
        action="store_true",
        help="re-hash cached files and (re)write their full sha256 in manifests/checkpoints.lock",
    )
    p.set_defaults(handler=_run)
