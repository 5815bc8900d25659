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

A file put at `checkpoints/<name>` by hand (a download from a browser, a copy from another machine)
is taken into the store when its hash matches, so "put the file at <path>" is a real way around a
network that cannot reach the host.

Network failures are prompt and explained: connection failures and unanswered requests are retried
a few times (`FetchConfig.connect_retries`), each retry announced on stderr through the `zoo` logger
(urllib3's own "Retrying ..." warnings are filtered out, they would repeat it in raw form), a host
name that does not resolve is not retried (the resolver already did), and the final error names the
host, what failed and what to do instead.

Names are hard links rather than symlinks: they need no privilege on Windows, survive moving or
re-mounting the cache, cost no space and can never dangle; where the file system has no hard
links the name is a copy, which `load_checkpoint` accepts only because it re-hashes the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import filelock
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, NameResolutionError
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
    `manifests/datasets.lock` has the same format (`header` says what it holds).
    """

    def __init__(self, path: Path, header: str = _LOCK_HEADER) -> None:
        self.path = Path(path)
        self.header = header

    def check_writable(self) -> None:
        """InputError naming the file when it cannot be rewritten: asked before any hashing or download
        by the commands whose output the lock file is (`zoo fetch --update-lock`)."""
        problem = _unwritable_file(self.path)
        if problem:
            raise InputError(f"{self.path}: cannot write the lock file ({problem})")

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
            write_atomic(self.path, self.header + "version: 1\nsha256:\n" + "".join(lines))
        return True


def dir_write_problem(folder: Path, *, create: bool = False) -> str | None:
    """Why no file can be created in `folder` (made first when `create`), or None when one can.

    A real probe (create and delete a temp file), not `os.access`: it also catches read-only
    mounts, ACLs and root on a read-only file system, where permission bits say nothing.
    """
    folder = Path(folder)
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        elif not folder.is_dir():
            return f"{folder} is not a folder" if folder.exists() else f"{folder} does not exist"
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".zoo-write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and Path(exc.filename) != folder else ""
        return f"{exc.strerror or exc}{where}"
    return None


def _unwritable_file(path: Path) -> str | None:
    """Why `write_atomic(path)` would fail (a temp file beside it, then a rename), or None."""
    if path.is_dir():
        return "it is a folder"
    if path.exists() and not os.access(path, os.W_OK):
        return "the file is read-only"
    return dir_write_problem(path.parent)


# -- configuration -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchConfig:
    """Network behaviour. Defaults suit 100-800 MB files on a slow link and fail within seconds when
    the network is down (a refused or unresolvable host) or within ~20 s when it swallows packets
    (3 connect timeouts, each retry announced). $ZOO_TIMEOUT / $ZOO_RETRIES override them
    (`from_env`); tests shrink them."""

    connect_timeout: float = 5.0  # a TCP handshake takes well under a second on any working link
    read_timeout: float = 30.0  # seconds without a byte: the server stalled
    retries: int = 5  # 429/5xx answers (servers under load recover; Retry-After is honoured)
    connect_retries: int = 2  # connection failures and requests left unanswered, per request
    backoff: float = 1.0  # sleep backoff * 2**(n-1) s between tries (Retry-After wins when sent)
    backoff_max: float = 30.0
    resumes: int = 5  # bodies broken mid-transfer, continued with Range, per fetch
    chunk_size: int = 1 << 20
    lock_timeout: float = 3600.0  # how long to wait for another process downloading the same URL

    @classmethod
    def from_env(cls) -> FetchConfig:
        """Defaults, with `ZOO_TIMEOUT=CONNECT[,READ]` (seconds) and `ZOO_RETRIES=N` (connect retries)."""
        config = cls()
        timeout = os.environ.get("ZOO_TIMEOUT", "").strip()
        if timeout:
            try:
                values = [float(v) for v in timeout.split(",")]
            except ValueError:
                values = []
            if not 1 <= len(values) <= 2 or not all(0 < v < float("inf") for v in values):
                raise InputError(f"ZOO_TIMEOUT: expected CONNECT[,READ] seconds > 0, got {timeout!r}")
            config = dataclasses.replace(config, connect_timeout=values[0], read_timeout=values[-1])
        retries = os.environ.get("ZOO_RETRIES", "").strip()
        if retries:
            if not retries.isdigit():
                raise InputError(f"ZOO_RETRIES: expected an integer >= 0, got {retries!r}")
            config = dataclasses.replace(config, connect_retries=int(retries))
        return config


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


class _AnnouncedRetry(Retry):
    """urllib3's Retry, saying on stderr what is retried and when (instead of urllib3's raw warning),
    and not retrying a host name that does not resolve: the resolver has already retried it, so
    another round only stretches a dead network into a long silence."""

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: Any = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> _AnnouncedRetry:
        attempts = len(self.history) + 1
        if isinstance(error, NameResolutionError):
            exc = MaxRetryError(_pool, url or "", error)
            exc.zoo_attempts = attempts  # type: ignore[attr-defined]
            raise exc from error
        try:
            new = super().increment(method, url, response, error, _pool, _stacktrace)
        except MaxRetryError as exc:
            exc.zoo_attempts = attempts  # type: ignore[attr-defined]
            raise
        if error is not None:
            what, left = _describe(error), new.read if self._is_read_error(error) else new.connect
        else:
            what, left = f"HTTP {getattr(response, 'status', '?')}", new.status
        wait = (
            new.get_retry_after(response)
            if response is not None and self.respect_retry_after_header
            else None
        )
        wait = wait or new.get_backoff_time()
        when = f"in {wait:g} s" if wait > 0 else "now"
        left_text = f", {left} more after this" if isinstance(left, int) and left > 0 else ", the last one"
        log.warning(
            "%s: %s; retrying %s (attempt %d%s)", _pool_host(_pool), what, when, attempts + 1, left_text
        )
        return new


def _pool_host(pool: Any) -> str:
    host, port = getattr(pool, "host", None), getattr(pool, "port", None)
    if not host:
        return "the server"
    return host if port in (None, 80, 443) else f"{host}:{port}"


class _NoRawRetryWarnings(logging.Filter):
    """Drop urllib3's "Retrying (Retry(total=...)) after connection broken by ..." warnings:
    `_AnnouncedRetry` already said the same in one readable line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Retrying (")


_URLLIB3_POOL_LOG = logging.getLogger("urllib3.connectionpool")
if not any(isinstance(f, _NoRawRetryWarnings) for f in _URLLIB3_POOL_LOG.filters):
    _URLLIB3_POOL_LOG.addFilter(_NoRawRetryWarnings())


def make_session(config: FetchConfig) -> requests.Session:
    """A session whose adapter retries connect/read errors and 429/5xx with backoff, never a 404."""
    retry = _AnnouncedRetry(
        total=None,
        connect=config.connect_retries,
        read=config.connect_retries,
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

    def check(self, *, writable: bool) -> None:
        """InputError naming the cache when it cannot serve (a file where the folder should be) or,
        with `writable`, cannot take a download: found in milliseconds, before any network."""
        existing = self.root
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if not existing.is_dir():
            what = "is a file" if existing == self.root else f"lies under {existing}, which is a file"
            raise InputError(
                f"cache {self.root} {what}, not a folder; pass another --cache DIR (or ZOO_CACHE)"
            )
        if not writable:
            return
        try:
            self.prepare()
            problem = next(
                filter(None, map(dir_write_problem, (self.blobs, self.names, self.partial, self.locks))), None
            )
        except OSError as exc:
            problem = exc.strerror or str(exc)
        if problem:
            raise InputError(
                f"cache {self.root} is not writable ({problem}); pass another --cache DIR (or ZOO_CACHE)"
            )

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
        if self.lookup(url) == sha256:  # already known: no lock, so a read-only cache still serves
            return
        with filelock.FileLock(self.locks / "index.lock"):
            index = self._read_index()
            if index.get(url) == sha256:
                return
            index[url] = sha256
            write_atomic(self.index_path, json.dumps({"sha256": index}, indent=1, sort_keys=True) + "\n")

    # lookups

    def find(self, url: str, expected: Expected, name: str, *, by_hand: bool = True) -> FetchedFile | None:
        """The verified file for `url` if the store has content with the expected hash, or (`by_hand`)
        a file with that hash put at `checkpoints/<name>` by hand."""
        digest = expected.sha256 or self.lookup(url)
        if digest is None or not expected.matches(digest) or not self.blob_path(digest).is_file():
            return self.adopt(url, name, expected.matches, f"the expected {expected}") if by_hand else None
        return self._publish(url, digest, name)

    def find_first_use(
        self, url: str, name: str, check: Callable[[Path], None], *, by_hand: bool = True
    ) -> FetchedFile | None:
        """For a URL with no recorded hash: this cache's own earlier download of it (the index), else
        (`by_hand`) a file put at `checkpoints/<name>` by hand that passes `check`."""
        digest = self.lookup(url)
        if digest is not None and self.blob_path(digest).is_file():
            return self._publish(url, digest, name)
        return self.adopt(url, name, lambda _: True, "", check=check) if by_hand else None

    def adopt(
        self,
        url: str,
        name: str,
        accept: Callable[[str], bool],
        wanted: str,
        check: Callable[[Path], None] | None = None,
    ) -> FetchedFile | None:
        """Take a file the user put at `checkpoints/<name>` into the store when `accept(its sha256)`
        (and `check(path)` raises nothing); a file that does not match is left alone with a warning."""
        path = self.name_path(name)
        if not path.is_file():
            return None
        digest = sha256_file(path)
        if not accept(digest):
            log.warning("ignoring %s: its sha256 %s is not %s", path, digest, wanted)
            return None
        if check is not None:
            try:
                check(path)
            except ZooError as exc:
                raise InputError(f"{path}: {exc}; replace or delete it") from None
        blob = self.blob_path(digest)
        if not blob.is_file():
            tmp = blob.with_name(f".{digest}.{uuid.uuid4().hex[:12]}.tmp")
            try:
                blob.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(path, tmp)
                except OSError:  # no hard links here: a copy (the hash was taken of `path`, so re-check)
                    shutil.copyfile(path, tmp)
                    if sha256_file(tmp) != digest:
                        raise ZooError(f"{path} changed while it was being copied into the cache") from None
                os.replace(tmp, blob)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise InputError(f"cache {self.root} is not writable ({exc.strerror or exc})") from None
        log.info("took %s into the cache (sha256 %s)", path, digest)
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
            try:
                self.blob_path(digest).unlink(missing_ok=True)
            except OSError as exc:
                raise InputError(f"cache {self.root} is not writable ({exc.strerror or exc})") from None

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
        link = self.name_path(name)
        blob = self.blob_path(digest)
        tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            self.remember(url, digest)
            if not (link.is_file() and os.path.samefile(link, blob)):
                link.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(blob, tmp)
                except OSError:  # no hard links here (some network/FAT file systems): a copy
                    shutil.copyfile(blob, tmp)
                os.replace(tmp, link)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise InputError(f"cache {self.root} is not writable ({exc.strerror or exc})") from None
        return FetchedFile(url, link, digest, verified=True)


def _url_key(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:32]


def url_filename(url: str) -> str:
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def _safe_name(name: str, url: str) -> str:
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name:
        raise InputError(f"{url}: cannot use {name!r} as a cache file name")
    return name


def _host(url: str) -> str:
    """host[:port] of a URL, without credentials."""
    return urlsplit(url).netloc.rsplit("@", 1)[-1]


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


class _Unreachable(Exception):
    """The server could not be reached or kept failing; `fetch` adds what the user can do instead."""


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
        attempts = next((e.zoo_attempts for e in _causes(exc) if hasattr(e, "zoo_attempts")), 1)
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        raise _Unreachable(f"{_host(state.url)}: {_describe(exc)}{tries}") from None
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
            if resp.status_code in _RETRY_STATUS:
                raise _Unreachable(
                    f"{_host(state.url)}: HTTP {resp.status_code} {resp.reason} after {config.retries} retries"
                )
            raise ZooError(f"download of {url} failed: HTTP {resp.status_code} {resp.reason}")
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
                kept = f", {state.have} bytes kept for the next try" if state.have else ""
                raise _Unreachable(f"{_host(state.url)}: {reason}, {failures} attempts{kept}") from None
            log.info("%s: %s; %s", label, reason, "resuming" if state.have else "retrying")
            time.sleep(min(config.backoff * 2 ** (failures - 1), config.backoff_max))
    progress.close(state.have)


_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused (nothing listens on that port)",
    errno.ECONNRESET: "connection reset by the server",
    errno.ENETUNREACH: "network unreachable (no route: offline?)",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ETIMEDOUT: "connection timed out",
}


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what it wraps: requests -> urllib3 MaxRetryError -> its reason -> the socket error."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 12:
        chain.append(current)
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            current = reason
        elif current.args and isinstance(current.args[0], BaseException):
            current = current.args[0]
        else:
            current = current.__cause__ or current.__context__
    return chain


def _describe(exc: BaseException) -> str:
    """What failed, as complete words, from requests/urllib3's nested exceptions (their str() nests
    reprs of reprs, which used to end up cut mid-word)."""
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ProtocolError, ReadTimeoutError

    if isinstance(exc, (_Incomplete, _Restart)):
        return str(exc)
    chain = _causes(exc)
    for e in chain:
        if isinstance(e, (NameResolutionError, socket.gaierror)):
            return "the host name does not resolve (no network, or DNS unreachable)"
        if isinstance(e, (ReadTimeoutError, requests.exceptions.ReadTimeout)):
            return "read timed out (connected, but no data came within the read timeout)"
        if isinstance(e, ConnectTimeoutError) and not isinstance(e, NewConnectionError):
            return "connection timed out (no answer to the connection request)"
        if isinstance(e, OSError) and e.errno in _ERRNO_WORDS:
            return _ERRNO_WORDS[e.errno]
        if isinstance(e, requests.exceptions.SSLError):
            break
        if isinstance(e, ProtocolError) and str(e).startswith("Connection aborted"):
            return "the server closed the connection without answering"
        if isinstance(e, ProtocolError) or "IncompleteRead" in type(e).__name__:
            return "connection closed mid-body"
    last = chain[-1]
    if isinstance(last, NewConnectionError):  # urllib3 wraps the socket error in its message only
        return " ".join(str(last).split(": ", 1)[-1].split())
    return " ".join(str(last).split()) or type(last).__name__


# -- public entry points -------------------------------------------------------------------------------------


class NotCachedError(InputError):
    """Offline, and the file is not in the cache. `path` is where a copy put by hand is picked up."""

    def __init__(self, message: str, url: str, path: Path) -> None:
        super().__init__(message)
        self.url = url
        self.path = path


@dataclass(frozen=True)
class FirstUse:
    """Trust on first use, for files nobody publishes a hash of (COCO's val2017.zip).

    The first complete download that passes `check` (e.g. every zip member's CRC) has its sha256
    recorded in `lock`; the caller passes that hash as `expected` from then on, so any later
    download must be byte-identical to the first one.
    """

    lock: ChecksumLock
    check: Callable[[Path], None]  # raises ZooError (why, without the path) for a broken or partial file


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
    first_use: FirstUse | None = None,
) -> FetchedFile:
    """Return the cached, verified file for `url`, downloading it if needed.

    `expected` None is refused unless `first_use` (the download is checked, stored and its hash
    recorded) or `allow_unverified` (stored under `unverified/`, never loadable). `offline`,
    `mirrors` and `config` default to $ZOO_OFFLINE, $ZOO_MIRROR and `FetchConfig.from_env()`.
    `name` is the human-readable name under `checkpoints/` (default: the URL's file name).
    """
    cache = cache if isinstance(cache, Cache) else Cache(resolve_cache_dir(cache))
    cache.check(writable=False)
    config = config or FetchConfig.from_env()
    offline = offline_from_env() if offline is None else offline
    mirrors = parse_mirrors(os.environ.get("ZOO_MIRROR")) if mirrors is None else mirrors
    name = _safe_name(name or url_filename(url), url)
    if expected is not None:
        first_use = None
    elif first_use is None and not allow_unverified:
        raise InputError(
            f"{url}: no sha256 known (no manifest or lock entry, no 8-hex hash in the file name); "
            "pass --sha256 HEX, or --no-verify to store it unverified"
        )
    found = _find(cache, url, expected, name, first_use)
    if found:
        return found
    where = (
        cache.unverified_path(url, name) if expected is None and first_use is None else cache.name_path(name)
    )
    if offline:
        raise NotCachedError(
            f"offline (--offline/ZOO_OFFLINE): {url} is not in the cache; put the file at {where}", url, where
        )
    cache.check(writable=True)
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
        found = _find(cache, url, expected, name, first_use, by_hand=False)  # another process's download?
        if found:
            return found
        download_url = apply_mirrors(url, mirrors)
        if download_url != url:
            log.info("mirror: %s -> %s", _redact(url), _redact(download_url))
        state = _Partial.load(*cache.partial_paths(download_url), download_url)
        try:
            with _session(session, config) as sess:
                _download(sess, state, config, name)
        except _Unreachable as exc:
            raise ZooError(f"cannot download {_redact(url)}: {exc}; {_advice(url, where)}") from None
        digest = state.hasher.hexdigest()
        if first_use is not None:
            try:
                first_use.check(state.part)
            except ZooError as exc:
                state.discard()
                raise ZooError(f"download of {_redact(url)} rejected: {exc}; deleted") from None
            fetched = cache.store(state, url, digest, name)
            _record_first_use(first_use.lock, url, digest)
            return fetched
        if expected is None:
            log.warning("%s stored under unverified/ (no hash to check): load_checkpoint refuses it", name)
            return cache.store_unverified(state, url, name)
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


def _advice(url: str, path: Path) -> str:
    """What to do when the host cannot be reached, in the words of the options that do it."""
    parts = urlsplit(url)
    prefix = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}/"
    return (
        f"retry when the network is back, use a mirror (ZOO_MIRROR='{prefix}=https://MIRROR/'), "
        f"or put the file at {path} and rerun (--offline never touches the network)"
    )


def _record_first_use(lock: ChecksumLock, url: str, digest: str) -> None:
    try:
        if not lock.record(url, digest):
            return
    except OSError as exc:  # the download itself is good; only the pin for later ones is lost
        log.warning("could not record the sha256 of %s in %s (%s): later downloads are not pinned to it",
                    _redact(url), lock.path, exc.strerror or exc)  # fmt: skip
        return
    log.info("recorded sha256 %s of %s in %s: later downloads must match it", digest, _redact(url), lock.path)


def _find(
    cache: Cache,
    url: str,
    expected: Expected | None,
    name: str,
    first_use: FirstUse | None = None,
    *,
    by_hand: bool = True,
) -> FetchedFile | None:
    if expected is not None:
        return cache.find(url, expected, name, by_hand=by_hand)
    if first_use is None:
        return cache.find_unverified(url, name)
    found = cache.find_first_use(url, name, first_use.check, by_hand=by_hand)
    if found is not None:
        _record_first_use(first_use.lock, url, found.sha256 or "")
    return found


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
    expected = row_expected(row, lock, update_lock=update_lock)
    cache = cache if isinstance(cache, Cache) else Cache(resolve_cache_dir(cache))
    if update_lock:
        cache.check(writable=False)
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
    except OSError as exc:
        if update_lock:  # the lock file is this command's output
            raise InputError(f"{lock.path}: cannot write the lock file ({exc.strerror or exc})") from None
        # a read-only checkout must not make a verified download fail
        log.warning("could not record the sha256 of %s in %s: %s", row.id, lock.path, exc.strerror or exc)
    return fetched


def row_expected(row: Row, lock: ChecksumLock, *, update_lock: bool = False) -> Expected:
    """The hash a row's checkpoint must have (see `resolve_expected`); InputError when the manifest,
    the lock file and the file name disagree. Cheap: callers check every row before downloading any.
    With `update_lock`, the lock entry is left out, so that a wrong one can be replaced."""
    ckpt = row.checkpoint
    expected = resolve_expected(
        ckpt.url,
        sha256=ckpt.sha256,
        source=f"manifest row {row.id}",
        prefix=ckpt.sha256_prefix,
        locked=None if update_lock else lock.get(ckpt.url),
        lock_path=lock.path,
    )
    if expected is None:
        raise InputError(f"manifest row {row.id}: checkpoint {ckpt.url} has no sha256 or sha256 prefix")
    return expected


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
