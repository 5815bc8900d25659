"""Shared fixtures: a small synthetic COCO-WholeBody set and a local zoo of random-weight
checkpoints of the real architectures, served from a loopback HTTP server (the real fetch path)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 images with people, crowd and empty cases; the same root for every test that only reads it."""
    from zoo.data import synthesize

    return synthesize(tmp_path_factory.mktemp("synth"), n_images=3, seed=0).root


@pytest.fixture(scope="session")
def data_roots(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A data root per dataset id: the synthetic COCO-WholeBody set, and the same images and
    annotations laid out as the UBody2D val root (annotations/val_annotations.json, images/)."""
    import json
    import shutil

    from zoo.data import dataset_paths, load_registry
    from zoo.data.paths import SYNTH_MARKER

    registry = load_registry(MANIFESTS)
    coco = dataset_paths(registry.get("coco-wholebody-v1.0-val"), synth_root)
    ubody = dataset_paths(registry.get("ubody2d-val"), tmp_path_factory.mktemp("ubody"))
    ubody.ann_file.parent.mkdir(parents=True)
    shutil.copytree(coco.img_dir, ubody.img_dir)
    ubody.ann_file.write_text(json.dumps(json.loads(coco.ann_file.read_text())))
    shutil.copy(synth_root / SYNTH_MARKER, ubody.root / SYNTH_MARKER)  # the same synthetic set
    return {"coco-wholebody-v1.0-val": coco.root, "ubody2d-val": ubody.root}


@pytest.fixture(scope="session")
def zoo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from zoo.loopback import LoopbackServer

    with LoopbackServer(tmp_path_factory.mktemp("srv")) as srv:
        yield srv


@pytest.fixture(scope="session")
def local_zoo(
    tmp_path_factory: pytest.TempPathFactory, zoo_server, data_roots: dict[str, Path]
) -> Callable[..., Path]:
    """`local_zoo(*row_ids)` -> a manifest folder whose rows point at served random-weight checkpoints."""
    from zoo import compat

    compat.apply()
    from zoo.data import dataset_paths, load_registry
    from zoo.evaluate import load_config
    from zoo.manifest import load_manifests
    from zoo.randweights import local_manifests, random_state_dict, save_checkpoint

    manifests = load_manifests(MANIFESTS)
    registry = load_registry(MANIFESTS)
    made: dict[str, tuple[str, Path]] = {}
    server_root = Path(zoo_server.root)

    def make(*row_ids: str) -> Path:
        for row_id in row_ids:
            if row_id not in made:
                row = manifests.row(row_id)
                cfg = load_config(row, dataset_paths(registry.get(row.dataset), data_roots[row.dataset]))
                path = save_checkpoint(random_state_dict(cfg, seed=len(made)), server_root, row.id)
                made[row_id] = (zoo_server.url(path.name), path)
        dst = tmp_path_factory.mktemp("manifests")
        return local_manifests(MANIFESTS, dst, {r: made[r] for r in row_ids})

    return make
