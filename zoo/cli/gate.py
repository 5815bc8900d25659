"""`zoo check`, `zoo baseline accept`, `zoo report`, `zoo reproduce`, `zoo demo`: the gate and its outputs.

A thin shell: the verdicts come from zoo.compare, the files from zoo.junit / zoo.report / zoo.baseline,
the pipelines from zoo.reproduce / zoo.demo. Exit codes: 0 the gate passes, 1 it fails (FAIL, ERROR,
IMPROVED under --strict, MISSING/SKIPPED unless --allow-missing), 2 bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from zoo.cli import add_common, add_run_options, run_options
from zoo.errors import InputError


def _rows(manifests, ids: list[str], table: str | None) -> list:  # noqa: ANN001 - Manifests, imported lazily
    """ROW ids, or every row of --table, or every row."""
    if ids and table:
        raise InputError("give ROW ids or --table, not both")
    if ids:
        return [manifests.row(i) for i in dict.fromkeys(ids)]
    return list(manifests.table(table).rows) if table else manifests.rows


def _print_gate(comparison, results: Path, manifests: Path) -> None:  # noqa: ANN001
    from zoo.cli import default_manifests_dir
    from zoo.compare import accept_command, render_lines, render_summary

    for line in render_lines(comparison):
        print(line)
    print(render_summary(comparison))
    explicit = None if manifests.resolve() == default_manifests_dir().resolve() else str(manifests)
    command = accept_command(comparison, str(results), explicit)
    if command:
        print(f"to make the measured values the new baseline (after review): {command}")


def _check(args: argparse.Namespace) -> int:
    from zoo.compare import compare
    from zoo.junit import write_junit
    from zoo.manifest import load_manifests
    from zoo.preflight import check_outputs
    from zoo.provenance import all_differences
    from zoo.results import load_records

    manifests = load_manifests(args.manifests)
    rows = _rows(manifests, args.rows, args.table)
    check_outputs([("--junit", args.junit, False)])
    records = load_records(args.results)
    if not args.rows and not args.table:
        known = {row.id for row in manifests.rows}
        unknown = sorted(set(records) - known)
        if unknown:
            print(
                f"zoo: note: records for rows not in the manifests (ignored): {', '.join(unknown)}",
                file=sys.stderr,
            )
    differences = all_differences(rows, records, manifests)
    comparison = compare(
        rows, records, strict=args.strict, allow_missing=args.allow_missing, differences=differences
    )
    _print_gate(comparison, args.results, args.manifests)
    if args.junit:
        write_junit(args.junit, comparison, records)
    return 0 if comparison.passed else 1


def _accept(args: argparse.Namespace) -> int:
    from zoo.baseline import accept
    from zoo.manifest import load_manifests
    from zoo.provenance import all_differences
    from zoo.results import load_records

    manifests = load_manifests(args.manifests)
    records = load_records(args.results)
    rows = [manifests.row(rid) for rid in dict.fromkeys(args.rows)]
    differences = all_differences(rows, records, manifests)
    for change in accept(manifests, args.rows, records, differences, force_reason=args.force):
        sys.stdout.write(change.diff)
        print(f"updated {change.path} (published values kept under 'published:'); review and commit the diff")
    return 0


def _report(args: argparse.Namespace) -> int:
    from zoo.manifest import load_manifests
    from zoo.preflight import check_outputs
    from zoo.provenance import all_differences
    from zoo.report import write_report
    from zoo.results import load_box_variants, load_records

    manifests = load_manifests(args.manifests)
    rows = _rows(manifests, args.rows, args.table)
    check_outputs([("--out", args.out, True)])
    records = load_records(args.results)
    differences = all_differences(rows, records, manifests)
    for path in write_report(
        manifests, records, args.out, rows, differences, load_box_variants(args.results)
    ):
        print(path)
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from zoo import preflight
    from zoo.compare import summary_table
    from zoo.manifest import load_manifests
    from zoo.reproduce import ReproduceOptions, reproduce

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    manifests = load_manifests(args.manifests)
    rows = _rows(manifests, args.rows, args.table)
    opts = ReproduceOptions(
        run=preflight.settle(run_options(args)),
        report_dir=args.report_dir,
        junit=args.junit,
        strict=args.strict,
        allow_missing=args.allow_missing,
    )
    result = reproduce(manifests, rows, opts, say=lambda text: print(text, file=sys.stderr, flush=True))
    print(summary_table(result.comparison, result.records, opts.run.out))
    print()
    _print_gate(result.comparison, opts.run.out, args.manifests)
    for path in result.reports:
        if path.suffix == ".md":
            print(f"report: {path}")
    if result.junit:
        print(f"junit: {result.junit}")
    return 0 if result.comparison.passed else 1


def _demo(args: argparse.Namespace) -> int:
    from zoo.demo import run_demo

    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    result = run_demo(args.out, perturb=args.perturb, record=args.record, manifests_src=args.manifests)
    for line in result.lines:
        print(line)
    print(f"demo: {result.seconds:.0f} s, exit {result.exit_code}")
    return result.exit_code


def _add_gate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--strict", action="store_true", help="IMPROVED fails too (baselines move only on purpose)"
    )
    p.add_argument(
        "--allow-missing", action="store_true", help="MISSING and SKIPPED rows do not fail the gate"
    )
    p.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML (one testcase per row)")


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("rows", nargs="*", metavar="ROW", help="row ids (default: every row)")
    p.add_argument("--table", metavar="NAME", help="every row of one table (id = manifest file name)")


def register(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser(
        "check",
        help="compare result records with the manifests (the CI gate)",
        description="One line per row: PASS, FAIL (below tolerance), IMPROVED (above; fails with --strict), "
        "STALE (the record measured another checkpoint, config, box source, data or a subset: each differing "
        "field is named), MISSING (no record), ERROR (the run failed) or SKIPPED (data not available). Exit 0 "
        "when the gate passes, 1 when it fails, 2 on bad input.",
    )
    add_common(p)
    _add_selection(p)
    p.add_argument("--results", type=Path, required=True, metavar="DIR", help="results folder of `zoo run`")
    _add_gate_options(p)
    p.set_defaults(handler=_check)

    p = sub.add_parser("baseline", help="move expected values on purpose (see `zoo baseline accept -h`)")
    baseline = p.add_subparsers(dest="baseline_command", metavar="ACTION", required=True)
    p = baseline.add_parser(
        "accept",
        help="write measured values into the manifests as the new expected values",
        description="Replaces each row's expected: block with its measured values (published metrics only) "
        "and keeps the previous block as published: (never overwriting an existing one), so `zoo table "
        "--expected` still renders the published numbers. Prints the diff to review.",
    )
    add_common(p)
    p.add_argument("rows", nargs="+", metavar="ROW", help="row ids whose measured values become the baseline")
    p.add_argument("--results", type=Path, required=True, metavar="DIR", help="results folder of `zoo run`")
    p.add_argument(
        "--force", metavar="REASON", default=None,
        help="accept a record that measured something else (STALE: another checkpoint, config, data, a "
        "subset); the differences and REASON are written into the row as forced_accept",
    )  # fmt: skip
    p.set_defaults(handler=_accept)

    p = sub.add_parser(
        "report", help="write the markdown reproduction reports (tables, Δ, plots, environment)"
    )
    add_common(p)
    _add_selection(p)
    p.add_argument("--results", type=Path, required=True, metavar="DIR", help="results folder of `zoo run`")
    p.add_argument(
        "--out", type=Path, default=Path("reports"), metavar="DIR", help="output folder (default reports/)"
    )
    p.set_defaults(handler=_report)

    p = sub.add_parser(
        "reproduce",
        help="fetch -> data verify -> run -> check -> report in one resumable command",
        description="Reproduce rows end to end. Rows whose checkpoint cannot be fetched are ERROR, rows whose "
        "dataset fails `zoo data verify` are SKIPPED (with what is missing); the exit code is the gate's.",
    )
    add_common(p)
    _add_selection(p)
    add_run_options(p)
    p.add_argument("--report-dir", type=Path, default=Path("reports"), metavar="DIR", help="default reports/")
    _add_gate_options(p)
    p.set_defaults(handler=_reproduce)

    p = sub.add_parser(
        "demo",
        help="the whole pipeline offline on synthetic data, in minutes on a CPU",
        description="Synthetic data, mean-pose checkpoints of three real architectures served over loopback "
        "HTTP, run, gate and report; expected values from zoo/demo_expected.yaml. --perturb shrinks one "
        "convolution of one checkpoint and the gate must fail (exit 1).",
    )
    add_common(p)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output folder (default runs/demo/, runs/demo-perturbed/ with --perturb: untracked; "
        "--out reports/demo refreshes the committed example)",
    )
    p.add_argument("--perturb", action="store_true", help="shrink one conv weight of one checkpoint")
    p.add_argument(
        "--record",
        action="store_true",
        help="maintainers: run once and write zoo/demo_expected.yaml (no check)",
    )
    p.set_defaults(handler=_demo)
