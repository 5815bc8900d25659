"""`zoo demo`: the offline pipeline passes its gate with real, non-zero numbers in every published column,
a perturbed checkpoint fails it on Whole AP, the expected values are recorded data that a changed demo
cannot be checked against, the checkout is left alone, and a killed demo's work folder is cleaned up."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from zoo.cli import main
from zoo.demo import (
    DEFAULT_OUT,
    DEFAULT_PERTURBED_OUT,
    EXPECTED_FILE,
    MARKER,
    WORK_LOCK,
    clean_stale_work,
    load_recorded,
    load_spec,
    recorded_values,
    run_demo,
    staged_output,
    work_folder,
    work_root,
    write_recorded,
)
from zoo.errors import InputError
from zoo.manifest import METRICS
from zoo.results import load_records

ROOT = Path(__file__).resolve().parents[1]
CLEARLY_NON_ZERO = 0.05  # every published metric of every demo row is at least this


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)


def _checkout_state() -> str | None:
    """`git status` of the project checkout (tracked and untracked, ignored files excluded), None without git."""
    if shutil.which("git") is None or _git("rev-parse", "--is-inside-work-tree").returncode != 0:
        return None
    return _git("status", "--porcelain").stdout


@pytest.mark.slow
def test_demo_passes_with_real_numbers_and_perturbed_demo_fails_on_whole_ap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = load_spec()
    before = _checkout_state()
    # as a user runs it (python -m nox -s demo = zoo demo), here from another folder: default output
    done = subprocess.run(
        [sys.executable, "-m", "zoo", "demo"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert f"gate: PASS ({len(spec.rows)} rows): {len(spec.rows)} PASS" in done.stdout
    out = tmp_path / DEFAULT_OUT
    assert _checkout_state() == before  # nothing in the checkout changed, not even an untracked file
    for name in (MARKER, "check.txt", "junit.xml", "coco-wholebody.md", "coco-wholebody-delta.png",
                 "coco-wholebody-speed.png", "coco-wholebody-keypoints.png", "manifests/coco-wholebody.yaml"):  # fmt: skip
        assert (out / name).is_file(), name
    records = load_records(out / "results")
    assert sorted(records) == sorted(r.id for r in spec.rows)
    for row_id, record in records.items():
        for key in METRICS:
            value = record.metric(key)
            assert value is not None and value >= CLEARLY_NON_ZERO, (row_id, key, value)
    # the report shows every published column, with those numbers
    table = [line for line in (out / "coco-wholebody.md").read_text().splitlines() if "256x192" in line]
    header = next(line for line in (out / "coco-wholebody.md").read_text().splitlines() if "Whole AP" in line)
    assert all(f"{part.title()} {stat.upper()}" in header for part, stat in (k.split(".") for k in METRICS))
    for line in table[: len(spec.rows)]:
        cells = [c.strip() for c in line.strip("|").split("|")][2 : 2 + len(METRICS)]
        assert all(float(c) >= CLEARLY_NON_ZERO for c in cells), line
    # the output folder is self-consistent: `zoo check` on it gives the same verdict
    assert main(["check", "--results", str(out / "results"), "--manifests", str(out / "manifests")]) == 0
    capsys.readouterr()
    # checkpoints came through the real fetch path: OpenMMLab names with the sha256 prefix, served over HTTP
    demo_table = yaml.safe_load((out / "manifests" / "coco-wholebody.yaml").read_text())
    assert all(r["checkpoint"]["url"].startswith("http://127.0.0.1:") for r in demo_table["rows"])
    assert all(r["boxes"] == spec.row_overrides.boxes for r in demo_table["rows"])
    # what `zoo demo --record` would write from this run round-trips to values within the tolerance
    rerecorded = tmp_path / "demo_expected.yaml"
    write_recorded(recorded_values(spec, records), rerecorded)
    again, committed = load_recorded(spec, rerecorded), load_recorded(spec)
    for row in spec.rows:
        for key in METRICS:
            want, got = committed.rows[row.id].expected.get(key), again.rows[row.id].expected.get(key)
            assert (want is None) == (got is None) and (want is None or abs(got - want) <= spec.tolerance.abs)

    perturbed = tmp_path / "perturbed"
    assert main(["demo", "--perturb", "--out", str(perturbed)]) == 1
    printed = capsys.readouterr().out
    failing = [line for line in printed.splitlines() if line.startswith("FAIL ")]
    assert len(failing) == 1 and failing[0].split()[1] == spec.perturb.row
    assert "gate: FAIL (1 of 3 rows fail)" in printed
    # it fails on Whole AP, by clearly more than the tolerance (and on every other part it moves)
    record = load_records(perturbed / "results")[spec.perturb.row]
    want = committed.rows[spec.perturb.row].expected
    drop = want.get("whole.ap") - record.metric("whole.ap")
    assert "whole.ap" in failing[0] and drop > 5 * spec.tolerance.abs, (drop, failing[0])
    moved = [k for k in METRICS if abs(record.metric(k) - want.get(k)) > spec.tolerance.abs]
    assert all(k in failing[0] for k in moved)
    junit = ET.parse(perturbed / "junit.xml").getroot()
    assert junit.get("failures") == "1"
    sha = yaml.safe_load((perturbed / "results" / spec.perturb.row / "result.json").read_text())[
        "checkpoint"
    ]["sha256"]
    assert sha != committed.rows[spec.perturb.row].checkpoint_sha256  # a new checkpoint with its own hash


def test_recorded_values_are_real_numbers_in_every_published_column() -> None:
    spec = load_spec()
    published = [c["value"] for c in spec.columns if "." in c["value"]]
    assert sorted(published) == sorted(METRICS)  # the demo table shows every metric the real tables publish
    recorded = load_recorded(spec)
    for row in spec.rows:
        for key in METRICS:
            value = recorded.rows[row.id].expected.get(key)
            assert value is not None and value >= CLEARLY_NON_ZERO, (row.id, key, value)


def test_recorded_values_belong_to_the_spec(tmp_path: Path) -> None:
    spec = load_spec()
    recorded = load_recorded(spec)
    assert set(recorded.rows) == {r.id for r in spec.rows}
    changed = spec.model_copy(update={"tolerance": spec.tolerance.model_copy(update={"abs": 0.5})})
    with pytest.raises(InputError, match="re-record with `zoo demo --record`"):
        load_recorded(changed)
    with pytest.raises(InputError, match="no recorded expected values"):
        load_recorded(spec, tmp_path / "absent.yaml")
    bad = tmp_path / "demo_expected.yaml"
    bad.write_text(EXPECTED_FILE.read_text().replace("whole:", "hole:", 1))
    with pytest.raises(InputError, match=r"demo_expected.yaml: rows\..*hole"):
        load_recorded(spec, bad)


def test_synthetic_data_options_are_checked(tmp_path: Path) -> None:
    spec_file = tmp_path / "demo.yaml"
    doc = yaml.safe_load((ROOT / "zoo" / "demo.yaml").read_text())
    doc["eval_data"]["synth"]["pose_spread"] = 0.1
    spec_file.write_text(yaml.safe_dump(doc))
    with pytest.raises(
        InputError, match=r"demo.yaml: eval_data.synth: .*not a zoo.data.SynthSpec field: pose_spread"
    ):
        load_spec(spec_file)


def test_record_and_perturb_exclude_each_other() -> None:
    with pytest.raises(InputError, match="exclude each other"):
        run_demo(Path("unused"), perturb=True, record=True)


def test_default_output_is_not_tracked() -> None:
    if _checkout_state() is None:
        pytest.skip("not a git checkout")
    for out in (DEFAULT_OUT, DEFAULT_PERTURBED_OUT):
        assert not out.is_absolute()
        assert _git("check-ignore", "-q", str(out / "check.txt")).returncode == 0, out  # ignored
        assert _git("ls-files", str(out)).stdout == "", out  # and nothing tracked there


def test_output_folder_is_swapped_in_whole_and_only_over_a_demo(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with staged_output(out) as stage:
        (stage / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first" and (out / MARKER).is_file()
    with pytest.raises(RuntimeError), staged_output(out) as stage:
        (stage / "b.txt").write_text("half")
        raise RuntimeError("the run died")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "a.txt"]  # the previous output is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind
    with staged_output(out) as stage:
        (stage / "c.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "c.txt"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.md").write_text("keep me")
    with pytest.raises(InputError, match="not a zoo demo output folder"), staged_output(other):
        pass
    assert (other / "notes.md").read_text() == "keep me"


def test_work_folder_is_removed_when_the_run_ends(tmp_path: Path) -> None:
    with work_folder(tmp_path) as work:
        (work / "data").mkdir()
        assert (work / WORK_LOCK).exists() and work.parent == tmp_path
    assert not work.exists()
    with pytest.raises(RuntimeError), work_folder(tmp_path) as work:
        raise RuntimeError("the run failed")
    assert not work.exists()
    assert list(tmp_path.iterdir()) == []


def _wait_for_work_folder(root: Path, demo: subprocess.Popen) -> Path:
    """The demo's work folder once it exists and is locked (the demo is then busy in it)."""
    for _ in range(1200):
        found = [p for p in root.glob(f"{demo.pid}-*") if (p / WORK_LOCK).exists()] if root.is_dir() else []
        if found:
            return found[0]
        assert demo.poll() is None, "the demo ended before creating its work folder"
        time.sleep(0.1)
    raise AssertionError(f"no work folder of pid {demo.pid} under {root}")


HOLD = """
import sys, time
from zoo.demo import work_folder
with work_folder() as work:
    print(work, flush=True)
    time.sleep(600)
"""


def test_a_killed_demo_leaves_no_work_folder_behind(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    root = temp / work_root().name
    demo = subprocess.Popen(
        [sys.executable, "-m", "zoo", "demo", "--out", str(tmp_path / "out")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        dead = _wait_for_work_folder(root, demo)
    finally:
        demo.kill()  # SIGKILL: no cleanup runs
        demo.wait()
    assert dead.is_dir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD], env=env, stdout=subprocess.PIPE, text=True)
    try:
        live = Path(holder.stdout.readline().strip())
        assert live.parent == root and live.is_dir()
        assert not dead.exists()  # the next start removed the dead run's folder
        assert clean_stale_work(root) == [] and live.is_dir()  # and a live run's folder stays
    finally:
        holder.kill()
        holder.wait()
    assert clean_stale_work(root) == [live] and not live.exists()
