"""zoo.loopback speaks enough HTTP for the fetch tests to mean something: Range, If-Range, 416, faults."""

from __future__ import annotations

import pytest
import requests

from zoo.loopback import Fault, LoopbackServer

DATA = bytes(range(256)) * 40  # 10240 bytes


@pytest.fixture
def srv(tmp_path):
    (tmp_path / "secret").write_text("outside the root")
    with LoopbackServer(tmp_path / "root") as server:
        server.put("d/file.bin", DATA)
        yield server


def get(srv: LoopbackServer, path: str = "d/file.bin", **headers: str) -> requests.Response:
    return requests.get(srv.url(path), headers=headers, timeout=5, allow_redirects=False)


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=100-", 100, len(DATA)), ("bytes=100-199", 100, 200), ("bytes=-50", len(DATA) - 50, len(DATA))],
)
def test_range_requests_get_206_with_content_range(srv, header, start, end):
    r = get(srv, Range=header)
    assert r.status_code == 206 and r.content == DATA[start:end]
    assert r.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(DATA)}"


def test_unsatisfiable_range_is_416(srv):
    r = get(srv, Range=f"bytes={len(DATA)}-")
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{len(DATA)}"


def test_if_range_with_a_stale_validator_sends_the_whole_file(srv):
    etag = get(srv).headers["ETag"]
    assert get(srv, Range="bytes=10-", **{"If-Range": etag}).status_code == 206
    r = get(srv, Range="bytes=10-", **{"If-Range": '"stale"'})
    assert r.status_code == 200 and r.content == DATA


def test_paths_outside_the_root_and_missing_files_are_404(srv):
    r = requests.get(srv.base_url + "%2e%2e/secret", timeout=5)  # encoded, so the client keeps the dots
    assert r.status_code == 404 and srv.requests[-1].path == "/../secret"
    assert get(srv, "d/missing.bin").status_code == 404


def test_faults_apply_in_turn_for_their_times_then_the_file_is_served(srv):
    srv.set_fault("d/file.bin", Fault.error(503, times=2), Fault.redirect("/d/file.bin", times=1))
    assert [get(srv).status_code for _ in range(4)] == [503, 503, 302, 200]
    assert [r.status for r in srv.requests_for("d/file.bin")] == [503, 503, 302, 200]
    assert srv.bytes_served("d/file.bin") == len(b"error\n") * 2 + len(DATA)


def test_no_range_and_length_faults(srv):
    srv.set_fault("d/file.bin", Fault.no_range(times=1), Fault.no_content_length(times=1))
    r = get(srv, Range="bytes=10-")
    assert r.status_code == 200 and r.headers["Accept-Ranges"] == "none" and r.content == DATA
    r = get(srv)
    assert "Content-Length" not in r.headers and r.content == DATA


def test_drop_cuts_the_body_short(srv):
    srv.set_fault("d/file.bin", Fault.drop(after_bytes=1000))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get(srv).content  # noqa: B018 - reading the body is the point
    assert srv.requests_for("d/file.bin")[0].body_bytes == 1000
