"""`zoo demo`: the offline pipeline passes its gate, a perturbed checkpoint fails it, and the expected
values are recorded data that a changed demo cannot be checked against."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from zoo.cli import main
from zoo.demo import (
    EXPECTED_FILE,
    MARKER,
    load_recorded,
    load_spec,
    recorded_values,
    run_demo,
    staged_output,
    write_recorded,
)
from zoo.errors import InputError
from zoo.manifest import METRICS
from zoo.results import load_records


@pytest.mark.slow
def test_demo_passes_and_perturbed_demo_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = load_spec()
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"gate: PASS ({len(spec.rows)} rows): {len(spec.rows)} PASS" in printed
    for name in (MARKER, "check.txt", "junit.xml", "coco-wholebody.md", "coco-wholebody-delta.png",
                 "coco-wholebody-speed.png", "manifests/coco-wholebody.yaml"):  # fmt: skip
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "results").iterdir()) == sorted(r.id for r in spec.rows)
    # the committed folder is self-consistent: `zoo check` on it gives the same verdict
    assert main(["check", "--results", str(out / "results"), "--manifests", str(out / "manifests")]) == 0
    capsys.readouterr()
    # checkpoints came through the real fetch path: OpenMMLab names with the sha256 prefix, served over HTTP
    demo_table = yaml.safe_load((out / "manifests" / "coco-wholebody.yaml").read_text())
    assert all(r["checkpoint"]["url"].startswith("http://127.0.0.1:") for r in demo_table["rows"])
    # what `zoo demo --record` would write from this run round-trips to values within the tolerance
    rerecorded = tmp_path / "demo_expected.yaml"
    write_recorded(recorded_values(spec, load_records(out / "results")), rerecorded)
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
    junit = ET.parse(perturbed / "junit.xml").getroot()
    assert junit.get("failures") == "1"
    recorded = load_recorded(spec)
    sha = yaml.safe_load((perturbed / "results" / spec.perturb.row / "result.json").read_text())[
        "checkpoint"
    ]["sha256"]
    assert sha != recorded.rows[spec.perturb.row].checkpoint_sha256  # a new checkpoint with its own hash


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


def test_record_and_perturb_exclude_each_other() -> None:
    with pytest.raises(InputError, match="exclude each other"):
        run_demo(Path("unused"), perturb=True, record=True)


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
