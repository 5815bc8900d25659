"""Faults a new user met in `zoo data`, each driven through the command: unreadable images found by
`verify --decode`, downloads pinned to their first verified hash, `--offline` still listing the
manual steps, retries reported in our own words, and unusable arguments refused on one line."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest
from fault_helpers import closed_port, read_only, zoo

from zoo.cli import main
from zoo.data import synthesize
from zoo.data.paths import ANN_FILE, IMG_DIR
from zoo.fetch import Cache, ChecksumLock
from zoo.loopback import Fault, LoopbackServer

REPO = Path(__file__).resolve().parents[1]
VAL_URL = "https://images.cocodataset.org/zips/val2017.zip"


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory):
    return synthesize(tmp_path_factory.mktemp("synth") / "root", n_images=6, seed=2)


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    """A copy of the registry, so that prepare records datasets.lock there and not in the project."""
    folder = tmp_path / "manifests"
    folder.mkdir()
    shutil.copy(REPO / "manifests" / "datasets.yaml", folder / "datasets.yaml")
    return folder


def _zip_of(images: Path, out: Path) -> bytes:
    with zipfile.ZipFile(out, "w") as zf:
        for p in sorted(images.iterdir()):
            zf.write(p, f"val2017/{p.name}")
    return out.read_bytes()


@pytest.fixture
def coco(tmp_path: Path, synth):  # noqa: ANN001
    """images.cocodataset.org served from 127.0.0.1 (ZOO_MIRROR), holding a zip of the synthetic images."""
    with LoopbackServer(tmp_path / "serve") as srv:
        data = _zip_of(synth.img_dir, tmp_path / "val2017.zip")
        srv.put("val2017.zip", data)
        env = {
            "ZOO_MIRROR": f"https://images.cocodataset.org/zips/={srv.base_url}",
            "ZOO_CACHE": str(tmp_path / "cache"),
        }
        yield srv, env, hashlib.sha256(data).hexdigest()


def _prepare(root: Path, manifests: Path, env: dict[str, str], *extra: str):  # noqa: ANN202
    return zoo(
        "data",
        "prepare",
        "coco-wholebody",
        "--root",
        str(root),
        "--manifests",
        str(manifests),
        *extra,
        env=env,
    )


def _manual_blocks(stdout: str) -> list[str]:
    """The MANUAL entries and their indented lines (sources, destination, sha256, instructions)."""
    lines, keep = [], False
    for line in stdout.splitlines():
        if not line.startswith(" "):
            keep = line.startswith("MANUAL")
        if keep:
            lines.append(line)
    return lines


def _assert_own_lines(stderr: str) -> None:
    for line in stderr.splitlines():
        assert line.startswith("zoo: "), f"raw line on stderr: {line!r}"
    assert "urllib3" not in stderr and "WARNING" not in stderr and "Traceback" not in stderr


# -- verify --decode -------------------------------------------------------------------------------------------


def test_verify_decode_names_each_unreadable_image(tmp_path: Path, synth, capfd) -> None:  # noqa: ANN001
    root = shutil.copytree(synth.root, tmp_path / "root")
    images = sorted((root / IMG_DIR).iterdir())
    cut, gone, empty, text = images[:4]
    cut.write_bytes(cut.read_bytes()[:100])  # an interrupted copy
    gone.unlink()  # annotated, absent
    empty.write_bytes(b"")
    page = b"<html><body>Access denied</body></html>\n"
    text.write_bytes(page)  # an error page saved as .jpg
    argv = ["data", "verify", "coco-wholebody", "--root", str(root), "--expect-count", "5"]

    assert main([*argv, "--decode", "--jobs", "2"]) == 1
    out, err = capfd.readouterr()  # file-descriptor level: libjpeg/libpng messages would show here
    assert sorted(err.splitlines()) == sorted(
        [
            f"error: {cut}: JPEG data that cannot be decoded (100 bytes, no end-of-image marker: truncated)",
            f"error: {gone}: missing (listed in the annotation file, not on disk)",
            f"error: {empty}: empty file (0 bytes)",
            f"error: {text}: not an image: cannot be decoded ({len(page)} bytes starting with {page[:16]!r})",
        ]
    )  # in the annotation file's order
    assert f"{root / IMG_DIR}: 2 of 6 images decode; 4 do not (above)" in out and "FAILED" in out

    assert main(argv) == 1  # without --decode: listing and sizes only, still names the missing and empty ones
    out, err = capfd.readouterr()
    assert err.splitlines() == [
        f"error: {empty}: empty file (0 bytes)",
        f"error: {gone}: annotated image missing (listed in {root / ANN_FILE})",
    ]
    assert "images decode" not in out


def test_verify_decode_passes_a_good_root(synth, capsys) -> None:  # noqa: ANN001
    assert main(["data", "verify", "coco-wholebody", "--root", str(synth.root), "--decode"]) == 0
    assert f"ok: {synth.img_dir}: 6 of 6 images decode" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["verify", "coco-wholebody", "--expect-count", "-1"],
            "argument --expect-count: expected an integer >= 1, got -1",
        ),
        (
            ["verify", "coco-wholebody", "--decode", "--jobs", "0"],
            "argument --jobs: expected an integer >= 1, got 0",
        ),
        (["synth", "--out", "x", "--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
        (["synth", "--out", "x", "--images", "0"], "argument --images: expected an integer >= 1, got 0"),
        (
            ["synth", "--out", "x", "--fp-per-image", "-2"],
            "argument --fp-per-image: expected a number >= 0, got -2",
        ),
    ],
)
def test_bad_numbers_are_argument_errors(argv: list[str], message: str, capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit) as exit_:
        main(["data", *argv])
    assert exit_.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith(message)


def test_too_small_synthetic_images_are_one_line(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--max-side", "10"]) == 2
    assert capsys.readouterr().err == "zoo: error: --max-side must be at least 64, got 10\n"
    assert not (tmp_path / "s").exists()


# -- prepare ---------------------------------------------------------------------------------------------------


def test_offline_prepare_lists_the_manual_steps_and_the_skipped_download(
    tmp_path: Path, coco, manifests, synth
) -> None:  # noqa: ANN001
    srv, env, digest = coco
    offline = _prepare(tmp_path / "off", manifests, env, "--offline")
    assert offline.returncode == 1 and srv.requests == []
    online = _prepare(tmp_path / "on", manifests, env)
    assert online.returncode == 1, online.stderr
    manual = _manual_blocks(offline.stdout)
    assert manual == [
        line.replace(str(tmp_path / "on"), str(tmp_path / "off")) for line in _manual_blocks(online.stdout)
    ]
    assert sum(line.startswith("MANUAL") for line in manual) == 2
    assert any("sha256: f8272e9c" in line for line in manual)  # the annotation file's expected hash
    target = tmp_path / "cache" / "checkpoints" / "val2017.zip"
    assert (
        f"skipped  val2017: not downloaded (--offline): {VAL_URL}; put the archive at {target} or run without --offline"
        in offline.stdout.splitlines()
    )
    assert offline.stderr.splitlines()[-1] == (
        "zoo: error: coco-wholebody-v1.0-val: 2 file(s) need a manual step and 1 download(s) skipped because of "
        "--offline (above); rerun this command once they are in place"
    )
    _assert_own_lines(offline.stderr)

    # following the advice: the archive put at that path is checked, taken and pinned, still offline
    shutil.rmtree(tmp_path / "cache")
    target.parent.mkdir(parents=True)
    shutil.copy(tmp_path / "val2017.zip", target)
    again = _prepare(tmp_path / "off", manifests, env, "--offline")
    assert again.returncode == 1 and len(srv.requests_for("val2017.zip")) == 1  # the online run's only
    assert sorted(p.name for p in (tmp_path / "off" / IMG_DIR).iterdir()) == sorted(
        p.name for p in synth.img_dir.iterdir()
    )
    assert ChecksumLock(manifests / "datasets.lock").read() == {VAL_URL: digest}


def test_retries_are_reported_in_our_own_words(tmp_path: Path, coco, manifests) -> None:  # noqa: ANN001
    srv, env, _ = coco
    srv.set_fault("val2017.zip", Fault.error(503, times=2))
    res = _prepare(tmp_path / "coco", manifests, env)
    assert res.returncode == 1  # the two manual files are still missing
    _assert_own_lines(res.stderr)
    host = srv.base_url.removeprefix("http://").rstrip("/")
    retries = [line for line in res.stderr.splitlines() if "retrying" in line]
    assert len(retries) == 2 and all(line.startswith(f"zoo: {host}: HTTP 503; retrying") for line in retries)
    assert "will not be loaded" not in res.stderr + res.stdout
    assert [r.status for r in srv.requests_for("val2017.zip")] == [503, 503, 200]

    # a host that refuses: urllib3 would log "Retrying (Retry(total=...)) after connection broken by ..."
    port = closed_port()
    dead = {
        "ZOO_MIRROR": f"https://images.cocodataset.org/zips/=http://127.0.0.1:{port}/",
        "ZOO_CACHE": str(tmp_path / "empty-cache"),
        "ZOO_RETRIES": "1",
    }
    res = _prepare(tmp_path / "coco2", manifests, dead)
    assert res.returncode == 1
    _assert_own_lines(res.stderr)
    retry, error = res.stderr.splitlines()[-2:]
    assert retry.startswith(f"zoo: 127.0.0.1:{port}: connection refused") and "retrying" in retry
    assert error.startswith(f"zoo: error: cannot download {VAL_URL}: 127.0.0.1:{port}: connection refused")
    assert "ZOO_MIRROR='https://images.cocodataset.org/=https://MIRROR/'" in error


def test_archive_is_pinned_to_its_first_verified_download(tmp_path: Path, coco, manifests, synth) -> None:  # noqa: ANN001
    srv, env, digest = coco
    first = _prepare(tmp_path / "r1", manifests, env)
    assert first.returncode == 1 and (tmp_path / "r1" / IMG_DIR).is_dir()
    lock = manifests / "datasets.lock"
    assert ChecksumLock(lock).read() == {VAL_URL: digest}
    assert lock.read_text().startswith("# Full sha256 of each dataset archive")
    assert "differs from the unverified third-party value" in first.stdout  # third party: a warning only

    # the server now hands out other bytes: an error on one line, nothing extracted, nothing kept
    shutil.rmtree(tmp_path / "cache")
    _zip_of(synth.img_dir, tmp_path / "other.zip")
    with zipfile.ZipFile(tmp_path / "other.zip", "a") as zf:
        zf.writestr("val2017/extra.txt", "changed")
    srv.put("val2017.zip", (tmp_path / "other.zip").read_bytes())
    second = _prepare(tmp_path / "r2", manifests, env)
    assert second.returncode == 1
    got = hashlib.sha256((tmp_path / "other.zip").read_bytes()).hexdigest()
    assert second.stderr.splitlines()[-1] == (
        f"zoo: error: sha256 mismatch for {VAL_URL}: expected {digest} (from {lock}), got {got}; download deleted"
    )
    assert not (tmp_path / "r2" / IMG_DIR).exists()
    cache = Cache(tmp_path / "cache")
    assert list(cache.blobs.iterdir()) == [] and list(cache.partial.iterdir()) == []


def test_a_corrupt_first_download_is_not_trusted(tmp_path: Path, coco, manifests) -> None:  # noqa: ANN001
    srv, env, _ = coco
    data = bytearray((tmp_path / "val2017.zip").read_bytes())
    data[200] ^= 0xFF  # inside the first member's data: its CRC no longer matches
    srv.put("val2017.zip", bytes(data))
    res = _prepare(tmp_path / "coco", manifests, env)
    assert res.returncode == 1
    error = res.stderr.splitlines()[-1]
    assert error.startswith(
        f"zoo: error: download of {VAL_URL} rejected: zip member 'val2017/"
    ) and error.endswith("is corrupt (CRC mismatch); deleted")
    assert not (manifests / "datasets.lock").exists() and not (tmp_path / "coco" / IMG_DIR).exists()


def test_unusable_root_or_cache_is_refused_before_downloading(tmp_path: Path, coco, manifests) -> None:  # noqa: ANN001
    srv, env, _ = coco
    as_file = tmp_path / "root-file"
    as_file.write_text("x")
    res = _prepare(as_file, manifests, env)
    assert res.returncode == 2
    assert res.stderr == f"zoo: error: data root {as_file} is a file, not a folder; pass another --root DIR\n"
    with read_only(tmp_path / "ro-root") as ro:
        res = _prepare(ro, manifests, env)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1
    assert res.stderr.startswith(f"zoo: error: data root {ro} is not writable (")
    with read_only(tmp_path / "ro-cache") as ro:
        res = _prepare(tmp_path / "coco", manifests, {**env, "ZOO_CACHE": str(ro)})
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1
    assert res.stderr.startswith(f"zoo: error: cache {ro} is not writable (")
    assert srv.requests == [] and not (manifests / "datasets.lock").exists()


def test_unusable_verify_root_and_synth_output_are_one_line(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    as_file = tmp_path / "file"
    as_file.write_text("x")
    assert main(["data", "verify", "coco-wholebody", "--root", str(as_file)]) == 2
    assert (
        capsys.readouterr().err
        == f"zoo: error: data root {as_file} is a file, not a folder; pass another --root DIR\n"
    )
    assert main(["data", "synth", "--out", str(as_file), "--images", "1"]) == 2
    assert capsys.readouterr().err == f"zoo: error: --out {as_file}: is a file, not a folder\n"
    with read_only(tmp_path / "ro") as ro:
        assert main(["data", "synth", "--out", str(ro / "s"), "--images", "1"]) == 2
        err = capsys.readouterr().err
        assert (
            err.startswith(f"zoo: error: --out {ro / 's'}: cannot write there (")
            and len(err.splitlines()) == 1
        )
        assert list(ro.iterdir()) == []
