"""A checksum-verified, resumable, atomic, locked cache for checkpoint downloads.

Why this exists: the usual model-zoo failures are truncated downloads that later pass for complete
ones and loading the wrong file (openmim writes straight to the destination and checks no hash).
Here a file reaches the verified store only after its sha256 matched, and `load_checkpoint`
unpickles only such files, with `weights_only=True` and an explicit allow-list.

Cache layout (root: `--cache`, else $ZOO_CACHE, else the platform cache dir):

    CACHEDIR.TAG                  marks the folder as a cache for backup tools
    blobs/sha256/<sha256>         verified content, named by its hash: one copy per content
    checkpoints/<name>            hard link to a blob under a human-readable name (row id / file name)
    unverified/<url key>/<file>   `--no-verify` downloads; never accepted by load_checkpoint
    partial/<url key>.part|.json  resumable download + its validators (ETag, Last-Modified, length)
    locks/<url key>.lock          one downloader per URL across processes
    index.json                    URL -> sha256 of verified downloads (finds prefix-only rows offline)

Names are hard links rather than symlinks: they need no privilege on Windows, survive moving or
re-mounting the cache, cost no space and can never dangle; where the file system has no hard
links the name is a copy, which `load_checkpoint` accepts only because it re-hashes the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import filelock
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from zoo import __version__
from zoo.errors import InputError, ZooError
from zoo.fileio import sha256_file, write_atomic

if TYPE_CHECKING:
    from zoo.manifest import Row

log = logging.getLogger(__name__)

# OpenMMLab names end in `-<sha256[:8]>_<yyyymmdd>.pth` (tools/misc/publish_model.py), some without the date.
_NAME_HASH = re.compile(r"-([0-9a-f]{8})(?:_\d{8})?\.pth$")
_FULL_HASH = re.compile(r"[0-9a-f]{64}")
_PREFIX_HASH = re.compile(r"[0-9a-f]{8}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes \*/(\d+)")
_RETRY_STATUS = (429, 500, 502, 503, 504)
_FORBIDDEN_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_MIRROR_ITEM = re.compile(r"(\S+?)=(\w[\w+.-]*://\S*)")
_CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by wholebody-zoo (`zoo fetch`).\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)
_LOCK_HEADER = (
    "# Full sha256 of each checkpoint, keyed by URL: written by `zoo fetch` after a verified download so\n"
    "# later downloads are checked on the whole hash, not only the 8-hex prefix in the file name.\n"
    "# Generated; refresh with `zoo fetch --update-lock`.\n"
)


# -- expected hashes -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """The hash a download must have: a full sha256 when one is recorded, else the 8-hex name prefix."""

    prefix: str
    sha256: str | None
    source: str

    def matches(self, digest: str) -> bool:
        return digest == self.sha256 if self.sha256 else digest.startswith(self.prefix)

    def __str__(self) -> str:
        return f"{self.sha256 or self.prefix + '...'} (from {self.source})"


def hash_prefix_from_url(url: str) -> str | None:
    """The sha256 prefix an OpenMMLab file name carries (`...-f5726563_20200918.pth`), if any."""
    m = _NAME_HASH.search(url_filename(url))
    return m.group(1) if m else None


def resolve_expected(
    url: str,
    *,
    sha256: str | None = None,
    source: str = "--sha256",
    prefix: str | None = None,
    locked: str | None = None,
    lock_path: Path | None = None,
) -> Expected | None:
    """Combine what is known about a URL's hash; None when nothing is.

    Precedence: a full `sha256` given by `source` (manifest row or --sha256), then the full hash
    recorded in the lock file, then the 8-hex prefix (`prefix`, else parsed from the file name).
    Every full hash must agree with the prefix and with each other: a disagreement means the
    manifest, the lock file or the URL is wrong, which is an input error, not a download error.
    """
    sha256 = _check_hex(sha256, _FULL_HASH, f"{source}: sha256 for {url}", "64")
    prefix = _check_hex(prefix, _PREFIX_HASH, f"{source}: sha256 prefix for {url}", "8")
    from_name = hash_prefix_from_url(url)
    if prefix and from_name and prefix != from_name:
        raise InputError(
            f"{source}: sha256 prefix {prefix} disagrees with the file name of {url} ({from_name})"
        )
    prefix = prefix or from_name
    where = str(lock_path or "lock file")
    for full, origin in ((sha256, source), (locked, where)):
        if full and prefix and not full.startswith(prefix):
            raise InputError(
                f"{origin}: sha256 {full} for {url} does not start with the name's prefix {prefix}"
            )
    if sha256 and locked and sha256 != locked:
        raise InputError(f"{where}: sha256 {locked} for {url} disagrees with {source} ({sha256})")
    if sha256:
        return Expected(prefix=sha256[:8], sha256=sha256, source=source)
    if locked:
        return Expected(prefix=locked[:8], sha256=locked, source=where)
    if prefix:
        return Expected(prefix=prefix, sha256=None, source="file name" if prefix == from_name else source)
    return None


def _check_hex(value: str | None, pattern: re.Pattern[str], what: str, digits: str) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if not pattern.fullmatch(value):
        raise InputError(f"{what}: {value!r} is not {digits} hex digits")
    return value


class ChecksumLock:
    """`manifests/checkpoints.lock`: the full sha256 of each verified checkpoint, keyed by URL.

    YAML, sorted, rewritten atomically. Concurrent writers serialise on a lock file in the system
    temp dir (not next to the manifests, which would leave a stray file in the repository).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, str]:
        import yaml

        if not self.path.exists():
            return {}
        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(f"{self.path}: cannot read lock file: {str(exc).splitlines()[0]}") from None
        entries = data.get("sha256") if isinstance(data, dict) else None
        if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(entries, dict):
            raise InputError(f"{self.path}: expected `version: 1` and a `sha256:` mapping of URL -> hash")
        for url, digest in entries.items():
            if not isinstance(digest, str) or not _FULL_HASH.fullmatch(digest):
                raise InputError(f"{self.path}: sha256 for {url}: {digest!r} is not 64 lowercase hex digits")
        return {str(k): v for k, v in entries.items()}

    def get(self, url: str) -> str | None:
        return self.read().get(url)

    def record(self, url: str, sha256: str) -> bool:
        """Store `url -> sha256`; True when the file changed."""
        key = hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:16]
        with filelock.FileLock(Path(tempfile.gettempdir()) / f"wholebody-zoo-lockfile-{key}.lock"):
            entries = self.read()
            if entries.get(url) == sha256:
                return False
            entries[url] = sha256
            # one line per URL, both quoted (JSON strings are YAML): PyYAML splits keys over 128 chars
            lines = [f"  {json.dumps(u)}: {json.dumps(h)}\n" for u, h in sorted(entries.items())]
            write_atomic(self.path, _LOCK_HEADER + "version: 1\nsha256:\n" + "".join(lines))
        return True


# -- configuration -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchConfig:
    """Network behaviour. Defaults suit 100-300 MB checkpoints on a slow link; tests shrink them."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 5  # urllib3: connect/read errors before the headers, and 429/5xx answers
    backoff: float = 1.0  # sleep backoff * 2**(n-1) s between tries (Retry-After wins when sent)
    backoff_max: float = 60.0
    resumes: int = 5  # bodies broken mid-transfer, continued with Range, per fetch
    chunk_size: int = 1 << 20
    lock_timeout: float = 3600.0  # how long to wait for another process downloading the same URL


@dataclass(frozen=True)
class Mirror:
    """Rewrite URLs starting with `prefix` to start with `replacement` (for mirrors and local servers)."""

    prefix: str
    replacement: str


def parse_mirrors(spec: str | None) -> list[Mirror]:
    """`ZOO_MIRROR` syntax: `PREFIX=REPLACEMENT`, several separated by `;`, first match wins."""
    mirrors = []
    for item in (spec or "").split(";"):
        if not item.strip():
            continue
        m = _MIRROR_ITEM.fullmatch(item.strip())
        if not m:
            raise InputError(
                f"ZOO_MIRROR: {item.strip()!r} is not PREFIX=REPLACEMENT (e.g. https://a/=http://b/)"
            )
        mirrors.append(Mirror(m.group(1), m.group(2)))
    return mirrors


def apply_mirrors(url: str, mirrors: Sequence[Mirror]) -> str:
    for mirror in mirrors:
        if url.startswith(mirror.prefix):
            return mirror.replacement + url[len(mirror.prefix) :]
    return url


def offline_from_env() -> bool:
    return os.environ.get("ZOO_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_cache_dir(explicit: str | os.PathLike[str] | None) -> Path:
    """`--cache DIR`, else $ZOO_CACHE, else the platform's user cache dir. Creates nothing."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("ZOO_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("wholebody-zoo"))


def make_session(config: FetchConfig) -> requests.Session:
    """A session whose adapter retries connect/read errors and 429/5xx with backoff, never a 404."""
    retry = Retry(
        total=config.retries,
        connect=config.retries,
        read=config.retries,
        status=config.retries,
        other=0,
        backoff_factor=config.backoff,
        backoff_max=config.backoff_max,
        status_forcelist=_RETRY_STATUS,
        allowed_methods=frozenset({"GET", "HEAD"}),
        respect_retry_after_header=True,
        raise_on_status=False,  # hand back the last answer so the error names its status
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = f"wholebody-zoo/{__version__}"
    return session


# -- the cache -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchedFile:
    """A file `fetch` handed out: `path` is what to print and load; `verified` says whether it may be."""

    url: str
    path: Path
    sha256: str | None
    verified: bool


class Cache:
    """The on-disk layout described in the module docstring. Only `store` adds to the blob store."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.names = self.root / "checkpoints"
        self.unverified = self.root / "unverified"
        self.partial = self.root / "partial"
        self.locks = self.root / "locks"
        self.index_path = self.root / "index.json"

    def prepare(self) -> None:
        for d in (self.blobs, self.names, self.unverified, self.partial, self.locks):
            d.mkdir(parents=True, exist_ok=True)
        tag = self.root / "CACHEDIR.TAG"
        if not tag.exists():
            write_atomic(tag, _CACHEDIR_TAG)

    def blob_path(self, sha256: str) -> Path:
        return self.blobs / sha256

    def name_path(self, name: str) -> Path:
        return self.names / name

    def partial_paths(self, download_url: str) -> tuple[Path, Path]:
        """(`.part`, validators `.json`) of a download, keyed by the URL actually requested."""
        key = _url_key(download_url)
        return self.partial / f"{key}.part", self.partial / f"{key}.json"

    def unverified_path(self, url: str, name: str) -> Path:
        return self.unverified / _url_key(url) / name

    def download_lock(self, url: str, timeout: float) -> filelock.FileLock:
        return filelock.FileLock(self.locks / f"{_url_key(url)}.lock", timeout=timeout)

    # index: URL -> sha256

    def _read_index(self) -> dict[str, str]:
        try:
            data = json.loads(self.index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ZooError(
                f"{self.index_path}: unreadable cache index ({exc}); delete it to rebuild"
            ) from None
        return data.get("sha256", {}) if isinstance(data, dict) else {}

    def lookup(self, url: str) -> str | None:
        return self._read_index().get(url)

    def remember(self, url: str, sha256: str) -> None:
        with filelock.FileLock(self.locks / "index.lock"):
            index = self._read_index()
            if index.get(url) == sha256:
                return
            index[url] = sha256
            write_atomic(self.index_path, json.dumps({"sha256": index}, indent=1, sort_keys=True) + "\n")

    # lookups

    def find(self, url: str, expected: Expected, name: str) -> FetchedFile | None:
        """The verified file for `url` if the store has content with the expected hash."""
        digest = expected.sha256 or self.lookup(url)
        if digest is None or not expected.matches(digest) or not self.blob_path(digest).is_file():
            return None
        return self._publish(url, digest, name)

    def find_unverified(self, url: str, name: str) -> FetchedFile | None:
        path = self.unverified_path(url, name)
        return FetchedFile(url, path, None, verified=False) if path.is_file() else None

    def verified_digest(self, path: Path) -> str | None:
        """The sha256 of `path` if that content is in the verified store (re-hashed, not trusted)."""
        digest = sha256_file(path)
        return digest if self.blob_path(digest).is_file() else None

    def reverify(self, url: str, expected: Expected) -> None:
        """Re-hash the cached blob for `url`; a blob whose content no longer matches its name is removed."""
        digest = expected.sha256 or self.lookup(url)
        if digest is None or not self.blob_path(digest).is_file():
            return
        actual = sha256_file(self.blob_path(digest))
        if actual != digest:
            log.warning("cached %s is corrupt (sha256 %s); removing it", self.blob_path(digest), actual)
            self.blob_path(digest).unlink(missing_ok=True)

    # writes

    def store(self, partial: _Partial, url: str, digest: str, name: str) -> FetchedFile:
        """Move a download whose hash matched into the blob store (atomically) and name it."""
        blob = self.blob_path(digest)
        if blob.is_file():  # same content already stored (another URL, or a concurrent writer)
            partial.discard()
        else:
            os.replace(partial.part, blob)
            partial.meta_path.unlink(missing_ok=True)
        return self._publish(url, digest, name)

    def store_unverified(self, partial: _Partial, url: str, name: str) -> FetchedFile:
        target = self.unverified_path(url, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial.part, target)
        partial.meta_path.unlink(missing_ok=True)
        return FetchedFile(url, target, None, verified=False)

    def _publish(self, url: str, digest: str, name: str) -> FetchedFile:
        self.remember(url, digest)
        link = self.name_path(name)
        blob = self.blob_path(digest)
        if not (link.is_file() and os.path.samefile(link, blob)):
            link.parent.mkdir(parents=True, exist_ok=True)
            tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex[:12]}.tmp")
            try:
                os.link(blob, tmp)
            except OSError:  # no hard links here (some network/FAT file systems): a copy
                shutil.copyfile(blob, tmp)
            os.replace(tmp, link)
        return FetchedFile(url, link, digest, verified=True)


def _url_key(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:32]


def url_filename(url: str) -> str:
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def _safe_name(name: str, url: str) -> str:
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name:
        raise InputError(f"{url}: cannot use {name!r} as a cache file name")
    return name


def _redact(url: str) -> str:
    """The URL without user:password, for logs and messages."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


# -- one download --------------------------------------------------------------------------------------------


class _Incomplete(Exception):
    """The body ended before the announced length: resumable, like a dropped connection."""


class _Restart(Exception):
    """The server cannot continue the partial file (changed file, bad 206, 416): start over."""


_RESUMABLE = (
    requests.exceptions.ConnectionError,  # includes read timeouts while streaming the body
    requests.exceptions.ChunkedEncodingError,  # urllib3 ProtocolError: connection closed mid-body
    requests.exceptions.Timeout,
    _Incomplete,
)


@dataclass
class _Partial:
    """A `.part` file, its validators, and the running hash of exactly the bytes in it."""

    part: Path
    meta_path: Path
    url: str
    have: int = 0
    total: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None
    hasher: Any = field(default_factory=hashlib.sha256)

    @classmethod
    def load(cls, part: Path, meta_path: Path, url: str) -> _Partial:
        """Pick up a previous attempt's bytes; they are re-hashed, since the hash state is not saved."""
        state = cls(part, meta_path, url)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = None
        if not part.is_file() or not isinstance(meta, dict) or meta.get("url") != url:
            state.reset()
            return state
        state.total, state.etag = meta.get("total"), meta.get("etag")
        state.last_modified, state.content_type = meta.get("last_modified"), meta.get("content_type")
        state.have = part.stat().st_size
        if state.total is not None and state.have > state.total:
            state.reset()
            return state
        with open(part, "rb") as f:
            while chunk := f.read(1 << 20):
                state.hasher.update(chunk)
        if state.have:
            log.info("resuming %s from byte %d (re-hashed the partial file)", _redact(url), state.have)
        return state

    def reset(self) -> None:
        self.discard()
        self.have, self.total, self.etag, self.last_modified = 0, None, None, None
        self.hasher = hashlib.sha256()

    def discard(self) -> None:
        self.part.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)

    def begin(self, resp: requests.Response) -> None:
        """A 200 answer: the body is the whole file; remember its validators for a later resume."""
        self.reset()
        length = resp.headers.get("Content-Length")
        self.total = int(length) if length and length.isdigit() else None
        self.etag = resp.headers.get("ETag")
        self.last_modified = resp.headers.get("Last-Modified")
        self.content_type = resp.headers.get("Content-Type")
        self.part.parent.mkdir(parents=True, exist_ok=True)
        self.part.touch()
        meta = {
            "url": self.url,
            "total": self.total,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "content_type": self.content_type,
        }
        write_atomic(self.meta_path, json.dumps(meta, indent=1, sort_keys=True) + "\n")

    def check_continuation(self, resp: requests.Response) -> None:
        """A 206 answer must continue exactly where the part ends, of the same file."""
        m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
        if not m or int(m.group(1)) != self.have:
            raise _Restart(
                f"206 with Content-Range {resp.headers.get('Content-Range')!r} for byte {self.have}"
            )
        total = None if m.group(3) == "*" else int(m.group(3))
        etag = resp.headers.get("ETag")
        if (total is not None and self.total is not None and total != self.total) or (
            etag and self.etag and _strong(etag) != _strong(self.etag)
        ):
            raise _Restart("the file changed on the server")
        self.total = total if total is not None else self.total

    def receive(self, resp: requests.Response, chunk_size: int, progress: _Progress) -> None:
        with open(self.part, "ab") as f:
            try:
                for chunk in resp.iter_content(chunk_size):
                    try:
                        f.write(chunk)
                    except OSError as exc:  # disk full, quota: the bytes so far stay for a resume
                        raise ZooError(f"cannot write {self.part}: {exc.strerror or exc}") from None
                    self.hasher.update(chunk)
                    self.have += len(chunk)
                    progress.update(self.have)
            finally:  # keep whatever arrived: it is the next attempt's head start
                f.flush()
                os.fsync(f.fileno())
        if self.total is not None and self.have < self.total:
            raise _Incomplete(f"body ended at byte {self.have} of {self.total}")
        if self.total is not None and self.have > self.total:
            raise _Restart(f"received {self.have} bytes, more than the {self.total} announced")


def _strong(etag: str) -> str:
    return etag[2:] if etag.startswith("W/") else etag


class _Progress:
    """A tqdm bar on a terminal; otherwise a plain stderr line at each quarter (CI logs stay short)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Any = None
        self.total: int | None = None
        self.next_mark = 0.25
        self.started = time.monotonic()

    def start(self, total: int | None, initial: int) -> None:
        self.total = total
        self.next_mark = (int(4 * initial / total) + 1) / 4 if total else 0.25
        if sys.stderr.isatty():
            from tqdm import tqdm

            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(
                total=total, initial=initial, unit="B", unit_scale=True, desc=self.label, file=sys.stderr
            )
        else:
            size = f"{total / 1e6:.1f} MB" if total is not None else "unknown size"
            log.info("downloading %s (%s%s)", self.label, size, f", from byte {initial}" if initial else "")

    def update(self, have: int) -> None:
        if self.bar is not None:
            self.bar.update(have - self.bar.n)
        elif self.total and have >= self.next_mark * self.total and self.next_mark < 1:
            log.info("%s: %d%%", self.label, int(100 * have / self.total))
            while self.next_mark <= have / self.total:
                self.next_mark += 0.25

    def close(self, have: int) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            log.info("%s: %.1f MB in %.1f s", self.label, have / 1e6, time.monotonic() - self.started)


def _attempt(session: requests.Session, state: _Partial, config: FetchConfig, progress: _Progress) -> None:
    """One GET (continuing the part when there is one). Raises _RESUMABLE or _Restart to go again."""
    headers = {"Accept-Encoding": "identity"}
    if state.have:
        headers["Range"] = f"bytes={state.have}-"
        validator = state.etag or state.last_modified
        if validator:
            headers["If-Range"] = validator  # a changed file comes back whole (200), not spliced
    url = _redact(state.url)
    try:
        resp = session.get(
            state.url, headers=headers, stream=True, timeout=(config.connect_timeout, config.read_timeout)
        )
    except requests.exceptions.RequestException as exc:  # urllib3 already retried these
        raise ZooError(f"download of {url} failed: {_describe(exc)}") from None
    with resp:
        if resp.status_code == 416 and state.have:
            m = _UNSATISFIED_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
            if m and int(m.group(1)) == state.have:
                return  # the previous attempt had received everything: verify it
            raise _Restart(f"the server rejected resuming at byte {state.have} (416)")
        if resp.status_code == 206:
            state.check_continuation(resp)
        elif resp.status_code == 200:
            if state.have:
                log.info("%s: the server sent the whole file instead of the rest; starting over", url)
            state.begin(resp)
        else:
            if resp.status_code not in (408, 429) and resp.status_code < 500:
                state.discard()  # the resource is gone or forbidden: its part is useless
            retried = f" after {config.retries} retries" if resp.status_code in _RETRY_STATUS else ""
            raise ZooError(f"download of {url} failed: HTTP {resp.status_code} {resp.reason}{retried}")
        progress.start(state.total, state.have)
        state.receive(resp, config.chunk_size, progress)


def _download(session: requests.Session, state: _Partial, config: FetchConfig, label: str) -> None:
    """Fill `state.part` with the whole file: resume broken bodies, restart when resuming is impossible."""
    progress = _Progress(label)
    failures = 0
    while True:
        try:
            _attempt(session, state, config, progress)
            break
        except (*_RESUMABLE, _Restart) as exc:
            failures += 1
            reason = _describe(exc)
            if isinstance(exc, _Restart):
                state.reset()
            if failures > config.resumes:
                kept = f"; {state.have} bytes kept for the next try" if state.have else ""
                raise ZooError(
                    f"download of {_redact(state.url)} failed after {failures} attempts: {reason}{kept}"
                ) from None
            log.info("%s: %s; %s", label, reason, "resuming" if state.have else "retrying")
            time.sleep(min(config.backoff * 2 ** (failures - 1), config.backoff_max))
    progress.close(state.have)


def _describe(exc: BaseException) -> str:
    """One short line for an exception from requests/urllib3 (their str() nests reprs)."""
    if isinstance(exc, (_Incomplete, _Restart)):
        return str(exc)
    text = " ".join(str(exc).split())
    for needle, words in (
        ("connect timeout", "connection timed out"),
        ("timed out", "read timed out"),
        ("Connection refused", "connection refused"),
        ("IncompleteRead", "connection closed mid-body"),
        ("Connection broken", "connection broken mid-body"),
    ):
        if needle in text:
            return words
    return text[:200]


# -- public entry points -------------------------------------------------------------------------------------


def fetch(
    url: str,
    expected: Expected | None,
    *,
    name: str | None = None,
    cache: Cache | str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    mirrors: Sequence[Mirror] | None = None,
    config: FetchConfig | None = None,
    session: requests.Session | None = None,
    allow_unverified: bool = False,
) -> FetchedFile:
    """Return the cached, verified file for `url`, downloading it if needed.

    `expected` None is refused unless `allow_unverified`; such files go to `unverified/` and are
    never loadable. `offline`/`mirrors` default to $ZOO_OFFLINE/$ZOO_MIRROR. `name` is the
    human-readable name under `checkpoints/` (default: the URL's file name).
    """
    cache = cache if isinstance(cache, Cache) else Cache(resolve_cache_dir(cache))
    config = config or FetchConfig()
    offline = offline_from_env() if offline is None else offline
    mirrors = parse_mirrors(os.environ.get("ZOO_MIRROR")) if mirrors is None else mirrors
    name = _safe_name(name or url_filename(url), url)
    if expected is None and not allow_unverified:
        raise InputError(
            f"{url}: no sha256 known (no manifest or lock entry, no 8-hex hash in the file name); "
            "pass --sha256 HEX, or --no-verify to store it unverified"
        )
    found = _find(cache, url, expected, name)
    if found:
        return found
    if offline:
        where = cache.name_path(name) if expected else cache.unverified_path(url, name)
        raise InputError(f"offline (--offline/ZOO_OFFLINE): {url} is not in the cache; expected at {where}")
    try:
        cache.prepare()
    except OSError as exc:
        raise ZooError(f"cannot create the cache in {cache.root}: {exc.strerror or exc}") from None
    lock = cache.download_lock(url, config.lock_timeout)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        log.info("waiting for another process downloading %s", _redact(url))
        try:
            lock.acquire()
        except filelock.Timeout:
            raise ZooError(
                f"{url}: still locked by another download after {config.lock_timeout:.0f} s"
            ) from None
    try:
        found = _find(cache, url, expected, name)  # the other process may have finished it
        if found:
            return found
        download_url = apply_mirrors(url, mirrors)
        if download_url != url:
            log.info("mirror: %s -> %s", _redact(url), _redact(download_url))
        state = _Partial.load(*cache.partial_paths(download_url), download_url)
        with _session(session, config) as sess:
            _download(sess, state, config, name)
        if expected is None:
            log.warning("%s stored UNVERIFIED (no hash to check): it will not be loaded", name)
            return cache.store_unverified(state, url, name)
        digest = state.hasher.hexdigest()
        if not expected.matches(digest):
            state.discard()
            html = (
                " (the server sent an HTML page, not the file)"
                if "html" in (state.content_type or "")
                else ""
            )
            raise ZooError(
                f"sha256 mismatch for {_redact(url)}: expected {expected}, got {digest}{html}; download deleted"
            )
        return cache.store(state, url, digest, name)
    finally:
        lock.release()


def _find(cache: Cache, url: str, expected: Expected | None, name: str) -> FetchedFile | None:
    if expected is None:
        return cache.find_unverified(url, name)
    return cache.find(url, expected, name)


@contextlib.contextmanager
def _session(session: requests.Session | None, config: FetchConfig) -> Iterator[requests.Session]:
    """The caller's session, or a fresh one closed afterwards."""
    if session is not None:
        yield session
        return
    own = make_session(config)
    try:
        yield own
    finally:
        own.close()


def fetch_row(
    row: Row,
    *,
    lock: ChecksumLock,
    update_lock: bool = False,
    cache: Cache | str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    mirrors: Sequence[Mirror] | None = None,
    config: FetchConfig | None = None,
    session: requests.Session | None = None,
) -> FetchedFile:
    """Fetch a manifest row's checkpoint as `checkpoints/<row id><suffix>` and record its full hash.

    With `update_lock`, the lock entry is ignored for the check (so a wrong one can be replaced),
    the cached file is re-hashed first, and the verified hash is written back.
    """
    ckpt = row.checkpoint
    expected = resolve_expected(
        ckpt.url,
        sha256=ckpt.sha256,
        source=f"manifest row {row.id}",
        prefix=ckpt.sha256_prefix,
        locked=None if update_lock else lock.get(ckpt.url),
        lock_path=lock.path,
    )
    cache = cache if isinstance(cache, Cache) else Cache(resolve_cache_dir(cache))
    if expected is None:
        raise InputError(f"manifest row {row.id}: checkpoint {ckpt.url} has no sha256 or sha256 prefix")
    if update_lock:
        cache.reverify(ckpt.url, expected)
    suffix = Path(url_filename(ckpt.url)).suffix
    fetched = fetch(
        ckpt.url,
        expected,
        name=f"{row.id}{suffix}",
        cache=cache,
        offline=offline,
        mirrors=mirrors,
        config=config,
        session=session,
    )
    try:
        if lock.record(ckpt.url, fetched.sha256) and not update_lock:
            log.info("recorded the full sha256 of %s in %s", row.id, lock.path)
    except OSError as exc:  # a read-only checkout must not make a verified download fail
        log.warning("could not record the sha256 of %s in %s: %s", row.id, lock.path, exc)
    return fetched


def load_checkpoint(
    source: FetchedFile | str | os.PathLike[str],
    map_location: Any = "cpu",
    *,
    cache: Cache | str | os.PathLike[str] | None = None,
) -> Any:
    """Unpickle a checkpoint only if its content passed verification, with `weights_only=True`.

    The file is re-hashed now and must be content of the verified store (of `cache`, else of the
    cache that contains it, else the configured one), so a file edited or swapped after the
    download is refused too. Globals outside `zoo.compat`'s allow-list are refused by name.
    """
    if isinstance(source, FetchedFile) and not source.verified:
        raise ZooError(f"{source.path}: refusing to load an unverified download (fetched with --no-verify)")
    path = Path(source.path if isinstance(source, FetchedFile) else source)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    if not isinstance(cache, Cache):
        cache = (
            Cache(cache) if cache is not None else _cache_containing(path) or Cache(resolve_cache_dir(None))
        )
    digest = cache.verified_digest(path)
    if digest is None or (isinstance(source, FetchedFile) and digest != source.sha256):
        raise ZooError(
            f"{path}: refusing to load a file that did not pass verification (its sha256 is not in the "
            f"verified store of {cache.root}); get it with `zoo fetch` (--update-lock re-checks cached files)"
        )
    import torch

    from zoo.compat import checkpoint_safe_globals

    with checkpoint_safe_globals():
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            m = _FORBIDDEN_GLOBAL.search(str(exc))
            what = f"the global {m.group(1)}" if m else " ".join(str(exc).split())[:200]
            raise ZooError(f"{path}: refused to unpickle {what} (not on the checkpoint allow-list)") from None


def _cache_containing(path: Path) -> Cache | None:
    """The cache (a folder with our CACHEDIR.TAG) that `path` lies in, if any."""
    for parent in path.absolute().parents:
        tag = parent / "CACHEDIR.TAG"
        if tag.is_file() and "wholebody-zoo" in tag.read_text(encoding="utf-8", errors="replace"):
            return Cache(parent)
    return None
