"""zoo.fetch against a real HTTP server on 127.0.0.1 that misbehaves on purpose (zoo.loopback).

Every test that touches a cache ends by re-hashing it (`cache` fixture teardown): nothing that did
not match its hash may be in the verified store or behind a human-readable name.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from fault_helpers import closed_port, read_only, silent_server, zoo

from zoo import fetch as f
from zoo.cli import main
from zoo.errors import InputError, ZooError
from zoo.loopback import Fault, LoopbackServer

REPO = Path(__file__).resolve().parents[1]
SIZE = 300_000
FAST = f.FetchConfig(
    connect_timeout=2.0,
    read_timeout=0.5,
    retries=2,
    backoff=0.01,
    backoff_max=0.05,
    resumes=2,
    chunk_size=8192,
    lock_timeout=10.0,
)


class Evil:
    """A class no checkpoint allow-list should ever accept."""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("ZOO_OFFLINE", "ZOO_MIRROR", "ZOO_CACHE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server(tmp_path: Path):
    with LoopbackServer(tmp_path / "srv") as srv:
        yield srv


@pytest.fixture
def cache(tmp_path: Path):
    c = f.Cache(tmp_path / "cache")
    yield c
    assert_cache_verified(c)


def assert_cache_verified(cache: f.Cache) -> None:
    """Every blob is named by its sha256, every name is a blob's content, nothing else lies there."""
    blobs = sorted(p for p in cache.blobs.rglob("*") if p.is_file()) if cache.blobs.exists() else []
    for blob in blobs:
        assert f.sha256_file(blob) == blob.name, f"unverified content in the blob store: {blob}"
    names = sorted(p for p in cache.names.rglob("*") if p.is_file()) if cache.names.exists() else []
    for name in names:
        assert cache.blob_path(f.sha256_file(name)).is_file(), f"{name} is not verified content"
        assert not name.name.startswith("."), f"temp file left behind: {name}"


def publish(srv: LoopbackServer, data: bytes | None = None, stem: str = "model", seed: int = 0):
    """Serve `data` (default: SIZE pseudo-random bytes) under an OpenMMLab-style name with its hash."""
    if data is None:
        data = np.random.default_rng(seed).bytes(SIZE)
    sha = hashlib.sha256(data).hexdigest()
    name = f"{stem}-{sha[:8]}_20200918.pth"
    srv.put(name, data)
    return name, data, sha


def get(srv: LoopbackServer, name: str, cache: f.Cache, config: f.FetchConfig = FAST, **kw) -> f.FetchedFile:
    url = kw.pop("url", None) or srv.url(name)
    expected = kw.pop("expected", None) or f.resolve_expected(url)
    return f.fetch(url, expected, cache=cache, config=config, offline=kw.pop("offline", False), **kw)


def partial_files(cache: f.Cache) -> list[Path]:
    return sorted(cache.partial.glob("*")) if cache.partial.exists() else []


# -- the happy path and the store ----------------------------------------------------------------------------


def test_success_then_cache_hit(server, cache):
    name, data, sha = publish(server)
    got = get(server, name, cache)
    assert got.verified and got.sha256 == sha
    assert got.path == cache.root / "checkpoints" / name
    assert got.path.read_bytes() == data
    assert os.path.samefile(got.path, cache.blob_path(sha))  # a hard link, not a second copy
    assert (cache.root / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    assert cache.lookup(server.url(name)) == sha
    again = get(server, name, cache)
    assert again == got
    assert len(server.requests_for(name)) == 1  # the second call never touched the network
    assert partial_files(cache) == []


def test_same_content_under_two_urls_is_stored_once(server, cache):
    data = np.random.default_rng(1).bytes(SIZE)
    sha = hashlib.sha256(data).hexdigest()
    a, b = f"a-{sha[:8]}_20200101.pth", f"b-{sha[:8]}_20200101.pth"
    server.put(a, data)
    server.put(b, data)
    got_a, got_b = get(server, a, cache), get(server, b, cache)
    assert [p.name for p in cache.blobs.iterdir()] == [sha]
    assert os.path.samefile(got_a.path, got_b.path)


# -- interrupted and odd transfers ---------------------------------------------------------------------------


def test_dropped_connection_resumes_and_reuses_bytes(server, cache):
    name, data, sha = publish(server)
    server.set_fault(name, Fault.drop(after_bytes=100_000))
    got = get(server, name, cache)
    assert got.path.read_bytes() == data
    first, second = server.requests_for(name)
    assert first.range is None and first.body_bytes == 100_000
    kept = int(second.range.removeprefix("bytes=").removesuffix("-"))
    assert 0 < kept <= 100_000
    assert second.status == 206 and second.body_bytes == SIZE - kept  # only the rest was sent
    assert partial_files(cache) == []


def test_partial_file_is_resumed_by_a_later_call(server, cache):
    name, data, sha = publish(server)
    server.set_fault(name, Fault.drop(after_bytes=150_000))
    with pytest.raises(ZooError, match="bytes kept for the next try"):
        get(server, name, cache, config=dataclasses.replace(FAST, resumes=0))
    part = next(p for p in partial_files(cache) if p.suffix == ".part")
    kept = part.stat().st_size
    assert kept > 0 and not cache.blobs.joinpath(sha).exists()
    got = get(server, name, cache)  # a new call re-hashes the kept bytes, then asks for the rest
    assert got.sha256 == sha
    second = server.requests_for(name)[1]
    assert second.range == f"bytes={kept}-" and second.body_bytes == SIZE - kept
    assert second.headers.get("if-range")  # the validator guards against splicing two versions


def test_server_without_range_support_restarts_cleanly(server, cache):
    name, data, sha = publish(server)
    server.set_fault(name, Fault.drop(after_bytes=100_000), Fault.no_range())
    got = get(server, name, cache)
    assert got.path.read_bytes() == data
    second = server.requests_for(name)[1]
    assert second.range is not None and second.status == 200 and second.body_bytes == SIZE


def test_file_changed_on_server_between_attempts_restarts(server, cache):
    old = np.random.default_rng(2).bytes(SIZE)
    new = np.random.default_rng(3).bytes(SIZE + 1000)
    server.put("w.pth", old)
    server.set_fault("w.pth", Fault.drop(after_bytes=100_000))
    new_sha = hashlib.sha256(new).hexdigest()
    expected = f.Expected(prefix=new_sha[:8], sha256=new_sha, source="test")
    with pytest.raises(ZooError):
        get(server, "w.pth", cache, expected=expected, config=dataclasses.replace(FAST, resumes=0))
    server.put("w.pth", new)  # new ETag: If-Range makes the server send the whole new file
    got = get(server, "w.pth", cache, expected=expected)
    assert got.path.read_bytes() == new
    second = server.requests_for("w.pth")[1]
    assert second.headers.get("if-range") and second.status == 200 and second.body_bytes == len(new)


def test_404_is_not_retried(server, cache):
    name, _, _ = publish(server)
    server.set_fault(name, Fault.error(404))
    with pytest.raises(ZooError, match=r"HTTP 404 Not Found$"):
        get(server, name, cache)
    assert len(server.requests_for(name)) == 1
    assert partial_files(cache) == []


@pytest.mark.parametrize(("status", "retry_after"), [(500, None), (503, "0"), (429, "0")])
def test_transient_errors_are_retried(server, cache, status, retry_after):
    name, data, _ = publish(server)
    server.set_fault(name, Fault.error(status, times=2, retry_after=retry_after))
    got = get(server, name, cache)
    assert got.path.read_bytes() == data
    assert [r.status for r in server.requests_for(name)] == [status, status, 200]


def test_persistent_500_gives_up_after_the_retries(server, cache):
    name, _, _ = publish(server)
    server.set_fault(name, Fault.error(500))
    with pytest.raises(ZooError, match=r"HTTP 500 .* after 2 retries"):
        get(server, name, cache)
    assert len(server.requests_for(name)) == 3


def test_416_on_a_complete_partial_file_verifies_it_without_downloading(server, cache):
    name, data, sha = publish(server)
    url = server.url(name)
    cache.prepare()
    part, meta = cache.partial_paths(url)  # as left by a process killed just before the rename
    part.write_bytes(data)
    meta.write_text(json.dumps({"url": url, "total": SIZE}))
    got = get(server, name, cache)
    assert got.sha256 == sha
    (only,) = server.requests_for(name)
    assert only.status == 416 and only.range == f"bytes={SIZE}-" and only.body_bytes == 0


def test_416_on_an_overlong_partial_file_starts_over(server, cache):
    name, data, sha = publish(server)
    url = server.url(name)
    cache.prepare()
    part, meta = cache.partial_paths(url)
    part.write_bytes(data + b"junk")
    meta.write_text(json.dumps({"url": url}))
    got = get(server, name, cache)
    assert got.path.read_bytes() == data
    assert [r.status for r in server.requests_for(name)] == [416, 200]


def test_missing_content_length(server, cache):
    name, data, _ = publish(server)
    server.set_fault(name, Fault.no_content_length())
    assert get(server, name, cache).path.read_bytes() == data
    assert [r.fault for r in server.requests_for(name)] == ["no_content_length"]


def test_content_length_shorter_than_body_is_a_mismatch_and_deleted(server, cache):
    name, _, sha = publish(server)
    server.set_fault(name, Fault.short_content_length(10))
    with pytest.raises(ZooError, match=f"sha256 mismatch .*expected {sha[:8]}.*download deleted"):
        get(server, name, cache)
    assert partial_files(cache) == [] and list(cache.blobs.iterdir()) == []


def test_stalled_server_times_out_then_resumes(server, cache):
    name, data, _ = publish(server)
    server.set_fault(name, Fault.stall(10, after_bytes=50_000))
    got = get(server, name, cache)
    assert got.path.read_bytes() == data
    stalled, resumed = server.requests_for(name)
    assert stalled.fault == "stall" and stalled.range is None
    kept = int(resumed.range.removeprefix("bytes=").removesuffix("-"))
    assert 0 < kept <= 50_000 and resumed.status == 206 and resumed.body_bytes == SIZE - kept


def test_stalled_server_fails_with_a_timeout(server, cache):
    name, _, _ = publish(server)
    server.set_fault(name, Fault.stall(10, after_bytes=50_000, times=None))
    with pytest.raises(ZooError, match="read timed out"):
        get(server, name, cache, config=dataclasses.replace(FAST, resumes=1))
    assert list(cache.blobs.iterdir()) == []


def test_html_error_page_with_status_200_is_deleted(server, cache):
    name, _, _ = publish(server)
    server.set_fault(name, Fault.html_200())
    with pytest.raises(ZooError, match="sha256 mismatch.*HTML page"):
        get(server, name, cache)
    assert partial_files(cache) == [] and list(cache.blobs.iterdir()) == []
    assert not cache.name_path(name).exists()


def test_redirect_is_followed(server, cache):
    name, data, _ = publish(server)
    server.set_fault(f"old/{name}", Fault.redirect(f"/{name}"))
    got = get(server, name, cache, url=server.url(f"old/{name}"))
    assert got.path.read_bytes() == data and got.url == server.url(f"old/{name}")
    assert [r.status for r in server.requests] == [302, 200]


# -- processes, offline, mirrors -----------------------------------------------------------------------------


def test_two_processes_download_once_and_both_get_the_path(server, tmp_path):
    name, data, sha = publish(server)
    server.set_fault(name, Fault.stall(60, after_bytes=10_000))  # holds the first download open
    root = tmp_path / "cache"
    cmd = [sys.executable, "-m", "zoo", "fetch", "--manifests", str(tmp_path / "manifests")]
    cmd += ["--url", server.url(name), "--cache", str(root)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in "ab"
    ]
    waiting = threading.Event()
    stderr: list[list[str]] = [[], []]

    def read(i: int) -> None:
        for line in procs[i].stderr:
            stderr[i].append(line)
            if "waiting for another process" in line:
                waiting.set()

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(2)]
    for t in readers:
        t.start()
    try:
        assert waiting.wait(30), f"no process waited for the lock: {stderr}"
    finally:
        server.release()
    outs = [p.stdout.read() for p in procs]
    assert [p.wait(30) for p in procs] == [0, 0], stderr
    for t in readers:
        t.join(5)
    expected_path = str(root / "checkpoints" / name)
    assert [o.strip() for o in outs] == [expected_path, expected_path]
    assert len(server.requests_for(name)) == 1
    assert sum("waiting for another process" in "".join(e) for e in stderr) == 1
    assert_cache_verified(f.Cache(root))


def test_offline_never_touches_the_network(server, cache, monkeypatch):
    name, _, _ = publish(server)
    url = server.url(name)
    with pytest.raises(
        InputError, match=f"offline.*{re.escape(url)} is not in the cache; put the file at .*{name}$"
    ):
        get(server, name, cache, offline=True)
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    with pytest.raises(InputError, match="offline"):
        f.fetch(url, f.resolve_expected(url), cache=cache, config=FAST)
    assert server.requests == []
    monkeypatch.delenv("ZOO_OFFLINE")
    got = get(server, name, cache)
    monkeypatch.setenv("ZOO_OFFLINE", "1")  # once cached, offline hands out the verified file
    assert f.fetch(url, f.resolve_expected(url), cache=cache, config=FAST) == got
    assert len(server.requests) == 1


def test_mirror_rewrites_the_url_prefix(server, cache, monkeypatch):
    name, data, sha = publish(server, stem="mmpose/top_down/hrnet/w48")
    upstream = f"https://download.openmmlab.com/{name}"
    monkeypatch.setenv(
        "ZOO_MIRROR",
        f"https://example.invalid/=http://nowhere/;https://download.openmmlab.com/={server.base_url}",
    )
    got = f.fetch(upstream, f.resolve_expected(upstream), cache=cache, config=FAST, offline=False)
    assert got.url == upstream and got.path.read_bytes() == data
    assert server.requests_for(name)[0].status == 200
    assert cache.lookup(upstream) == sha  # the cache and lock speak of the real URL, not the mirror


def test_mirror_spec_is_validated():
    assert f.parse_mirrors("https://a/=http://b/") == [f.Mirror("https://a/", "http://b/")]
    with pytest.raises(InputError, match="ZOO_MIRROR"):
        f.parse_mirrors("https://a/ http://b/")


# -- what the hash is checked against ------------------------------------------------------------------------


def test_hash_prefix_is_parsed_from_openmmlab_names():
    dl = "https://download.openmmlab.com/mmpose/"
    assert (
        f.hash_prefix_from_url(
            dl + "top_down/hrnet/hrnet_w48_coco_wholebody_384x288_dark-f5726563_20200918.pth"
        )
        == "f5726563"
    )
    assert f.hash_prefix_from_url(dl + "x/model-0123abcd.pth") == "0123abcd"
    assert f.hash_prefix_from_url(dl + "x/hrnet_w48_coco_wholebody_384x288_dark_20200918.log.json") is None
    assert f.hash_prefix_from_url(dl + "x/model.pth") is None


def test_expected_hash_precedence_and_conflicts(tmp_path):
    url = "https://h/x/model-0123abcd_20200101.pth"
    full = "0123abcd" + "e" * 56
    other = "0123abcd" + "f" * 56
    assert f.resolve_expected(url) == f.Expected("0123abcd", None, "file name")
    assert f.resolve_expected(url, locked=other).sha256 == other
    assert f.resolve_expected(url, sha256=full, source="manifest row r").sha256 == full
    assert f.resolve_expected("https://h/x/plain.pth") is None
    with pytest.raises(InputError, match="disagrees with manifest row r"):
        f.resolve_expected(url, sha256=full, source="manifest row r", locked=other, lock_path=tmp_path / "l")
    with pytest.raises(InputError, match="does not start with the name's prefix 0123abcd"):
        f.resolve_expected(url, sha256="f" * 64)
    with pytest.raises(InputError, match="not 64 hex digits"):
        f.resolve_expected(url, sha256="0123abcd")


def test_full_hash_is_enforced_over_the_prefix(server, cache):
    name, _, sha = publish(server)
    wrong = sha[:8] + ("0" if sha[8] != "0" else "1") + sha[9:]  # same prefix, different hash
    with pytest.raises(ZooError, match="sha256 mismatch"):
        get(server, name, cache, expected=f.resolve_expected(server.url(name), sha256=wrong))


def fake_row(row_id: str, url: str, sha256: str | None = None):
    ckpt = SimpleNamespace(url=url, sha256=sha256, sha256_prefix=f.hash_prefix_from_url(url))
    return SimpleNamespace(id=row_id, checkpoint=ckpt)


def test_row_fetch_records_the_full_hash_in_the_lock_file(server, cache, tmp_path):
    name, data, sha = publish(server)
    lock = f.ChecksumLock(tmp_path / "manifests" / "checkpoints.lock")
    row = fake_row("hrnet-w48", server.url(name))
    got = f.fetch_row(row, lock=lock, cache=cache, config=FAST, offline=False)
    assert got.path == cache.root / "checkpoints" / "hrnet-w48.pth"
    text = lock.path.read_text()
    assert text.startswith("# Full sha256") and yaml.safe_load(text) == {
        "version": 1,
        "sha256": {row.checkpoint.url: sha},
    }
    long_url = "https://download.openmmlab.com/mmpose/v1/" + "x" * 120 + "/a.pth"
    lock.record(long_url, "a" * 64)
    assert list(lock.read()) == sorted([row.checkpoint.url, long_url])
    assert lock.path.read_text().splitlines()[-2:] == [  # one line per URL, sorted: stable diffs
        f'  "{u}": "{h}"' for u, h in sorted({row.checkpoint.url: sha, long_url: "a" * 64}.items())
    ]
    wrong = "0" * 64  # a lock entry that disagrees with the name is an input error, not a silent pass
    lock.record(row.checkpoint.url, wrong)
    with pytest.raises(InputError, match="does not start with the name's prefix"):
        f.fetch_row(row, lock=lock, cache=cache, config=FAST, offline=False)


def test_update_lock_reverifies_and_replaces_a_corrupt_blob(server, cache, tmp_path):
    name, data, sha = publish(server)
    lock = f.ChecksumLock(tmp_path / "checkpoints.lock")
    row = fake_row("r", server.url(name))
    f.fetch_row(row, lock=lock, cache=cache, config=FAST, offline=False)
    blob = cache.blob_path(sha)
    blob.write_bytes(b"bit rot" + data[7:])  # corrupts the (hard-linked) name too
    got = f.fetch_row(row, lock=lock, update_lock=True, cache=cache, config=FAST, offline=False)
    assert got.path.read_bytes() == data and lock.get(row.checkpoint.url) == sha
    assert len(server.requests_for(name)) == 2


def test_malformed_lock_file_is_an_input_error(tmp_path):
    path = tmp_path / "checkpoints.lock"
    path.write_text("version: 1\nsha256:\n  http://a/b.pth: nothex\n")
    with pytest.raises(InputError, match=f"{path}: sha256 for http://a/b.pth"):
        f.ChecksumLock(path).read()


# -- the command ---------------------------------------------------------------------------------------------


def test_cli_prints_only_the_path_on_stdout(server, cache, tmp_path, capsys):
    name, _, _ = publish(server)
    argv = ["fetch", "--manifests", str(tmp_path), "--url", server.url(name), "--cache", str(cache.root)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out == f"{cache.root / 'checkpoints' / name}\n"
    assert "downloading" in err


def test_cli_refuses_a_url_without_a_hash_unless_no_verify(server, cache, tmp_path, capsys):
    server.put("plain.pth", b"abc")
    argv = [
        "fetch",
        "--manifests",
        str(tmp_path),
        "--url",
        server.url("plain.pth"),
        "--cache",
        str(cache.root),
    ]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and "no sha256 known" in err and "--no-verify" in err and len(err.splitlines()) == 1
    assert main([*argv, "--no-verify"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.read_bytes() == b"abc" and "unverified" in path.parts
    assert not cache.blobs.exists() or list(cache.blobs.iterdir()) == []
    with pytest.raises(ZooError, match="did not pass verification"):
        f.load_checkpoint(path)
    assert main([*argv, "--sha256", hashlib.sha256(b"abc").hexdigest()]) == 0  # now verified and stored
    assert Path(capsys.readouterr().out.strip()).parent == cache.names


def test_cli_offline_error_is_one_line(server, cache, tmp_path, capsys):
    name, _, _ = publish(server)
    argv = ["fetch", "--manifests", str(tmp_path), "--url", server.url(name), "--cache", str(cache.root)]
    assert main([*argv, "--offline"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and server.url(name) in err and str(cache.names / name) in err


# -- loading ---------------------------------------------------------------------------------------------------


def serve_checkpoint(srv: LoopbackServer, obj: object, tmp_path: Path) -> tuple[str, str]:
    src = tmp_path / "ckpt.pth"
    torch.save(obj, src)
    data = src.read_bytes()
    name, _, sha = publish(srv, data=data, stem="ckpt")
    return name, sha


def test_openmmlab_layout_checkpoint_loads(server, cache, tmp_path):
    state = collections.OrderedDict(
        [("backbone.conv1.weight", torch.randn(4, 3, 3, 3)), ("head.final_layer.bias", torch.zeros(17))]
    )
    meta = {
        "epoch": np.int64(210),
        "iter": 123,
        "mmpose_version": "0.8.0",
        "hook_msgs": {"best_score": np.float64(0.661), "last_ckpt": "epoch_210.pth"},
        "dataset_meta": {"sigmas": np.linspace(0.02, 0.1, 17, dtype=np.float32), "flip": np.arange(17)},
    }
    name, _ = serve_checkpoint(server, {"meta": meta, "state_dict": state}, tmp_path)
    got = get(server, name, cache)
    ckpt = f.load_checkpoint(got)
    assert list(ckpt["state_dict"]) == list(state)
    assert torch.equal(ckpt["state_dict"]["backbone.conv1.weight"], state["backbone.conv1.weight"])
    assert ckpt["meta"]["epoch"] == 210 and ckpt["meta"]["hook_msgs"]["best_score"] == pytest.approx(0.661)
    np.testing.assert_array_equal(ckpt["meta"]["dataset_meta"]["sigmas"], meta["dataset_meta"]["sigmas"])
    assert f.load_checkpoint(got.path)["meta"]["iter"] == 123  # a path inside the cache works too


def test_checkpoint_with_a_forbidden_global_is_refused(server, cache, tmp_path):
    name, _ = serve_checkpoint(server, {"state_dict": {"w": torch.ones(2)}, "meta": {"x": Evil()}}, tmp_path)
    got = get(server, name, cache)
    with pytest.raises(ZooError, match=r"refused to unpickle the global [\w.]*Evil \(not on the checkpoint"):
        f.load_checkpoint(got)


def test_files_outside_the_verified_store_are_not_loaded(server, cache, tmp_path):
    name, _ = serve_checkpoint(server, {"state_dict": {"w": torch.ones(2)}}, tmp_path)
    with pytest.raises(ZooError, match="did not pass verification"):
        f.load_checkpoint(tmp_path / "ckpt.pth", cache=cache)  # same bytes, but never fetched
    got = get(server, name, cache)
    assert torch.equal(
        f.load_checkpoint(tmp_path / "ckpt.pth", cache=cache)["state_dict"]["w"], torch.ones(2)
    )
    with got.path.open("r+b") as fh:  # edited after verification (the blob shares the inode)
        fh.seek(100)
        fh.write(b"\0\0\0\0")
    with pytest.raises(ZooError, match="did not pass verification"):
        f.load_checkpoint(got)
    cache.blob_path(got.sha256).unlink()  # leave the store consistent for the teardown check
    got.path.unlink()


def test_cli_fetches_rows_and_records_the_lock_file(server, cache, tmp_path, capsys, monkeypatch):
    name, _, sha = publish(server)
    rows = [
        fake_row("a-256x192", server.url(name)),
        fake_row("b-256x192", server.url(name)),
    ]  # one URL, two rows
    manifests = SimpleNamespace(rows=rows, row=lambda rid: next(r for r in rows if r.id == rid))
    monkeypatch.setattr("zoo.manifest.load_manifests", lambda d: manifests)
    argv = ["fetch", "--manifests", str(tmp_path), "--cache", str(cache.root)]
    assert main([*argv, "--all"]) == 0
    assert capsys.readouterr().out.split() == [
        str(cache.names / "a-256x192.pth"),
        str(cache.names / "b-256x192.pth"),
    ]
    assert len(server.requests_for(name)) == 1  # stored once, named twice
    assert f.ChecksumLock(tmp_path / "checkpoints.lock").read() == {server.url(name): sha}
    assert main([*argv, "b-256x192", "--offline"]) == 0
    assert capsys.readouterr().out == f"{cache.names / 'b-256x192.pth'}\n"


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--all", "--url", "http://h/x-0123abcd.pth"],
        ["--all", "--sha256", "0" * 64],
        ["--url", "u", "--update-lock"],
    ],
)
def test_cli_rejects_inconsistent_arguments(tmp_path, capsys, extra):
    assert main(["fetch", "--manifests", str(tmp_path), *extra]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_cache_dir_precedence(tmp_path, monkeypatch):
    import platformdirs

    assert f.resolve_cache_dir(None) == Path(platformdirs.user_cache_dir("wholebody-zoo"))
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "env"))
    assert f.resolve_cache_dir(None) == tmp_path / "env"
    assert f.resolve_cache_dir(tmp_path / "flag") == tmp_path / "flag"
    assert not (tmp_path / "env").exists()  # resolving creates nothing


def test_retry_after_is_respected(server, cache):
    name, _, _ = publish(server)
    server.set_fault(name, Fault.error(503, times=1, retry_after="1"))
    started = time.monotonic()
    get(server, name, cache)
    assert time.monotonic() - started >= 0.9  # the configured backoff alone is 0.01 s


# -- faults a user meets, through the command ------------------------------------------------------------------


NET = {"ZOO_TIMEOUT": "2,0.5", "ZOO_RETRIES": "1"}  # small, so a dead host fails in about a second


def assert_only_zoo_lines(stderr: str) -> None:
    """No raw library output (urllib3's `Retrying (Retry(total=...` warnings, tracebacks): our lines only."""
    for line in stderr.splitlines():
        assert line.startswith("zoo: "), f"raw line on stderr: {line!r}"
    assert "urllib3" not in stderr and "Retry(" not in stderr and "Traceback" not in stderr


def test_cli_refused_connection_says_what_is_retried_and_what_to_do(tmp_path):
    port = closed_port()
    data = np.random.default_rng(3).bytes(1000)
    sha = hashlib.sha256(data).hexdigest()
    name = f"model-{sha[:8]}_20200918.pth"
    url = f"http://127.0.0.1:{port}/{name}"
    cache = tmp_path / "cache"
    argv = ["fetch", "--manifests", str(tmp_path), "--url", url, "--cache", str(cache)]
    res = zoo(*argv, env=NET)
    assert res.returncode == 1 and res.stdout == ""
    assert_only_zoo_lines(res.stderr)
    retry, error = res.stderr.splitlines()
    assert retry.startswith(f"zoo: 127.0.0.1:{port}: connection refused") and "retrying" in retry
    target = cache / "checkpoints" / name
    assert error == (
        f"zoo: error: cannot download {url}: 127.0.0.1:{port}: connection refused (nothing listens on that "
        f"port) (2 attempts); retry when the network is back, use a mirror (ZOO_MIRROR='http://127.0.0.1:"
        f"{port}/=https://MIRROR/'), or put the file at {target} and rerun (--offline never touches the network)"
    )
    # the advice works: a copy with the right hash at that path is taken into the verified store
    target.write_bytes(data)
    res = zoo(*argv, "--offline", env=NET)
    assert res.returncode == 0 and res.stdout == f"{target}\n", res.stderr
    assert f.Cache(cache).blob_path(sha).is_file()
    assert_cache_verified(f.Cache(cache))


def test_cli_silent_server_times_out_with_one_complete_line(tmp_path):
    with silent_server() as port:
        url = f"http://127.0.0.1:{port}/model-0123abcd_20200918.pth"
        res = zoo(
            "fetch", "--manifests", str(tmp_path), "--url", url, "--cache", str(tmp_path / "c"), env=NET
        )
    assert res.returncode == 1 and res.stdout == ""
    assert_only_zoo_lines(res.stderr)
    *retries, error = res.stderr.splitlines()
    assert retries and all(f"127.0.0.1:{port}: read timed out" in r and "retrying" in r for r in retries)
    assert error.startswith(f"zoo: error: cannot download {url}: 127.0.0.1:{port}: read timed out")
    assert error.endswith("and rerun (--offline never touches the network)") and "ZOO_MIRROR=" in error


def test_unresolvable_host_is_not_retried(cache, caplog):
    url = "http://no-such-host.invalid/model-0123abcd_20200918.pth"
    with pytest.raises(ZooError, match=r"no-such-host\.invalid: the host name does not resolve") as err:
        f.fetch(url, f.resolve_expected(url), cache=cache, config=FAST, offline=False)
    assert "attempts" not in str(err.value) and "retrying" not in caplog.text


def test_environment_timeouts_are_validated(monkeypatch):
    monkeypatch.setenv("ZOO_TIMEOUT", "1.5,7")
    monkeypatch.setenv("ZOO_RETRIES", "0")
    config = f.FetchConfig.from_env()
    assert (config.connect_timeout, config.read_timeout, config.connect_retries) == (1.5, 7.0, 0)
    for var, value in (("ZOO_TIMEOUT", "-1"), ("ZOO_TIMEOUT", "a,b"), ("ZOO_RETRIES", "two")):
        monkeypatch.setenv(var, value)
        with pytest.raises(InputError, match=f"^{var}: expected"):
            f.FetchConfig.from_env()
        monkeypatch.delenv(var)


@pytest.mark.parametrize("command", ["fetch-row", "fetch-url", "run", "reproduce", "data-prepare"])
def test_cache_that_is_a_file_is_bad_input(command, tmp_path, capsys, synth_root):
    cache = tmp_path / "cache-file"
    cache.write_text("not a folder")
    row = "hrnet-w48-256x192"  # a real row: nothing may reach the network before the check
    argv = {
        "fetch-row": ["fetch", row],
        "fetch-url": ["fetch", "--url", "http://127.0.0.1:9/m-0123abcd_20200918.pth", "--manifests", str(tmp_path)],
        "run": ["run", row, "--data-root", str(synth_root), "--out", str(tmp_path / "runs")],
        "reproduce": ["reproduce", row, "--data-root", str(synth_root), "--out", str(tmp_path / "runs"),
                      "--report-dir", str(tmp_path / "reports")],
        "data-prepare": ["data", "prepare", "coco-wholebody", "--root", str(tmp_path / "coco")],
    }[command]  # fmt: skip
    assert main([*argv, "--cache", str(cache)]) == 2
    *progress, error = capsys.readouterr().err.splitlines()  # reproduce says which step it is on first
    assert (
        error == f"zoo: error: cache {cache} is a file, not a folder; pass another --cache DIR (or ZOO_CACHE)"
    )
    assert not any(line.startswith("zoo:") for line in progress)
    assert cache.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache-file"]  # nothing else written


def test_update_lock_with_read_only_manifests_fails_before_any_download(
    server, tmp_path, capsys, monkeypatch
):
    name, _, _ = publish(server)
    rows = [fake_row("a-256x192", server.url(name))]
    manifests = SimpleNamespace(rows=rows, row=lambda rid: next(r for r in rows if r.id == rid))
    monkeypatch.setattr("zoo.manifest.load_manifests", lambda d: manifests)
    folder = tmp_path / "manifests"
    (folder / "checkpoints.lock").parent.mkdir()
    f.ChecksumLock(folder / "checkpoints.lock").record("http://other/x.pth", "b" * 64)
    before = (folder / "checkpoints.lock").read_bytes()
    argv = ["fetch", "--manifests", str(folder), "--cache", str(tmp_path / "cache")]
    with read_only(folder):
        assert main([*argv, "--update-lock"]) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.splitlines()) == 1
        assert err.startswith(f"zoo: error: {folder / 'checkpoints.lock'}: cannot write the lock file (")
        assert server.requests == [] and not (tmp_path / "cache").exists()
        # a plain fetch still works from a read-only checkout: the lock file is not its output
        assert main([*argv, "a-256x192"]) == 0
        out, err = capsys.readouterr()
        assert out == f"{tmp_path / 'cache' / 'checkpoints' / 'a-256x192.pth'}\n"
        assert "could not record the sha256 of a-256x192" in err
    assert (folder / "checkpoints.lock").read_bytes() == before


def test_unwritable_cache_fails_before_the_network_but_still_serves(server, tmp_path, capsys):
    name, _, sha = publish(server)
    cache = tmp_path / "cache"
    argv = ["fetch", "--manifests", str(tmp_path), "--url", server.url(name), "--cache", str(cache)]
    other, _, _ = publish(server, stem="other", seed=5)
    assert main(argv) == 0
    capsys.readouterr()
    with read_only(cache):
        assert main(argv) == 0  # already cached: a read-only (shared) cache serves it
        assert capsys.readouterr().out == f"{cache / 'checkpoints' / name}\n"
        assert main([*argv[:-3], server.url(other), "--cache", str(cache)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.splitlines()) == 1
        assert err.startswith(f"zoo: error: cache {cache} is not writable (")
    assert len(server.requests_for(name)) == 1 and server.requests_for(other) == []
    assert_cache_verified(f.Cache(cache))


def test_urllib3_retry_warnings_do_not_reach_a_configured_root_logger(cache, caplog):
    """`zoo run` and `zoo reproduce` log through the root logger, where urllib3's raw "Retrying (Retry(...)"
    warnings used to appear next to ours; only our one-line retry notices may."""
    url = f"http://127.0.0.1:{closed_port()}/model-0123abcd_20200918.pth"
    caplog.set_level(logging.INFO)
    with pytest.raises(ZooError, match="connection refused"):
        f.fetch(url, f.resolve_expected(url), cache=cache, config=FAST, offline=False)
    assert [r.name for r in caplog.records if r.levelno >= logging.WARNING] == ["zoo.fetch", "zoo.fetch"]
    assert all("retrying" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_a_wrong_file_put_by_hand_is_ignored_with_a_warning(server, cache, tmp_path, capsys):
    name, data, sha = publish(server)
    argv = ["fetch", "--manifests", str(tmp_path), "--url", server.url(name), "--cache", str(cache.root)]
    target = cache.names / name
    target.parent.mkdir(parents=True)
    target.write_bytes(b"<html>not the file</html>")
    assert main([*argv, "--offline"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"zoo: ignoring {target}: its sha256 ")
    assert err[0].endswith(f"is not the expected {sha[:8]}... (from file name)")
    assert err[1].endswith(f"is not in the cache; put the file at {target}") and len(err) == 2
    assert main(argv) == 0  # online, the download replaces it
    assert target.read_bytes() == data and len(server.requests_for(name)) == 1
