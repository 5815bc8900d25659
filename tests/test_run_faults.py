"""Faults of `zoo run`, `zoo reproduce`, `zoo check` and `zoo report`, driven through the CLI as a user
meets them: unwritable outputs and an empty offline cache are refused in seconds (exit 2, one line,
nothing written); an image that does not decode stops its row only (one line naming the file, an
ERROR record, the other rows go on, reproduce still gates and reports); two runs of one row wait for
each other; a record says which command and cache made it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_helpers import REPO, read_only, zoo

from zoo.data import DataPaths, dataset_paths, load_registry, synthesize

ROW, OTHER = "res50-256x192", "hrnet-w32-ubody2d-256x192"


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("zoo: error:")]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def test_unwritable_out_is_refused_before_any_work(local_zoo, synth_root: Path, tmp_path: Path) -> None:
    mdir = local_zoo(ROW)
    with read_only(tmp_path / "ro") as ro:
        started = time.monotonic()
        proc = zoo("run", ROW, "--manifests", str(mdir), "--data-root", str(synth_root), "--out", str(ro / "runs"),
                   "--cache", str(tmp_path / "cache"))  # fmt: skip
        assert proc.returncode == 2
        line = _one_error_line(proc.stderr)
        assert line.startswith(f"zoo: error: --out {ro / 'runs'}: cannot write there (")
        assert time.monotonic() - started < 60  # seconds, not the inference
        assert not (ro / "runs").exists()


def test_unwritable_junit_and_report_folder_are_exit_2(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    with read_only(tmp_path / "ro") as ro:
        proc = zoo("check", "--results", str(runs), "--junit", str(ro / "check.xml"), ROW)
        assert proc.returncode == 2
        assert _one_error_line(proc.stderr).startswith(
            f"zoo: error: --junit {ro / 'check.xml'}: cannot write"
        )
        proc = zoo("report", "--results", str(runs), "--out", str(ro / "reports"), ROW)
        assert proc.returncode == 2
        assert _one_error_line(proc.stderr).startswith(f"zoo: error: --out {ro / 'reports'}: cannot write")
        assert list(ro.iterdir()) == []


def test_offline_with_an_empty_cache(local_zoo, synth_root: Path, tmp_path: Path) -> None:
    """`zoo run` refuses in seconds naming the checkpoint; `zoo reproduce` writes ERROR rows, gates
    and reports (its README promise)."""
    mdir = local_zoo(ROW)
    env = {"ZOO_OFFLINE": "1", "ZOO_CACHE": str(tmp_path / "empty-cache")}
    proc = zoo("run", ROW, "--manifests", str(mdir), "--data-root", str(synth_root), "--out",
               str(tmp_path / "runs"), env=env)  # fmt: skip
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr)
    assert f"{ROW}: checkpoint http://127.0.0.1:" in line and "is not in the cache" in line
    assert not (tmp_path / "runs").exists()

    reports, junit = tmp_path / "reports", tmp_path / "junit.xml"
    proc = zoo("reproduce", ROW, "--manifests", str(mdir), "--data-root", str(synth_root), "--out",
               str(tmp_path / "runs"), "--report-dir", str(reports), "--junit", str(junit), env=env)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    record = json.loads((tmp_path / "runs" / ROW / "result.json").read_text())
    assert record["status"] == "error" and record["error"].startswith("checkpoint not available: checkpoint ")
    assert f"ERROR     {ROW}  run failed: checkpoint not available" in proc.stdout
    assert (reports / "coco-wholebody.md").is_file() and junit.is_file()


def _coco_and_ubody(base: Path, n_images: int) -> DataPaths:
    """A data root `base` holding coco/ (a synthetic set) and UBody/ (a copy of it, made before any
    test breaks an image of coco/); returns coco's paths."""
    registry = load_registry(REPO / "manifests")
    coco = dataset_paths(
        registry.get("coco-wholebody-v1.0-val"), synthesize(base / "coco", n_images=n_images, seed=0).root
    )
    ubody = dataset_paths(registry.get("ubody2d-val"), base / "UBody")
    ubody.ann_file.parent.mkdir(parents=True)
    shutil.copytree(coco.img_dir, ubody.img_dir)
    shutil.copyfile(coco.ann_file, ubody.ann_file)
    return coco


@pytest.fixture(scope="module")
def roots_with_a_broken_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A data root holding coco/ (its first image cut to 100 bytes) and UBody/ (the same set, whole);
    returns (the data root, the broken image)."""
    base = tmp_path_factory.mktemp("broken")
    coco = _coco_and_ubody(base, n_images=3)
    detections = json.loads(coco.det_file.read_text())
    images = {im["id"]: im["file_name"] for im in json.loads(coco.ann_file.read_text())["images"]}
    broken = coco.img_dir / images[detections[0]["image_id"]]  # an image the row's boxes need
    broken.write_bytes(broken.read_bytes()[:100])
    return base, broken


@pytest.mark.slow
def test_an_image_that_does_not_decode_stops_its_row_only(
    local_zoo, roots_with_a_broken_image: tuple[Path, Path], tmp_path: Path
) -> None:
    base, broken = roots_with_a_broken_image
    mdir = local_zoo(ROW, OTHER)
    runs = tmp_path / "runs"
    common = ["--manifests", str(mdir), "--data-root", str(base), "--out", str(runs), "--cache",
              str(tmp_path / "cache"), "--workers", "1", "--no-progress"]  # fmt: skip
    proc = zoo("run", ROW, OTHER, *common)
    assert proc.returncode == 1
    assert f"{ROW}: ERROR: {broken}: does not decode as an image (AssertionError)" in proc.stderr
    assert "Traceback" not in proc.stderr and "DataLoader worker" not in proc.stderr
    error = json.loads((runs / ROW / "result.json").read_text())
    assert (
        error["status"] == "error"
        and error["error"] == f"{broken}: does not decode as an image (AssertionError)"
    )
    assert json.loads((runs / OTHER / "result.json").read_text())["status"] == "ok"  # the other row went on
    # mmpose's own path (`--reference`, its per-box DataLoader) says the same in one line
    proc = zoo(
        "run", ROW, *[str(tmp_path / "reference") if a == str(runs) else a for a in common], "--reference"
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "DataLoader worker" not in proc.stderr
    assert f"{ROW}: ERROR: {broken}: does not decode as an image (" in proc.stderr, proc.stderr[-3000:]
    error = json.loads((tmp_path / "reference" / ROW / "result.json").read_text())
    assert error["status"] == "error" and error["error"].startswith(
        f"{broken}: does not decode as an image ("
    )

    reports = tmp_path / "reports"
    proc = zoo("reproduce", ROW, OTHER, *common, "--report-dir", str(reports))
    assert proc.returncode == 1
    gate = [line.split() for line in proc.stdout.splitlines() if line.startswith("ERROR")]
    assert gate[0][:5] == ["ERROR", ROW, "run", "failed:", f"{broken}:"], proc.stdout
    assert (reports / "coco-wholebody.md").is_file() and (reports / "ubody2d.md").is_file()


@pytest.mark.slow
def test_a_missing_image_is_found_before_any_work(local_zoo, tmp_path: Path) -> None:
    """An image the annotations name but the folder lacks: `zoo run` refuses in seconds with one line
    naming it and writes nothing; `zoo reproduce` skips that dataset's row and runs the other."""
    base = tmp_path / "data"
    coco = _coco_and_ubody(base, n_images=2)
    missing = sorted(coco.img_dir.iterdir())[0]
    missing.unlink()
    mdir = local_zoo(ROW, OTHER)
    runs = tmp_path / "runs"
    common = ["--manifests", str(mdir), "--data-root", str(base), "--out", str(runs), "--cache",
              str(tmp_path / "cache"), "--workers", "0", "--no-progress"]  # fmt: skip
    started = time.monotonic()
    proc = zoo("run", ROW, *common)
    assert proc.returncode == 2 and time.monotonic() - started < 60
    line = _one_error_line(proc.stderr)
    assert missing.name in line and ROW in line, line
    assert not runs.exists() or not any(runs.rglob("*.json*"))  # nothing written

    reports = tmp_path / "reports"
    proc = zoo("reproduce", ROW, OTHER, *common, "--report-dir", str(reports))
    gate = {line.split()[1]: line.split()[0] for line in proc.stdout.splitlines() if line.split()[:1] in (
        ["SKIPPED"], ["PASS"], ["FAIL"], ["ERROR"], ["STALE"], ["IMPROVED"])}  # fmt: skip
    assert gate[ROW] == "SKIPPED" and gate[OTHER] != "SKIPPED", proc.stdout
    assert json.loads((runs / OTHER / "result.json").read_text())["status"] == "ok"  # the other row ran
    assert (reports / "coco-wholebody.md").is_file() and (reports / "ubody2d.md").is_file()


@pytest.mark.slow
def test_a_second_run_of_the_same_row_waits_and_finds_it_done(
    local_zoo, synth_root: Path, tmp_path: Path
) -> None:
    mdir = local_zoo(ROW)
    runs = tmp_path / "runs"
    args = [sys.executable, "-m", "zoo", "run", ROW, "--manifests", str(mdir), "--data-root", str(synth_root),
            "--out", str(runs), "--cache", str(tmp_path / "cache"), "--workers", "0", "--no-progress"]  # fmt: skip
    first = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (runs / ROW / ".lock.owner").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
        time.sleep(0.05)
    second = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    first_out, first_err = first.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, (first_err[-2000:], second.stderr[-2000:])
    # the start line (row, device, boxes, batch, what it runs, when to expect it) and the summary table
    assert re.search(rf"^{ROW}: \d+ boxes on cpu, batch 32, flip test, det boxes, expected time shown once it runs$",
                     first_err, re.M), first_err[-2000:]  # fmt: skip
    header, _, line = first_out.strip().splitlines()[-3:]
    assert header.split() == ["row", "status", "Whole", "AP", "measured", "Δ", "Whole", "AR", "measured", "Δ",
                              "min", "record"]  # fmt: skip
    assert line.split()[:2] == [ROW, "FAIL"] and line.split()[-1] == str(
        runs / ROW / "result.json"
    )  # random weights
    assert f"{ROW}: {runs / ROW} is being written by pid {first.pid} on " in second.stderr
    assert "waiting for it" in second.stderr
    assert "boxes on cpu" in first_err and "boxes on cpu" not in second.stderr  # the second ran nothing
    record = json.loads((runs / ROW / "result.json").read_text())
    assert record["command"][:2] == ["zoo", "run"] and record["environment"]["dirs"]["cache"] == str(
        tmp_path / "cache"
    )
    again = subprocess.run([*args, "--force"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and re.search(
        rf"^{ROW}: .* expected ~\d+s \(its last run here\)$", again.stderr, re.M
    )


def test_the_record_names_the_command_it_was_given(local_zoo, synth_root: Path, tmp_path: Path) -> None:
    """`main(argv)` records argv, not the test runner's own command line."""
    from zoo.cli import main

    mdir = local_zoo(ROW)
    argv = ["run", ROW, "--manifests", str(mdir), "--data-root", str(synth_root), "--out", str(tmp_path / "runs"),
            "--cache", str(tmp_path / "cache"), "--workers", "0", "--no-progress", "--subset", "1"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((tmp_path / "runs" / ROW / "result.json").read_text())
    assert record["command"] == ["zoo", *argv]


def test_a_cpu_run_under_torchrun_never_starts_nccl(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--device cpu` under torchrun on a GPU host joins the processes with gloo (NCCL would claim the
    GPUs); a CUDA run goes through mmengine's launcher with NCCL. The host's GPUs are simulated: no
    process group is really started (the two-process run itself is tested in test_evaluate)."""
    import mmengine.dist
    import torch

    from zoo.evaluate import distributed

    calls: list[tuple[str, str]] = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.distributed, "init_process_group", lambda backend, **_: calls.append(("torch", backend))
    )
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda *_, **__: None)
    monkeypatch.setattr(
        mmengine.dist, "init_dist", lambda launcher, backend, **_: calls.append((launcher, backend))
    )
    monkeypatch.setattr(mmengine.dist, "get_dist_info", lambda: (1, 2))
    with distributed("auto", "cpu") as ranks:
        assert ranks == (1, 2)
    with distributed("auto", "cuda:0"):
        pass
    assert calls == [("torch", "gloo"), ("pytorch", "nccl")]


def test_without_a_bar_progress_is_still_logged(caplog: pytest.LogCaptureFixture) -> None:
    """`--no-progress` (or no terminal) drops the bar, not the news: a line every `every` seconds
    with boxes done, pace and time left (30 s in a run; 0 here, so every update logs)."""
    import logging

    from zoo.inference import Progress

    caplog.set_level(logging.INFO, logger="zoo.inference")
    progress = Progress(100, "res50-256x192", bar=True, every=0.0)  # no terminal here: no bar either
    progress.update(40)
    progress.close()
    assert re.fullmatch(r"res50-256x192: 40/100 boxes \(\d+ boxes/s, \d+s left\)", caplog.messages[-1])
