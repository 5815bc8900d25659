"""The dataset registry, `manifests/datasets.yaml`: what each evaluation data root holds and where it comes from.

Why a registry: the published numbers depend on exactly these files (one annotation file, one
detection file, 5000 images), two of which only exist behind Google Drive/OneDrive links. Writing
their paths, sources, checksums and licences down once lets `prepare` fetch what it can, tell the
user precisely what to fetch by hand, and lets `verify` check a root before hours of evaluation.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from zoo.data.paths import DataPaths
from zoo.errors import InputError
from zoo.fileio import read_yaml

DATASETS_FILE = "datasets.yaml"
DATASETS_LOCK = "datasets.lock"  # beside checkpoints.lock: sha256 of each archive's first complete download
_DATASETS_LOCK_HEADER = (
    "# Full sha256 of each dataset archive, keyed by URL: written by `zoo data prepare` on the first\n"
    "# complete download that passed its checks (trust on first use: COCO publishes no checksums).\n"
    "# Every later download must match it. Generated; delete an entry to trust a new download again.\n"
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _relative(value: str) -> str:
    """A path under the data root: relative, POSIX, no `..`, so no entry can point outside the root."""
    p = PurePosixPath(value)
    if not value or p.is_absolute() or ".." in p.parts or "\\" in value:
        raise ValueError(f"must be a relative path under the data root without '..', got {value!r}")
    return value


RelPath = Annotated[str, AfterValidator(_relative)]


class Checksum(_Model):
    """A sha256 and how far it can be trusted."""

    sha256: str
    verified: bool  # False: copied from a third party and not yet confirmed; a mismatch is only a warning
    origin: str  # where the value comes from

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _SHA256.match(v):
            raise ValueError("must be 64 lowercase hex digits")
        return v


class DownloadSource(_Model):
    """A file with a direct URL: fetched through the zoo cache, archives extracted safely."""

    kind: Literal["download"]
    url: str
    archive: Literal["zip"]
    member: RelPath  # the folder inside the archive that becomes the file's path
    checksum: Checksum | None = None  # of the archive

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://\S+$", v):
            raise ValueError(f"not an http(s) URL: {v!r}")
        return v


class ManualSource(_Model):
    """A file behind a login, a form or a cloud-drive page: the user fetches it, `prepare` checks it."""

    kind: Literal["manual"]
    links: dict[str, str]  # label (e.g. "Google Drive") -> URL
    instructions: str


class DerivedSource(_Model):
    """A file `zoo data prepare` builds from the dataset's inputs."""

    kind: Literal["derived"]
    by: Literal["ubody2d-convert"]
    note: str


Source = Annotated[DownloadSource | ManualSource | DerivedSource, Field(discriminator="kind")]
FileKind = Literal[
    "images",
    "coco-wholebody-annotations",
    "coco-detections",
    "ubody-videos",
    "ubody-annotations",
    "ubody-split",
]


class DataFile(_Model):
    """One file or folder under the data root."""

    path: RelPath
    kind: FileKind
    count: int | None = Field(default=None, ge=0)  # images in a folder, boxes in a detection file
    count_verified: bool = True  # False: the count is a third party's; a mismatch is only a warning
    checksum: Checksum | None = None
    source: Source
    license: str | None = None


class InputFile(DataFile):
    """A file the user provides so that `prepare` can build derived files from it."""

    source: ManualSource


class Layout(_Model):
    """Paths under the root that the evaluation reads (mmpose's ann_file, data_prefix.img, bbox_file)."""

    ann_file: RelPath
    img_dir: RelPath
    det_file: RelPath | None = None


class Dataset(_Model):
    """One evaluation set. `id` is its key in the registry."""

    id: str
    title: str
    aliases: list[str] = []
    root: RelPath  # default folder under $ZOO_DATA_ROOT (else ./data): mmpose's data/<root>
    homepage: str
    license: str
    layout: Layout
    files: list[DataFile]  # what evaluation reads; `verify` checks each
    inputs: list[InputFile] = []  # what `prepare` builds derived files from
    notes: list[str] = []


class Registry(_Model):
    """All datasets of a manifest folder, by id."""

    path: Path
    datasets: dict[str, Dataset]

    def get(self, name: str) -> Dataset:
        """The dataset with this id or alias; InputError listing the known ids otherwise."""
        if name in self.datasets:
            return self.datasets[name]
        for ds in self.datasets.values():
            if name in ds.aliases:
                return ds
        known = sorted([*self.datasets, *(a for d in self.datasets.values() for a in d.aliases)])
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
        raise InputError(f"{self.path}: unknown dataset {name!r}{hint}")


def _error(path: Path, dataset: str | None, exc: ValidationError) -> InputError:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged-union")))
    where = f"dataset {dataset!r}: " if dataset else ""
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return InputError(f"{path}: {where}{field or 'top level'}: {err['msg']}{more}")


def load_registry(manifests: Path) -> Registry:
    """Read and validate `<manifests>/datasets.yaml`; InputError naming file, dataset id and field."""
    path = Path(manifests) / DATASETS_FILE
    doc = read_yaml(path)
    if not isinstance(doc, dict) or set(doc) != {"version", "datasets"} or doc.get("version") != 1:
        raise InputError(f"{path}: top level must be exactly `version: 1` and `datasets:`")
    if not isinstance(doc["datasets"], dict) or not doc["datasets"]:
        raise InputError(f"{path}: datasets: must be a non-empty mapping of dataset ids")
    datasets = {}
    seen: dict[str, str] = {}
    for key, body in doc["datasets"].items():
        if not isinstance(body, dict):
            raise InputError(f"{path}: dataset {key!r}: must be a mapping")
        try:
            ds = Dataset.model_validate({"id": key, **body})
        except ValidationError as exc:
            raise _error(path, key, exc) from None
        for name in (key, *ds.aliases):
            if name in seen:
                raise InputError(
                    f"{path}: dataset {key!r}: aliases: {name!r} already names dataset {seen[name]!r}"
                )
            seen[name] = key
        paths = [f.path for f in ds.files]
        if len(set(paths)) != len(paths):
            raise InputError(f"{path}: dataset {key!r}: files: duplicate path")
        for field, value in (("layout.ann_file", ds.layout.ann_file), ("layout.img_dir", ds.layout.img_dir),
                             ("layout.det_file", ds.layout.det_file)):  # fmt: skip
            if value is not None and value not in paths:
                raise InputError(f"{path}: dataset {key!r}: {field}: {value!r} is not one of its files")
        datasets[key] = ds
    return Registry(path=path, datasets=datasets)


def datasets_lock(manifests: Path):  # -> zoo.fetch.ChecksumLock (imported lazily: requests)
    """`<manifests>/datasets.lock`, the record `prepare` pins archive downloads to."""
    from zoo.fetch import ChecksumLock

    return ChecksumLock(Path(manifests) / DATASETS_LOCK, header=_DATASETS_LOCK_HEADER)


def default_root(dataset: Dataset) -> Path:
    """`$ZOO_DATA_ROOT/<root>`, else `data/<root>` (mmpose's data/coco, data/UBody) relative to the cwd."""
    return Path(os.environ.get("ZOO_DATA_ROOT") or "data") / dataset.root


def dataset_paths(dataset: Dataset, root: Path | None = None) -> DataPaths:
    """The evaluation inputs of `dataset` under `root` (default: `default_root`). Checks nothing on disk."""
    root = Path(root) if root is not None else default_root(dataset)
    lay = dataset.layout
    return DataPaths(
        root=root,
        ann_file=root / lay.ann_file,
        img_dir=root / lay.img_dir,
        det_file=root / lay.det_file if lay.det_file else None,
    )
