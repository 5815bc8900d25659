"""`zoo validate`, `zoo list`, `zoo table --expected`, `zoo audit`: the manifests as the user sees them."""

from __future__ import annotations

import argparse
import json
import sys

from zoo.cli import add_common


def _validate(args: argparse.Namespace) -> int:
    from zoo.manifest import load_manifests

    m = load_manifests(args.manifests)
    counts = ", ".join(f"{t.id}: {len(t.rows)}" for t in m.tables)
    print(f"{m.dir}: {len(m.tables)} tables, {len(m.rows)} rows ({counts}) valid")
    return 0


def _list(args: argparse.Namespace) -> int:
    from zoo.manifest import load_manifests

    m = load_manifests(args.manifests)
    if args.format == "json":
        print(json.dumps([row.model_dump(mode="json") for row in m.rows], indent=2))
        return 0
    from tabulate import tabulate

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [
        (r.id, r.table, r.name, r.input_size_text, r.boxes, fmt(r.expected.get("whole.ap")),
         fmt(r.expected.get("whole.ar")), r.checkpoint.filename)
        for r in m.rows
    ]  # fmt: skip
    headers = ("id", "table", "name", "input", "boxes", "Whole AP", "Whole AR", "checkpoint")
    print(tabulate(lines, headers=headers, disable_numparse=True))
    return 0


def _table(args: argparse.Namespace) -> int:
    from zoo.manifest import load_manifests
    from zoo.tables import render_expected

    m = load_manifests(args.manifests)
    tables = [m.table(args.table)] if args.table else m.tables
    sys.stdout.write(render_expected(tables))
    return 0


def _audit(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from zoo.audit import audit
    from zoo.manifest import load_manifests

    report = audit(load_manifests(args.manifests))
    lines = []
    for row in dict.fromkeys(f.row for f in report.findings):
        mine = [f for f in report.findings if f.row == row]
        agree = sum(f.status == "agree" for f in mine)
        if agree and not args.all:
            lines.append((row, f"({agree} field{'s' if agree > 1 else ''})", "", "", "agree", ""))
        shown = mine if args.all else [f for f in mine if f.status != "agree"]
        lines += [(f.row, f.field, _show(f.manifest), _show(f.metafile), f.status, f.why) for f in shown]
    headers = ("row", "field", "manifest", "metafile", "status", "why")
    print(
        tabulate(lines, headers=headers, disable_numparse=True, maxcolwidths=[None, None, 36, 36, None, 48])
    )
    counts = {s: report.count(s) for s in ("agree", "acknowledged", "DRIFT", "STALE")}
    print("audit: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if not report.ok:
        print(
            "zoo: error: unacknowledged differences from mmpose's metafiles: fix the manifest or record "
            "them under the row's acknowledged_drift",
            file=sys.stderr,
        )
    return 0 if report.ok else 1


def _show(value: float | str | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="validate the manifests (schema, checksums in names, configs exist)")
    add_common(p)
    p.set_defaults(handler=_validate)

    p = sub.add_parser("list", help="list the manifest rows")
    add_common(p)
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    p.set_defaults(handler=_list)

    p = sub.add_parser("table", help="regenerate the published tables from the manifests")
    add_common(p)
    p.add_argument(
        "--expected", action="store_true", required=True, help="with the expected (published) values"
    )
    p.add_argument("--table", metavar="NAME", help="only this table (id = manifest file name)")
    p.set_defaults(handler=_table)

    p = sub.add_parser("audit", help="compare the manifests with mmpose's packaged metafiles")
    add_common(p)
    p.add_argument("--all", action="store_true", help="list every compared field, not just differences")
    p.set_defaults(handler=_audit)
