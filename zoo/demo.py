"""`zoo demo`: the whole pipeline offline, in a few minutes on a CPU, on data it makes itself.

What runs is the real path of a reproduction: a synthetic COCO-WholeBody data root
(`zoo.data.synthesize`), checkpoints of real architectures saved in OpenMMLab's layout and naming and
served from a loopback HTTP server (so download, sha256 check and weights-only loading are the real
ones), a manifest table generated from the real one, `run_rows` (mmpose inference, rescoring, OKS-NMS,
per-part metrics), the gate, the JUnit file and the report. Only the weights and the figures are
special: the weights draw the mean pose in every box (`zoo.demo_model`, which explains how) and the
figures stand close to one pose (zoo/demo.yaml), so every published metric gets a real, non-zero value.

The demo's expected values are data, recorded from a reference run with `zoo demo --record` into
`zoo/demo_expected.yaml`, together with a digest of `zoo/demo.yaml`, so they are never computed by the
run that checks them and a changed demo cannot be checked against stale values. `--perturb` shrinks
one convolution of one checkpoint (a new file with its own hash), and the gate must report FAIL.

The output folder (default runs/demo/, untracked) is built next to its destination and swapped in when
complete; it holds the generated manifests, the result records, `check.txt`, `junit.xml` and the
report. The bulky work (data, checkpoints, download cache) happens in a per-run folder under the
system temp dir whose lock the run holds; a run killed before it could clean up leaves it behind, and
the next run removes it (`clean_stale_work`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from zoo.errors import InputError, ZooError
from zoo.fileio import read_yaml
from zoo.manifest import METRICS, Metrics

SPEC_FILE = Path(__file__).resolve().with_name("demo.yaml")
EXPECTED_FILE = Path(__file__).resolve().with_name("demo_expected.yaml")
MARKER = ".zoo-demo"  # an output folder holding this file may be replaced by the next demo
# Untracked (/runs/ is git-ignored): a demo leaves the checkout as it was. The committed example under
# reports/demo/ is refreshed only on request: `zoo demo --out reports/demo`.
DEFAULT_OUT = Path("runs/demo")
DEFAULT_PERTURBED_OUT = Path("runs/demo-perturbed")
RECORD_DECIMALS = 4
WORK_LOCK = ".lock"  # held by the run that owns a work folder, for as long as it runs


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DemoRow(_Model):
    id: str
    seed: int = Field(ge=0)


class DataSpec(_Model):
    images: int = Field(ge=1)
    seed: int = Field(ge=0)
    synth: dict[str, float | int] = Field(default_factory=dict)  # zoo.data.SynthSpec fields to change

    @field_validator("synth")
    @classmethod
    def _known_fields(cls, value: dict[str, float | int]) -> dict[str, float | int]:
        from zoo.data import SynthSpec

        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(SynthSpec)})
        if unknown:
            raise ValueError(f"not a zoo.data.SynthSpec field: {', '.join(unknown)}")
        return value

    def synth_spec(self) -> Any:
        from zoo.data import SynthSpec

        return SynthSpec(**self.synth)


class RowOverrides(_Model):
    boxes: Literal["det", "gt"]
    use_area: bool


class DemoTolerance(_Model):
    abs: float = Field(ge=0.0, le=1.0)
    direction: Literal["both", "lower"]


class Perturbation(_Model):
    row: str
    parameter: str
    scale: float


class DemoSpec(_Model):
    """zoo/demo.yaml: which rows, data and weights the demo builds."""

    table: str
    title: str
    caption: str
    rows: list[DemoRow] = Field(min_length=3)
    eval_data: DataSpec
    train_data: DataSpec
    row_overrides: RowOverrides
    columns: list[dict[str, str]] = Field(min_length=1)  # the demo table's columns (manifest schema)
    tolerance: DemoTolerance
    perturb: Perturbation

    def digest(self) -> str:
        from zoo.results import canonical_digest

        return canonical_digest(self.model_dump(mode="json"))


class RecordedRow(_Model):
    checkpoint_sha256: str  # of the unperturbed checkpoint the values were recorded with
    expected: Metrics


class Recorded(_Model):
    """zoo/demo_expected.yaml: the reference run's metrics, per demo row."""

    spec_sha256: str
    recorded_with: dict[str, str]
    rows: dict[str, RecordedRow]


def _load_yaml_model(path: Path, model: type[BaseModel]) -> Any:
    data = read_yaml(path)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"])) or "(top level)"
        raise InputError(f"{path}: {where}: {err['msg']}") from None


def load_spec(path: Path = SPEC_FILE) -> DemoSpec:
    spec = _load_yaml_model(path, DemoSpec)
    ids = [r.id for r in spec.rows]
    if len(set(ids)) != len(ids):
        raise InputError(f"{path}: rows: duplicate row id")
    if spec.perturb.row not in ids:
        raise InputError(f"{path}: perturb.row: {spec.perturb.row!r} is not one of the demo rows")
    return spec


def load_recorded(spec: DemoSpec, path: Path = EXPECTED_FILE) -> Recorded:
    """The recorded expected values; InputError when missing or recorded for another demo spec."""
    if not path.exists():
        raise InputError(
            f"{path}: no recorded expected values; run `zoo demo --record` once and commit the file"
        )
    recorded = _load_yaml_model(path, Recorded)
    if recorded.spec_sha256 != spec.digest():
        raise InputError(
            f"{path}: spec_sha256 was recorded for another zoo/demo.yaml; re-record with `zoo demo --record` "
            "and review the diff"
        )
    missing = [r.id for r in spec.rows if r.id not in recorded.rows]
    if missing:
        raise InputError(f"{path}: rows: no recorded values for {', '.join(missing)}; re-record")
    return recorded


@dataclass
class DemoResult:
    """What one demo run produced; `exit_code` is the gate's."""

    out: Path | None  # None for --record (nothing but the expected file is written)
    lines: list[str]
    exit_code: int
    seconds: float
    reports: list[Path] = field(default_factory=list)


# -- building blocks ------------------------------------------------------------------------------------


def build_checkpoints(
    spec: DemoSpec, manifests: Any, eval_paths: Any, train_root: Path, served: Path, perturb: bool
) -> dict[str, Path]:
    """Save each demo row's mean-pose checkpoint under `served` (OpenMMLab naming); row id -> file."""
    import torch

    from zoo.data import dataset_paths, gt_boxes, load_registry
    from zoo.demo_model import mean_pose_state_dict
    from zoo.evaluate import load_config
    from zoo.randweights import save_checkpoint

    registry = load_registry(manifests.dir)
    files: dict[str, Path] = {}
    for demo_row in spec.rows:
        row = manifests.row(demo_row.id)
        if row.table != spec.table:
            raise InputError(f"{SPEC_FILE}: rows: {row.id} is not a row of table {spec.table}")
        train_paths = dataset_paths(registry.get(row.dataset), train_root)
        cfg = load_config(row, eval_paths, workers=0)
        train_cfg = load_config(row, train_paths, gt_boxes(train_paths.ann_file), workers=0)
        try:
            state = mean_pose_state_dict(cfg, train_cfg, seed=demo_row.seed)
        except ValueError as exc:  # an architecture the construction does not support
            raise InputError(f"{SPEC_FILE}: rows: {row.id}: {exc}") from None
        if perturb and row.id == spec.perturb.row:
            name = spec.perturb.parameter
            if name not in state:
                raise InputError(f"{SPEC_FILE}: perturb.parameter: {name!r} is not a parameter of {row.id}")
            state[name] = state[name] * torch.tensor(spec.perturb.scale, dtype=state[name].dtype)
        files[row.id] = save_checkpoint(state, served, row.id)
    return files


def write_demo_manifests(
    src: Path,
    dst: Path,
    spec: DemoSpec,
    recorded: Recorded | None,
    served: dict[str, tuple[str, Path]],
    data: Any,
) -> Path:
    """The demo table, generated from the real one: served checkpoints, the spec's box source, OKS
    area and tolerance, and the recorded expected values (the published ones while recording). Its
    dataset registry names the synthetic set's own annotation and detection files by checksum, so the
    gate holds the demo's records against the data they measured (`data`: its DataPaths)."""
    from zoo.fileio import sha256_file
    from zoo.randweights import local_manifests

    local_manifests(src, dst, served)
    registry_path = dst / "datasets.yaml"
    registry = yaml.safe_load(registry_path.read_text(encoding="utf-8"))
    table_dataset = yaml.safe_load((src / f"{spec.table}.yaml").read_text(encoding="utf-8"))["dataset"]
    dataset = registry["datasets"][table_dataset]
    made = {dataset["layout"]["ann_file"]: data.ann_file, dataset["layout"].get("det_file"): data.det_file}
    for entry in dataset["files"]:
        if entry["path"] in made and made[entry["path"]] is not None:
            entry["checksum"] = {
                "sha256": sha256_file(made[entry["path"]]), "verified": True,
                "origin": "zoo demo: the synthetic set it generated",
            }  # fmt: skip
            entry.pop("count", None)
            entry.pop("count_verified", None)
    registry_path.write_text(
        "# Generated by `zoo demo` from the real registry: the synthetic set's files and checksums.\n"
        + yaml.safe_dump(registry, sort_keys=False, width=200, allow_unicode=True), encoding="utf-8",
    )  # fmt: skip
    path = dst / f"{spec.table}.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["title"], doc["caption"], doc["columns"] = spec.title, spec.caption, spec.columns
    doc["defaults"]["tolerance"] = spec.tolerance.model_dump()
    for row in doc["rows"]:
        row.update(spec.row_overrides.model_dump())
        row.pop("tolerance", None)
        if recorded is not None:
            row["expected"] = recorded.rows[row["id"]].expected.model_dump(exclude_none=True)
        row["notes"] = [
            "Generated by `zoo demo` from the real row: same config and architecture, mean-pose weights, "
            "synthetic data; expected values from zoo/demo_expected.yaml."
        ]
    header = "# Generated by `zoo demo` (zoo/demo.py) from the real manifests; regenerated on every run.\n"
    path.write_text(
        header + yaml.safe_dump(doc, sort_keys=False, width=200, allow_unicode=True), encoding="utf-8"
    )
    return dst


def recorded_values(spec: DemoSpec, records: dict[str, Any]) -> Recorded:
    """The expected file's content from a reference run's records (all rows must have run)."""
    from zoo.env import collect_env

    rows: dict[str, RecordedRow] = {}
    for demo_row in spec.rows:
        record = records.get(demo_row.id)
        if record is None or record.status != "ok":
            why = "no record" if record is None else record.reason or record.status
            raise ZooError(f"demo row {demo_row.id} did not run ({why}); nothing recorded")
        parts: dict[str, dict[str, float]] = {}
        for key in METRICS:
            value = record.metric(key)
            if value is not None and 0.0 <= value <= 1.0:  # -1: the part has no ground truth; unpublished
                part, stat = key.split(".")
                parts.setdefault(part, {})[stat] = round(value, RECORD_DECIMALS)
        complete = {part: v for part, v in parts.items() if len(v) == 2}
        if "whole" not in complete:
            raise ZooError(f"demo row {demo_row.id}: no Whole AP/AR to record")
        rows[demo_row.id] = RecordedRow(
            checkpoint_sha256=record.checkpoint_sha256, expected=Metrics.model_validate(complete)
        )
    env = collect_env()
    packages = env.get("packages", {})
    with_ = {"python": str(env.get("python")), "platform": str(env.get("platform"))}
    with_.update(
        {name: str((packages.get(name) or {}).get("version")) for name in ("torch", "mmpose", "mmcv")}
    )
    return Recorded(spec_sha256=spec.digest(), recorded_with=with_, rows=rows)


def write_recorded(recorded: Recorded, path: Path = EXPECTED_FILE) -> None:
    from zoo.results import write_atomic

    header = (
        "# Expected values of the offline demo, recorded by `zoo demo --record` from a reference run.\n"
        "# Data, not code: never edited by hand and never computed by the run that checks them.\n"
        "# Re-record (and review the diff) only after a deliberate change of zoo/demo.yaml, zoo/demo_model.py\n"
        "# or the pinned stack; spec_sha256 ties the values to the zoo/demo.yaml they were recorded for.\n"
    )
    data = recorded.model_dump(mode="json", exclude_none=True)
    body = yaml.safe_dump(data, sort_keys=False, width=200, default_flow_style=None)
    write_atomic(path, (header + body).encode("utf-8"))


# -- the output folder ----------------------------------------------------------------------------------


@contextlib.contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """A fresh folder next to `out`, swapped into place when the block succeeds (removed otherwise).

    An existing `out` is replaced only if it is empty or an earlier demo's output (it has MARKER).
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise InputError(f"--out {out}: exists and is not a zoo demo output folder; choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.demo-"))
    try:
        (stage / MARKER).write_text("Written by `zoo demo`; the next run replaces this whole folder.\n")
        yield stage
        stage.chmod(0o755)  # mkdtemp makes it private; the report is meant to be shared
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / "previous")
        os.replace(stage, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# -- the work folder ------------------------------------------------------------------------------------


def work_root() -> Path:
    """The parent of every demo's work folder: one per user under the system temp dir ($TMPDIR)."""
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"zoo-demo-{user}"


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (a zombie counts). Only POSIX can ask cheaply; elsewhere every
    owner counts as alive and its folder stays."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale_work(root: Path | None = None) -> list[Path]:
    """Remove the work folders of demos that died without cleaning up (SIGKILL, out of memory); returns them.

    A folder is `<pid>-<random>`; it is stale only when that process is gone and nobody holds its
    lock. The lock, held for a run's whole life and released by the kernel when the process dies,
    protects a live run whose pid looks dead from here (another PID namespace sharing the temp dir);
    the pid check covers the instant between creating a folder and locking it. A reused pid only
    delays the cleanup to a later start.
    """
    from filelock import FileLock, Timeout

    root = work_root() if root is None else root
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for folder in sorted(root.iterdir()):
        pid = folder.name.split("-", 1)[0]
        if not folder.is_dir() or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        lock = FileLock(folder / WORK_LOCK, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            lock.release()
    return removed


@contextlib.contextmanager
def work_folder(root: Path | None = None) -> Iterator[Path]:
    """A fresh, locked work folder under `root` (default `work_root()`), removed when the block ends.

    Starting one first removes the stale folders of dead runs, so a killed demo costs disk space
    only until the next demo starts.
    """
    from filelock import FileLock

    root = work_root() if root is None else root
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    clean_stale_work(root)
    path = Path(tempfile.mkdtemp(dir=root, prefix=f"{os.getpid()}-"))
    lock = FileLock(path / WORK_LOCK)
    lock.acquire()
    try:
        yield path
    finally:
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            lock.release()


def _run_rows(manifests: Any, opts: Any) -> dict[str, dict[str, Any]]:
    """Every row; a failing row leaves an error record (the gate reports ERROR)."""
    from zoo.evaluate import run_rows
    from zoo.results import load_records

    run_rows(manifests.rows, manifests, opts, say=lambda text: None)
    return load_records(opts.out)


def run_demo(
    out: Path | None = None,
    *,
    perturb: bool = False,
    record: bool = False,
    manifests_src: Path | None = None,
    log: Any = None,
) -> DemoResult:
    """The demo end to end; see the module doc. `log(str)` receives progress lines (default: stderr)."""
    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    started = time.perf_counter()
    if record and perturb:
        raise InputError(
            "zoo demo: --record and --perturb exclude each other (record from the unperturbed run)"
        )
    spec = load_spec()
    recorded = None if record else load_recorded(spec)
    src = manifests_src or Path(__file__).resolve().parents[1] / "manifests"
    out = Path(out) if out is not None else (DEFAULT_PERTURBED_OUT if perturb else DEFAULT_OUT)

    with contextlib.ExitStack() as stack:
        work = stack.enter_context(work_folder())
        stage = work / "record" if record else stack.enter_context(staged_output(out))
        result = _pipeline(spec, recorded, src, work, stage, perturb, say)
        if record:
            recorded_now = recorded_values(spec, result.records)
            write_recorded(recorded_now)
            lines = [
                f"recorded {len(recorded_now.rows)} rows into {EXPECTED_FILE}; review the diff and commit it"
            ]
            return DemoResult(out=None, lines=lines, exit_code=0, seconds=time.perf_counter() - started)
        lines, code, reports = _gate_and_report(spec, recorded, result, stage, out, perturb)
    return DemoResult(
        out=out, lines=lines, exit_code=code, seconds=time.perf_counter() - started, reports=reports
    )


@dataclass
class _Run:
    manifests: Any  # the generated demo manifests
    records: dict[str, dict[str, Any]]


def _pipeline(
    spec: DemoSpec, recorded: Recorded | None, src: Path, work: Path, stage: Path, perturb: bool, say: Any
) -> _Run:
    """Data, checkpoints, served manifests and every row's run (module doc); records land in `stage`."""
    from zoo.data import dataset_paths, load_registry, synthesize
    from zoo.evaluate import RunOptions
    from zoo.loopback import LoopbackServer
    from zoo.manifest import load_manifests

    real = load_manifests(src)
    dataset = load_registry(src).get(real.table(spec.table).dataset)
    say(f"demo: synthetic data ({spec.eval_data.images} images to evaluate, {spec.train_data.images} to fit)")
    eval_root = synthesize(
        work / "data",
        n_images=spec.eval_data.images,
        seed=spec.eval_data.seed,
        spec=spec.eval_data.synth_spec(),
    ).root
    train_root = synthesize(
        work / "train",
        n_images=spec.train_data.images,
        seed=spec.train_data.seed,
        write_images=False,
        spec=spec.train_data.synth_spec(),
    ).root
    with LoopbackServer(work / "served") as server:
        say(
            f"demo: mean-pose checkpoints of {', '.join(r.id for r in spec.rows)}"
            + (" (one perturbed)" if perturb else "")
        )
        files = build_checkpoints(
            spec, real, dataset_paths(dataset, eval_root), train_root, server.root, perturb
        )
        served = {rid: (server.url(path.name), path) for rid, path in files.items()}
        manifests = load_manifests(
            write_demo_manifests(
                src, stage / "manifests", spec, recorded, served, dataset_paths(dataset, eval_root)
            )
        )
        say(f"demo: evaluating {len(manifests.rows)} rows (fetched from {server.base_url})")
        opts = RunOptions(
            data_root=eval_root,
            out=stage / "results",
            cache=work / "cache",
            workers=0,
            progress=False,
            offline=False,
            argv=["zoo", "demo", *(["--perturb"] if perturb else [])],
        )
        records = _run_rows(manifests, opts)
    return _Run(manifests=manifests, records=records)


def _gate_and_report(
    spec: DemoSpec, recorded: Recorded, result: _Run, stage: Path, out: Path, perturb: bool
) -> tuple[list[str], int, list[Path]]:
    from zoo.compare import compare, render_lines, render_summary
    from zoo.junit import write_junit
    from zoo.provenance import all_differences
    from zoo.report import write_report
    from zoo.results import write_atomic

    manifests, records = result.manifests, result.records
    differences = all_differences(manifests.rows, records, manifests)
    comparison = compare(manifests.rows, records, differences=differences)
    write_junit(stage / "junit.xml", comparison, records)
    reports = [
        out / p.relative_to(stage) for p in write_report(manifests, records, stage, differences=differences)
    ]
    lines = [*render_lines(comparison), render_summary(comparison)]
    write_atomic(stage / "check.txt", ("\n".join(lines) + "\n").encode("utf-8"))
    for row_id, record in records.items():
        sha = record.checkpoint_sha256
        want = recorded.rows[row_id].checkpoint_sha256
        if sha and sha != want and not (perturb and row_id == spec.perturb.row):
            lines.append(
                f"note: {row_id}: checkpoint {sha[:12]} differs from the recorded {want[:12]} "
                "(this machine computes the weights differently; the tolerance absorbs small shifts)"
            )
    lines.append(f"expected values: {EXPECTED_FILE} (re-record only on purpose: zoo demo --record)")
    lines += [f"report: {path}" for path in reports if path.suffix == ".md"]
    lines.append(f"junit: {out / 'junit.xml'}")
    return lines, 0 if comparison.passed else 1, reports
