"""`zoo data prepare`: bring a data root to the registry's layout, as far as a program may.

Direct downloads go through the zoo fetch cache (resumable, locked) and archives are extracted
safely: members with absolute paths, `..` or links leaving the root are refused, and the content is
extracted to a temporary folder beside the destination and moved into place only when complete.
Files behind cloud-drive pages or access forms cannot be fetched by a program; for those,
`prepare` prints where to get them, where to put them and the checksum to expect, and picks them
up on the next run. Derived files (UBody frames and annotations) are built from their inputs.

Archives nobody publishes a checksum of (COCO's val2017.zip) are pinned by trust on first use:
the first complete download whose every zip member passes its CRC check has its sha256 recorded
in `manifests/datasets.lock`, and every later download must match it (a mismatch is an error and
nothing is extracted). A third party's checksum in the registry (`verified: false`) is only
compared, and a difference is a warning. Unusable inputs (a --cache or --root that is a file or
read-only) are refused before anything is downloaded.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from zoo.data.registry import DATASETS_FILE, DataFile, Dataset, DownloadSource, ManualSource
from zoo.errors import InputError, ZooError

if TYPE_CHECKING:
    from zoo.fetch import Cache, ChecksumLock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """What `prepare` did or needs for one file. status: present|fetched|built|manual|pending|skipped|warning.

    `pending`: a derived file that this command builds once the manual inputs are in place.
    `skipped`: a download not made because of --offline; `dest` is where a copy put by hand is taken.

    A manual step also carries where to get the file (`links`), where to put it (`dest`) and the
    checksum to expect (`sha256`, `sha256_verified`).
    """

    path: str
    status: str
    detail: str
    links: tuple[tuple[str, str], ...] = ()
    dest: Path | None = None
    sha256: str | None = None
    sha256_verified: bool = True


@dataclass(frozen=True)
class PrepareResult:
    root: Path
    steps: tuple[Step, ...]

    @property
    def complete(self) -> bool:
        """True when nothing is left for the user to do."""
        return not any(s.status in ("manual", "pending", "skipped") for s in self.steps)


def _check_member(name: str, archive: Path) -> PurePosixPath:
    """A member name as a safe relative path; ZooError for absolute paths, drive letters and `..`."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise ZooError(f"{archive}: refusing to extract member {name!r}: path leaves the destination")
    return p


def _inside(base: Path, path: Path) -> bool:
    return path == base or base in path.parents


def extract_zip(archive: Path, member: str, dest: Path) -> int:
    """Extract folder `member` of a zip to `dest` (which must not exist yet); returns the file count.

    Names are checked before anything is written, and every write is checked again against the
    real (symlink-resolved) location, so no chain of links can lead outside. Links are recreated
    only when they point inside the extracted folder. The folder appears at `dest` in one rename.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise ZooError(f"{dest}: already exists; refusing to extract {archive} over it")
    prefix = PurePosixPath(member)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ZooError(f"{archive}: not a readable zip archive ({exc})") from None
    with zf:
        plan: list[tuple[zipfile.ZipInfo, PurePosixPath, str | None]] = []
        for info in zf.infolist():
            rel = _check_member(info.filename, archive)
            link = None
            if stat.S_ISLNK(info.external_attr >> 16):
                link = zf.read(info).decode("utf-8", "replace")
                resolved = PurePosixPath(posixpath.normpath(str(rel.parent / link)))
                if PurePosixPath(link).is_absolute() or not resolved.is_relative_to(prefix):
                    raise ZooError(
                        f"{archive}: refusing link {info.filename!r} -> {link!r}: it leaves {member}/"
                    )
            if rel.is_relative_to(prefix):
                plan.append((info, rel, link))
        if not any(not info.is_dir() for info, _, _ in plan):
            raise ZooError(f"{archive}: holds no files under {member}/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.extract-")).resolve()
        top = tmp.joinpath(*prefix.parts)
        try:
            count = 0
            for info, rel, link in plan:
                out = tmp.joinpath(*rel.parts)
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                if not _inside(top, out.parent.resolve()):
                    raise ZooError(
                        f"{archive}: refusing member {info.filename!r}: a link leads it outside {member}/"
                    )
                if link is not None:
                    os.symlink(link, out)
                    if not _inside(top, out.resolve()):
                        raise ZooError(
                            f"{archive}: refusing link {info.filename!r} -> {link!r}: it leaves {member}/"
                        )
                else:
                    with zf.open(info) as src, open(out, "wb") as dst:  # zipfile checks each CRC on read
                        shutil.copyfileobj(src, dst, 1 << 20)
                count += 1
            os.replace(top, dest)
        except zipfile.BadZipFile as exc:
            raise ZooError(f"{archive}: corrupt member ({exc}); delete it from the cache and retry") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return count


def check_zip(path: Path) -> None:
    """Read every member and check its CRC: the archive is complete and intact (ZooError saying why).

    This is what makes a first download trustworthy enough to pin its hash (see the module doc).
    """
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ZooError(f"not a readable zip archive ({exc})") from None
    if bad is not None:
        raise ZooError(f"zip member {bad!r} is corrupt (CRC mismatch)")


def _download(
    file: DataFile, src: DownloadSource, dest: Path, cache: Cache, offline: bool, lock: ChecksumLock
) -> list[Step]:
    """Fetch the archive through the zoo cache, pinned to its recorded hash, and extract its member folder."""
    from zoo.fetch import FirstUse, NotCachedError, fetch, resolve_expected

    ck = src.checksum
    expected = resolve_expected(src.url, sha256=ck.sha256 if ck is not None and ck.verified else None,
                                source=f"{DATASETS_FILE} {file.path}", locked=lock.get(src.url),
                                lock_path=lock.path)  # fmt: skip
    try:
        fetched = fetch(src.url, expected, cache=cache, offline=offline, first_use=FirstUse(lock, check_zip))
    except NotCachedError as exc:
        return [Step(file.path, "skipped", f"not downloaded (--offline): {src.url}; put the archive at "
                     f"{exc.path} or run without --offline", dest=exc.path)]  # fmt: skip
    steps = []
    if ck is not None and not ck.verified and fetched.sha256 != ck.sha256:
        steps.append(Step(file.path, "warning", f"{fetched.path}: sha256 {fetched.sha256} differs from the "
                          f"unverified third-party value {ck.sha256} ({ck.origin})"))  # fmt: skip
    log.info("extracting %s/ from %s to %s", src.member, fetched.path, dest)
    n = extract_zip(fetched.path, src.member, dest)
    steps.append(Step(file.path, "fetched", f"{n} files from {src.url} (sha256 {fetched.sha256}, cached at "
                      f"{fetched.path})"))  # fmt: skip
    return steps


def _manual(file: DataFile, src: ManualSource, dest: Path) -> Step:
    ck = file.checksum
    return Step(file.path, "manual", src.instructions, links=tuple(src.links.items()), dest=dest,
                sha256=ck.sha256 if ck else None, sha256_verified=ck.verified if ck else True)  # fmt: skip


def _present(file: DataFile, dest: Path) -> Step:
    """A file already in place; its checksum is compared when the registry has one."""
    if file.checksum is None or dest.is_dir():
        return Step(file.path, "present", str(dest))
    from zoo.fetch import sha256_file

    digest = sha256_file(dest)
    if digest == file.checksum.sha256:
        return Step(file.path, "present", f"{dest} (sha256 matches)")
    if file.checksum.verified:
        raise InputError(
            f"{dest}: sha256 {digest} does not match the registry's {file.checksum.sha256}; replace the file"
        )
    return Step(file.path, "warning", f"{dest}: sha256 {digest} differs from the unverified third-party value "
                f"{file.checksum.sha256} ({file.checksum.origin})")  # fmt: skip


def prepare(
    dataset: Dataset,
    root: Path,
    *,
    lock: ChecksumLock,
    cache: Path | None = None,
    offline: bool | None = None,
    jobs: int = 2,
) -> PrepareResult:
    """Fetch, extract or build every file of `dataset` under `root` that is missing; report each file.

    Idempotent: files already in place are only checked. `lock` pins archive downloads (see the
    module doc; `zoo.data.datasets_lock(manifests)`). `cache`/`offline` go to zoo.fetch (defaults:
    $ZOO_CACHE / $ZOO_OFFLINE); `jobs` is the number of parallel ffmpeg runs (UBody). With
    `offline`, downloads not in the cache become `skipped` steps and every manual step is still listed.
    """
    from zoo.fetch import Cache, offline_from_env, resolve_cache_dir

    root = Path(root)
    offline = offline_from_env() if offline is None else offline
    cache_obj = Cache(resolve_cache_dir(cache))
    cache_obj.check(writable=False)  # a --cache that is a file is a bad argument whether or not it is used
    _check_root(dataset, root)
    steps: list[Step] = []
    derived = [f for f in dataset.files if f.source.kind == "derived" and not (root / f.path).exists()]
    missing_inputs = False
    for file in dataset.inputs if derived else ():  # UBody: the user's download, only to build derived files
        dest = root / file.path
        if dest.exists():
            steps.append(Step(file.path, "present", str(dest)))
        else:
            steps.append(_manual(file, file.source, dest))
            missing_inputs = True
    for file in dataset.files:
        dest = root / file.path
        src = file.source
        if dest.exists():
            steps.append(_present(file, dest))
        elif src.kind == "download":
            steps += _download(file, src, dest, cache_obj, offline, lock)
        elif src.kind == "manual":
            steps.append(_manual(file, src, dest))
    if derived and missing_inputs:
        for file in derived:
            steps.append(
                Step(file.path, "pending", "built by this command once the inputs above are in place")
            )
    elif derived:
        from zoo.data.ubody import convert_ubody

        steps.append(Step(dataset.layout.ann_file, "built", convert_ubody(root, jobs=jobs)))
    return PrepareResult(root=root, steps=tuple(steps))


def _check_root(dataset: Dataset, root: Path) -> None:
    """The data root must be a folder, and writable while anything is missing (prepare or the user
    will write there): InputError naming it, before any download."""
    from zoo.fetch import dir_write_problem

    if root.exists() and not root.is_dir():
        raise InputError(f"data root {root} is a file, not a folder; pass another --root DIR")
    if all((root / f.path).exists() for f in dataset.files):
        return
    problem = dir_write_problem(root, create=True)
    if problem:
        raise InputError(f"data root {root} is not writable ({problem}); pass another --root DIR")


def require_root(root: Path) -> Path:
    """The data root must exist for `verify`: a missing root is bad input (exit 2), not a failed check."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise InputError(f"data root {root} is a file, not a folder; pass another --root DIR")
    if not root.is_dir():
        raise InputError(f"{root}: data root does not exist (prepare it with `zoo data prepare`)")
    return root
