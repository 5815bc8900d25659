"""`zoo data verify`: check a data root before spending hours evaluating on it.

One finding per problem, each one line naming the file: missing files, checksum mismatches
(a warning when the registry's value is an unconfirmed third-party one), wrong image or box
counts, malformed annotation or detection files, and annotated images that are not on disk or
empty (one line per file). That much takes seconds (a listing and sizes). With `decode`, every
annotated image is also decoded as the evaluation will decode it (zoo.data.decode), and each one
that does not decode is named with the reason.

A root written by `zoo data synth` carries zoo-synth.json; verify then takes the expected counts
from it, skips the real files' checksums (a synthetic file cannot match them) and, for a set
generated with --no-images, skips the image checks, saying so in a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from zoo.data.coco_format import annotation_problems, detection_problems, load_json
from zoo.data.paths import SYNTH_MARKER
from zoo.data.prepare import require_root
from zoo.data.registry import DataFile, Dataset
from zoo.errors import InputError

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
_MAX_LINES = 20  # per file: a broken 100k-entry file must not flood the terminal

Level = Literal["error", "warning", "note", "ok"]


@dataclass(frozen=True)
class Finding:
    level: Level
    message: str


@dataclass(frozen=True)
class VerifyReport:
    dataset: str
    root: Path
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not any(f.level == "error" for f in self.findings)


@dataclass(frozen=True)
class _Expect:
    """What the root should hold: from the registry, a synthetic marker or --expect-count."""

    synthetic: bool
    images: int | None
    images_written: bool
    detections: int | None


def _expectations(root: Path, expect_count: int | None, out: list[Finding]) -> _Expect:
    marker_path = root / SYNTH_MARKER
    if marker_path.exists():
        marker = load_json(marker_path)
        out.append(Finding("note", f"{marker_path}: synthetic root (seed {marker.get('seed')}); counts from the "
                           "marker, checksums of the real files not applicable"))  # fmt: skip
        written = bool(marker.get("images_written", True))
        if not written:
            out.append(Finding("note", f"{marker_path}: generated with --no-images; image checks skipped"))
        return _Expect(True, expect_count or marker.get("images"), written, marker.get("detections"))
    return _Expect(False, expect_count, True, None)


def _count_check(file: DataFile, what: str, found: int, expected: int | None, where: Path) -> Finding:
    if expected is None or found == expected:
        return Finding("ok", f"{where}: {found} {what}")
    level: Level = "error" if file.count_verified or file.count != expected else "warning"
    note = "" if level == "error" else " (the registry's count is an unconfirmed third-party value)"
    return Finding(level, f"{where}: {found} {what}, expected {expected}{note}")


def _checksum(file: DataFile, dest: Path) -> Finding | None:
    from zoo.fetch import sha256_file

    ck = file.checksum
    if ck is None:
        return None
    digest = sha256_file(dest)
    if digest == ck.sha256:
        return Finding("ok", f"{dest}: sha256 matches")
    if ck.verified:
        return Finding("error", f"{dest}: sha256 {digest} does not match the registry's {ck.sha256}")
    return Finding(
        "warning", f"{dest}: sha256 {digest} differs from the unverified third-party value {ck.sha256}"
    )


def _capped(lines: list[str], level: Level) -> list[Finding]:
    out = [Finding(level, line) for line in lines[:_MAX_LINES]]
    if len(lines) > _MAX_LINES:
        out.append(Finding(level, f"... and {len(lines) - _MAX_LINES} more problems of this file"))
    return out


def _check_images(file: DataFile, dest: Path, expect: _Expect, decode: bool) -> list[Finding]:
    if not dest.is_dir():
        return [Finding("error", f"{dest}: must be a folder of images")]
    images = [p for p in dest.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES]
    out = [_count_check(file, "images", len(images), expect.images or file.count, dest)]
    if not decode:  # with --decode, the decoder names empty files among the others
        empty = [f"{p}: empty file (0 bytes)" for p in images if p.is_file() and p.stat().st_size == 0]
        out += _capped(empty, "error")
    return out


def _check_annotations(
    file: DataFile, dest: Path, expect: _Expect, img_dir: Path, decode: bool
) -> tuple[list[Finding], dict | None]:
    """Findings plus the annotation file's parsed content (None when it is malformed)."""
    out = [] if expect.synthetic else [f for f in (_checksum(file, dest),) if f is not None]
    data = load_json(dest)
    problems = annotation_problems(data, dest)
    if problems:
        return out + _capped(problems, "error"), None
    out.append(Finding("ok", f"{dest}: {len(data['images'])} images, {len(data['annotations'])} annotations"))
    if expect.images_written and img_dir.is_dir() and not decode:  # --decode names them with the others
        missing = [
            f"{img_dir / img['file_name']}: annotated image missing (listed in {dest})"
            for img in data["images"]
            if not (img_dir / img["file_name"]).is_file()
        ]
        out += _capped(missing, "error")
    return out, data


def _decode_images(img_dir: Path, annotations: dict | None, jobs: int | None) -> list[Finding]:
    """Decode the images the evaluation reads: the annotated ones, else (no usable annotation file)
    every image file in the folder. One error per image that does not decode."""
    from zoo.data.decode import decode_problems

    if annotations is not None:
        paths = [img_dir / img["file_name"] for img in annotations["images"]]
    else:
        paths = sorted(p for p in img_dir.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    bad = decode_problems(paths, jobs)
    out = [Finding("error", f"{path}: {why}") for path, why in bad]
    summary = f"{img_dir}: {len(paths) - len(bad)} of {len(paths)} images decode"
    out.append(Finding("note" if bad else "ok", summary + (f"; {len(bad)} do not (above)" if bad else "")))
    return out


def _check_detections(file: DataFile, dest: Path, expect: _Expect, image_ids: set | None) -> list[Finding]:
    out = [] if expect.synthetic else [f for f in (_checksum(file, dest),) if f is not None]
    data = load_json(dest)
    problems = detection_problems(data, dest, image_ids)
    if problems:
        return out + _capped(problems, "error")
    return [*out, _count_check(file, "detections", len(data), expect.detections or file.count, dest)]


def verify(
    dataset: Dataset,
    root: Path,
    *,
    expect_count: int | None = None,
    decode: bool = False,
    jobs: int | None = None,
) -> VerifyReport:
    """Check every file the evaluation of `dataset` reads under `root`. InputError if `root` is missing.

    Files are checked in registry order; the detection file's image ids are checked against the
    annotation file listed before it. `decode` also decodes every annotated image (`jobs` threads).
    """
    root = require_root(root)
    if expect_count is not None and expect_count < 1:
        raise InputError(f"--expect-count must be at least 1, got {expect_count}")
    out: list[Finding] = []
    expect = _expectations(root, expect_count, out)
    image_ids: set | None = None
    annotations: dict | None = None
    img_dir = root / dataset.layout.img_dir
    for file in dataset.files:
        dest = root / file.path
        if file.kind == "images" and not expect.images_written:
            continue
        if not dest.exists():
            out.append(
                Finding("error", f"{dest}: missing ({file.kind}; run `zoo data prepare {dataset.id}`)")
            )
        elif file.kind == "images":
            out += _check_images(file, dest, expect, decode)
        elif file.kind == "coco-wholebody-annotations":
            found, annotations = _check_annotations(file, dest, expect, img_dir, decode)
            image_ids = None if annotations is None else {img["id"] for img in annotations["images"]}
            out += found
        elif file.kind == "coco-detections":
            out += _check_detections(file, dest, expect, image_ids)
    if decode and expect.images_written and img_dir.is_dir():
        out += _decode_images(img_dir, annotations, jobs)
    return VerifyReport(dataset=dataset.id, root=root, findings=tuple(out))
