"""`zoo baseline accept`: make measured values the new expected values of manifest rows, on purpose.

The gate fails on IMPROVED under --strict and on FAIL always, so a baseline moves only through this
command, and the change is a small diff a reviewer can read: the row's `expected:` block is replaced
by the measured values and the previous block is kept, verbatim (comments included), as `published:`
(unless the row already has one: the published numbers are never overwritten). `zoo table --expected`
renders `published:` when present, so the regenerated README tables stay byte-identical.

Why a targeted text edit and not a YAML re-dump: PyYAML drops comments, anchors and the flow style of
the hand-written manifests (ruamel.yaml, which keeps them, is not a dependency), so a re-dump would
turn a ten-line change into a rewrite of the file. The edit is checked by loading the edited folder
(a temporary copy) and comparing every row with what was intended before the file is replaced
atomically; nothing is written unless every requested row can be accepted.
"""

from __future__ import annotations

import difflib
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.errors import InputError
from zoo.manifest import METRICS, PARTS, Manifests, Row, load_manifests
from zoo.provenance import Difference
from zoo.results import Record, write_atomic

DECIMALS = 4  # measured values are written with one digit more than the published tables
_ROW_START = re.compile(r"^(?P<indent> *)- id: *(?P<id>[^\s#]+)")


@dataclass(frozen=True)
class Accepted:
    """One manifest file's change: its path and the unified diff of the edit."""

    path: Path
    diff: str


def measured_expected(row: Row, record: Record | None) -> dict[str, dict[str, float]]:
    """The row's published metrics with their measured values, `{part: {ap, ar}}` in manifest order.

    Only metrics the manifest publishes are taken (an unpublished part stays unpublished). InputError
    when the record is absent, not `ok`, or lacks a usable value for a published metric.
    """
    if record is None:
        raise InputError(f"row {row.id}: no result record to accept")
    if record.status != "ok":
        raise InputError(
            f"row {row.id}: its result has status {record.status!r}; only an ok run can be accepted"
        )
    out: dict[str, dict[str, float]] = {}
    for key in METRICS:
        if row.expected.get(key) is None:
            continue
        value = record.metric(key)
        if value is None or not 0.0 <= value <= 1.0:  # also rejects NaN and COCO's -1 (undefined)
            raise InputError(f"row {row.id}: result record has no usable value for {key} ({value!r})")
        part, stat = key.split(".")
        out.setdefault(part, {})[stat] = round(value, DECIMALS)
    return out


def _row_span(lines: list[str], row_id: str, path: Path) -> tuple[int, int, int]:
    """(first line, end line, indent of the row's keys) of the row's block in the `rows:` list."""
    starts = [(i, m) for i, line in enumerate(lines) if (m := _ROW_START.match(line))]
    mine = [(i, m) for i, m in starts if m["id"].strip("'\"") == row_id]
    if len(mine) != 1:
        raise InputError(f"{path}: row {row_id}: expected one '- id: {row_id}' line, found {len(mine)}")
    start, match = mine[0]
    key_indent = len(match["indent"]) + 2
    end = len(lines)
    for j in range(start + 1, len(lines)):
        text = lines[j]
        if text.strip() and not text.lstrip().startswith("#") and len(text) - len(text.lstrip()) < key_indent:
            end = j
            break
    while end > start + 1 and not lines[end - 1].strip():  # trailing blank lines belong to the gap
        end -= 1
    return start, end, key_indent


def _key_span(lines: list[str], start: int, end: int, indent: int, key: str) -> tuple[int, int] | None:
    """(first, end) lines of `key:` and its nested lines inside a row block, or None if absent."""
    pattern = re.compile(rf"^ {{{indent}}}{re.escape(key)}:(\s|$)")
    for i in range(start, end):
        if pattern.match(lines[i]):
            j = i + 1
            while j < end and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
                j += 1
            while j > i + 1 and not lines[j - 1].strip():
                j -= 1
            return i, j
    return None


def _expected_block(values: Mapping[str, Mapping[str, float]], indent: int) -> list[str]:
    pad = " " * indent
    lines = [f"{pad}expected:  # measured: zoo baseline accept\n"]
    for part in PARTS:
        if part in values:
            ap, ar = values[part]["ap"], values[part]["ar"]
            lines.append(f"{pad}  {part}: {{ap: {ap:.{DECIMALS}f}, ar: {ar:.{DECIMALS}f}}}\n")
    return lines


def edit_row(
    text: str,
    row: Row,
    values: Mapping[str, Mapping[str, float]],
    path: Path,
    forced: Mapping[str, Any] | None = None,
) -> str:
    """The manifest text with the row's `expected:` replaced by `values`, the old block kept as
    `published:` (when the row has no `published:` yet), and `forced_accept:` set to `forced` (the
    reason and the differences a forced accept took on) or removed."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    start, end, indent = _row_span(lines, row.id, path)
    old_forced = _key_span(lines, start, end, indent, "forced_accept")
    if old_forced is not None:
        del lines[old_forced[0] : old_forced[1]]
        end -= old_forced[1] - old_forced[0]
    expected = _key_span(lines, start, end, indent, "expected")
    if expected is None:
        raise InputError(f"{path}: row {row.id}: no 'expected:' key of its own to replace")
    first, stop = expected
    old = lines[first:stop]
    keep: list[str] = []
    if _key_span(lines, start, end, indent, "published") is None:
        head = old[0].replace("expected:", "published:", 1)
        keep = [head, *old[1:]]
    block = _expected_block(values, indent) + (_forced_block(forced, indent) if forced else [])
    return "".join([*lines[:first], *block, *keep, *lines[stop:]])


def _forced_block(forced: Mapping[str, Any], indent: int) -> list[str]:
    """`forced_accept:` in flow style, one difference a line (yaml.safe_dump quotes what needs it)."""
    import yaml

    def flow(value: Any) -> str:
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()

    pad = " " * indent
    lines = [f"{pad}forced_accept:  # zoo baseline accept --force\n", f"{pad}  reason: {flow(forced['reason'])}\n",
             f"{pad}  differences:\n"]  # fmt: skip
    lines += [f"{pad}    - {flow(d)}\n" for d in forced["differences"]]
    return lines


def _check_edit(
    manifests: Manifests,
    path: Path,
    new_text: str,
    intended: Mapping[str, Mapping[str, Any]],
    forced: Mapping[str, Mapping[str, Any] | None],
) -> None:
    """Load the edited folder (a temporary copy) and require exactly the intended change."""
    with tempfile.TemporaryDirectory(prefix="zoo-accept-") as tmp:
        copy = Path(tmp) / "manifests"
        shutil.copytree(manifests.dir, copy)
        (copy / path.name).write_text(new_text, encoding="utf-8")
        edited = load_manifests(copy)
    for before in manifests.rows:
        after = edited.row(before.id).model_dump()
        want = before.model_dump()
        if before.id in intended:
            want["published"] = want["published"] or want["expected"]
            want["expected"] = {part: intended[before.id].get(part) for part in PARTS}
            want["forced_accept"] = forced.get(before.id)
        if after != want:
            raise InputError(
                f"{path}: row {before.id}: the edit did not give the intended manifest (not written)"
            )


def accept(
    manifests: Manifests,
    row_ids: Sequence[str],
    records: Mapping[str, Record],
    differences: Mapping[str, Sequence[Difference]] | None = None,
    force_reason: str | None = None,
) -> list[Accepted]:
    """Accept the measured values of `row_ids`; returns the diffs of the files it rewrote.

    A record that did not measure exactly the row (`differences`, from `zoo.provenance`) is refused,
    unless `force_reason` is given: then the differences and the reason are written into the row
    (`forced_accept`), where the gate and every reader of the manifest see them."""
    rows = [manifests.row(rid) for rid in dict.fromkeys(row_ids)]
    if not rows:
        raise InputError("zoo baseline accept: give at least one ROW id")
    if force_reason is not None and not force_reason.strip():
        raise InputError("--force: give the reason, e.g. --force 'CI smoke baseline from --subset 100 runs'")
    values = {row.id: measured_expected(row, records.get(row.id)) for row in rows}  # all or nothing
    forced: dict[str, dict[str, Any] | None] = {}
    for row in rows:
        blocking = [d for d in (differences or {}).get(row.id, ()) if d.blocking]
        if blocking and force_reason is None:
            raise InputError(
                f"row {row.id}: its record measured something else ("
                + "; ".join(d.describe() for d in blocking)
                + "); refusing to make it the baseline (--force REASON accepts it and writes why into the manifest)"
            )
        taken = [
            d
            for d in (differences or {}).get(row.id, ())
            if d.blocking or d.why_not_blocking.startswith("accepted")
        ]
        forced[row.id] = (
            {"reason": force_reason.strip(), "differences": [dict(zip(("field", "record", "manifest"), d.key(), strict=True)) for d in taken]}
            if force_reason is not None and taken else None
        )  # fmt: skip
    edits: list[tuple[Path, str, str]] = []
    for table in manifests.tables:
        mine = [row for row in rows if row.table == table.id]
        if not mine:
            continue
        path = manifests.dir / f"{table.id}.yaml"
        old_text = path.read_text(encoding="utf-8")
        text = old_text
        for row in mine:
            text = edit_row(text, row, values[row.id], path, forced[row.id])
        _check_edit(manifests, path, text, {row.id: values[row.id] for row in mine}, forced)
        edits.append((path, old_text, text))
    out: list[Accepted] = []
    for path, old_text, text in edits:  # written only once every file's edit has been checked
        write_atomic(path, text.encode("utf-8"))
        diff = difflib.unified_diff(
            old_text.splitlines(keepends=True), text.splitlines(keepends=True), str(path), str(path)
        )
        out.append(Accepted(path=path, diff="".join(diff)))
    return out
