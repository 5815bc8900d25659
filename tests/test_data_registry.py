"""zoo.data registry, prepare and verify: the real registry loads, bad ones fail on one line naming
the field, archives extract safely, prepare downloads through the real fetch cache (a loopback
server standing in for images.cocodataset.org) and prints manual steps, verify finds each problem."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

from zoo.cli import main
from zoo.data import datasets_lock, extract_zip, load_registry, prepare, synthesize, verify
from zoo.data.paths import ANN_FILE, DET_FILE, IMG_DIR, SYNTH_MARKER
from zoo.errors import InputError, ZooError
from zoo.loopback import LoopbackServer

REPO = Path(__file__).resolve().parents[1]
COCO_ZIPS = "https://images.cocodataset.org/zips/"


@pytest.fixture(scope="module")
def registry():
    return load_registry(REPO / "manifests")


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory):
    return synthesize(tmp_path_factory.mktemp("synth") / "root", n_images=6, seed=1)


def _registry_copy(tmp_path: Path, edit) -> Path:  # noqa: ANN001 - edit: callable on the parsed YAML
    doc = yaml.safe_load((REPO / "manifests" / "datasets.yaml").read_text())
    edit(doc)
    folder = tmp_path / "manifests"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "datasets.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder


# -- registry ---------------------------------------------------------------------------------------------


def test_real_registry_ids_aliases_and_layout(registry) -> None:
    assert set(registry.datasets) == {"coco-wholebody-v1.0-val", "ubody2d-val"}
    coco = registry.get("coco-wholebody")
    assert coco is registry.get("coco-wholebody-v1.0-val")
    assert registry.get("ubody").id == registry.get("ubody2d").id == "ubody2d-val"
    images = next(f for f in coco.files if f.kind == "images")
    assert images.count == 5000 and images.source.url == "https://images.cocodataset.org/zips/val2017.zip"
    assert images.source.checksum.verified is False
    ann = next(f for f in coco.files if f.path == ANN_FILE)
    assert ann.source.kind == "manual" and ann.checksum.sha256.startswith("f8272e9c")
    with pytest.raises(InputError, match="did you mean 'coco-wholebody'"):
        registry.get("coco-wholebdy")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["datasets"]["ubody2d-val"].update(colour="red"),
            r"dataset 'ubody2d-val': colour: Extra inputs",
        ),
        (
            lambda d: d["datasets"]["coco-wholebody-v1.0-val"]["files"][1]["checksum"].update(sha256="abc"),
            r"dataset 'coco-wholebody-v1.0-val': files\.1\.checksum\.sha256: .*64 lowercase hex",
        ),
        (
            lambda d: d["datasets"]["ubody2d-val"]["layout"].update(img_dir="../images"),
            r"layout\.img_dir: .*'\.\.'",
        ),
        (
            lambda d: d["datasets"]["ubody2d-val"].update(aliases=["coco-wholebody"]),
            r"aliases: 'coco-wholebody' already names",
        ),
        (
            lambda d: d["datasets"]["ubody2d-val"]["layout"].update(ann_file="annotations/x.json"),
            r"layout\.ann_file: .* not one of its files",
        ),
        (
            lambda d: d["datasets"]["coco-wholebody-v1.0-val"]["files"][0]["source"].update(kind="ftp"),
            r"files\.0\.source",
        ),
        (lambda d: d.update(extra=1), r"top level must be exactly"),
    ],
)
def test_bad_registry_is_one_line_naming_file_dataset_field(tmp_path: Path, edit, message: str) -> None:  # noqa: ANN001
    folder = _registry_copy(tmp_path, edit)
    with pytest.raises(InputError, match=message) as err:
        load_registry(folder)
    assert str(err.value).startswith(str(folder / "datasets.yaml")) and "\n" not in str(err.value)


# -- safe extraction --------------------------------------------------------------------------------------


def _zip(path: Path, entries: list[tuple[str, bytes]], links: tuple[tuple[str, str], ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
        for name, target in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16  # S_IFLNK
            zf.writestr(info, target)
    return path


@pytest.mark.parametrize(
    ("entries", "links", "message"),
    [
        ([("/etc/evil", b"x"), ("val2017/a.jpg", b"1")], (), "path leaves the destination"),
        ([("val2017/../../evil", b"x")], (), "path leaves the destination"),
        ([("val2017/a.jpg", b"1")], (("val2017/up", "../../outside"),), "refusing link"),
        ([("val2017/a.jpg", b"1")], (("val2017/abs", "/etc/passwd"),), "refusing link"),
        ([("other/a.jpg", b"1")], (), "no files under val2017/"),
    ],
)
def test_extract_refuses_escapes_and_leaves_nothing(tmp_path: Path, entries, links, message: str) -> None:  # noqa: ANN001
    archive = _zip(tmp_path / "a.zip", entries, links)
    dest = tmp_path / "root" / "val2017"
    with pytest.raises(ZooError, match=message):
        extract_zip(archive, "val2017", dest)
    assert not dest.exists() and not (tmp_path / "evil").exists()
    assert not (tmp_path / "root").exists() or list((tmp_path / "root").iterdir()) == []


def test_extract_moves_member_into_place(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "a.zip", [("val2017/a.jpg", b"1"), ("val2017/sub/b.jpg", b"2"), ("README", b"r")],
                   (("val2017/link.jpg", "a.jpg"),))  # fmt: skip
    dest = tmp_path / "root" / "val2017"
    assert extract_zip(archive, "val2017", dest) == 3
    assert (dest / "sub" / "b.jpg").read_bytes() == b"2" and (dest / "link.jpg").read_bytes() == b"1"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["val2017"]  # no temp folder left
    with pytest.raises(ZooError, match="already exists"):
        extract_zip(archive, "val2017", dest)


# -- prepare ------------------------------------------------------------------------------------------------


@pytest.fixture
def coco_server(tmp_path: Path, synth, monkeypatch: pytest.MonkeyPatch):
    """images.cocodataset.org/zips/val2017.zip served from 127.0.0.1, holding the synthetic images."""
    with zipfile.ZipFile(tmp_path / "val2017.zip", "w") as zf:
        for p in sorted(synth.img_dir.iterdir()):
            zf.write(p, f"val2017/{p.name}")
    with LoopbackServer(tmp_path / "serve") as srv:
        srv.put("val2017.zip", (tmp_path / "val2017.zip").read_bytes())
        monkeypatch.setenv("ZOO_MIRROR", f"{COCO_ZIPS}={srv.base_url}")
        monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
        monkeypatch.delenv("ZOO_OFFLINE", raising=False)
        yield srv, hashlib.sha256((tmp_path / "val2017.zip").read_bytes()).hexdigest()


def test_prepare_downloads_then_picks_up_manual_files(
    tmp_path: Path, registry, synth, coco_server, capsys
) -> None:  # noqa: ANN001
    srv, digest = coco_server
    root = tmp_path / "coco"
    coco = registry.get("coco-wholebody")
    manifests = _registry_copy(tmp_path, lambda doc: None)
    lock = datasets_lock(manifests)
    result = prepare(coco, root, lock=lock)
    by_path = {s.path: s for s in result.steps}
    assert by_path[IMG_DIR].status == "fetched" and len(list((root / IMG_DIR).iterdir())) == 6
    warning = next(
        s for s in result.steps if s.status == "warning"
    )  # the third-party zip hash does not match
    assert "unverified third-party" in warning.detail
    manual = by_path[ANN_FILE]
    assert (
        manual.status == "manual" and manual.dest == root / ANN_FILE and manual.sha256.startswith("f8272e9c")
    )
    assert any("drive.google.com" in url for _, url in manual.links) and not result.complete
    assert len(srv.requests_for("val2017.zip")) == 1
    assert lock.read() == {COCO_ZIPS + "val2017.zip": digest}  # pinned on first use

    argv = ["data", "prepare", "coco-wholebody", "--root", str(root), "--manifests", str(manifests)]
    assert main(argv) == 1  # still manual steps
    out = capsys.readouterr()
    assert f"save as: {root / ANN_FILE}" in out.out and "need a manual step" in out.err
    assert len(srv.requests_for("val2017.zip")) == 1  # the folder was present: nothing fetched again

    for rel in (ANN_FILE, DET_FILE):  # the user drops the files in place
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(synth.root / rel, root / rel)
    result = prepare(coco, root, lock=lock)
    assert result.complete and {s.status for s in result.steps} == {"present", "warning"}
    assert main(argv) == 0


def test_prepare_with_verified_checksum(tmp_path: Path, coco_server) -> None:  # noqa: ANN001
    _, digest = coco_server

    def set_hash(value: str):  # noqa: ANN202
        def edit(doc: dict) -> None:
            ck = doc["datasets"]["coco-wholebody-v1.0-val"]["files"][0]["source"]["checksum"]
            ck.update(sha256=value, verified=True)

        return edit

    folder = _registry_copy(tmp_path / "good", set_hash(digest))
    good = load_registry(folder).get("coco-wholebody")
    result = prepare(good, tmp_path / "r1", lock=datasets_lock(folder))
    assert [s.status for s in result.steps if s.path == IMG_DIR] == ["fetched"]
    assert not any(s.status == "warning" for s in result.steps)
    folder = _registry_copy(tmp_path / "bad", set_hash("0" * 64))
    bad = load_registry(folder).get("coco-wholebody")
    shutil.rmtree(tmp_path / "cache")
    with pytest.raises(ZooError, match="sha256 mismatch"):
        prepare(bad, tmp_path / "r2", lock=datasets_lock(folder))
    assert not (tmp_path / "r2" / IMG_DIR).exists()


def test_prepare_offline_without_cache_skips_the_download(tmp_path: Path, registry, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    lock = datasets_lock(_registry_copy(tmp_path, lambda doc: None))
    result = prepare(registry.get("coco-wholebody"), tmp_path / "coco", lock=lock, offline=True)
    skipped = [s for s in result.steps if s.status == "skipped"]
    assert [s.path for s in skipped] == [IMG_DIR] and skipped[
        0
    ].dest == tmp_path / "cache" / "checkpoints" / "val2017.zip"
    assert [s.path for s in result.steps if s.status == "manual"] == [ANN_FILE, DET_FILE]
    assert not result.complete and not lock.path.exists()


# -- verify -------------------------------------------------------------------------------------------------


def _copy_root(src: Path, dst: Path, marker: bool = True) -> Path:
    shutil.copytree(src, dst)
    if not marker:
        (dst / SYNTH_MARKER).unlink()
    return dst


def test_verify_synthetic_root_ok_and_json(registry, synth, capsys) -> None:  # noqa: ANN001
    report = verify(registry.get("coco-wholebody"), synth.root)
    assert report.ok and any(f.level == "note" and "synthetic" in f.message for f in report.findings)
    assert main(["data", "verify", "coco-wholebody", "--root", str(synth.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_verify_reports_each_problem_on_one_line(tmp_path: Path, registry, synth, capsys) -> None:  # noqa: ANN001
    root = _copy_root(synth.root, tmp_path / "root")
    victim = sorted((root / IMG_DIR).iterdir())[0]
    victim.unlink()
    dets = json.loads((root / DET_FILE).read_text())
    dets[3]["bbox"] = [1, 2, 3]
    (root / DET_FILE).write_text(json.dumps(dets))
    assert main(["data", "verify", "coco-wholebody", "--root", str(root)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert any("5 images, expected 6" in e for e in errors)
    assert f"error: {victim}: annotated image missing (listed in {root / ANN_FILE})" in errors
    assert any("detection [3] field 'bbox'" in e for e in errors)
    assert len(errors) == 3
    assert main(["data", "verify", "coco-wholebody", "--root", str(tmp_path / "nope")]) == 2


def test_verify_real_mode_counts_and_checksums(tmp_path: Path, registry, synth) -> None:  # noqa: ANN001
    root = _copy_root(synth.root, tmp_path / "root", marker=False)
    report = verify(registry.get("coco-wholebody"), root)
    levels = {f.message.split(":")[0] + f.level: f for f in report.findings}
    assert f"{root / IMG_DIR}error" in levels  # 6 images, registry says 5000
    assert f"{root / ANN_FILE}warning" in levels  # third-party sha256: a warning only
    det = next(f for f in report.findings if str(root / DET_FILE) in f.message and "detections" in f.message)
    assert det.level == "warning" and "unconfirmed third-party" in det.message
    assert verify(registry.get("coco-wholebody"), root, expect_count=6).findings[0].level == "ok"


def test_verify_no_images_root(tmp_path: Path, registry) -> None:  # noqa: ANN001
    root = synthesize(tmp_path / "s", n_images=4, write_images=False).root
    report = verify(registry.get("coco-wholebody"), root)
    assert report.ok and any("--no-images" in f.message for f in report.findings)
    assert not os.path.exists(root / IMG_DIR)
