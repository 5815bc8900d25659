"""Inference at the hardware's pace: one pass over the crops feeds every model of a group of rows,
and decoding runs beside the model instead of after it.

mmpose's test loop (`Runner.test` -> `model.test_step`) runs, per batch and in one thread: the data
preprocessor, which deep-copies every sample's metainfo (thousands of `copy.deepcopy` calls a box),
the forward pass and flip test, then the heatmap decoding of every box on one CPU core (1-14 ms a
box), while the GPU waits. Here, per batch:

1. the main thread cuts the next batch from the crop stream (`zoo.crops`: each image decoded once),
   moves it to the device and launches the model (`HeatmapModel`: the config's data preprocessor on
   the stacked crops, the backbone and head on the image and its flip, mmpose's `flip_heatmaps`);
2. the flip-averaged heatmaps are copied to pinned host memory on a side stream, and a decode thread
   (`zoo.decode`, vectorised, the GIL released in numpy and OpenCV) turns them into keypoints in
   image coordinates while the GPU already runs the next batch;
3. rows whose crops are identical (`zoo.crops.CropRecipe.key` and the dataset config) share the
   pass: every chunk of crops is decoded and warped once and cut into each row's own batches (each
   row keeps its config's batch size, so every row sees the batches it would see alone).

The numbers are mmpose's: the same batches, the same preprocessing and forward functions with the
same numerics flags (`Numerics`, stored in every record), mmpose's own flip function, and a decoder
checked against mmpose's decode on each row's first batch (a mismatch switches that row to mmpose's
decode). An optional CUDA graph replays the exact kernels of the eager forward with less launch
overhead; it is off unless asked for, and measured in benchmarks/gpu_speed.py.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from zoo.errors import ZooError
from zoo.metrics import Instances

log = logging.getLogger(__name__)


class UnsupportedModel(ZooError):
    """The model is not a top-down heatmap estimator this module runs exactly (use the reference path)."""


# --------------------------------------------------------------------------------------------------
# numerics


@dataclass(frozen=True)
class Numerics:
    """The settings that decide a forward pass's floating-point results, as a fresh mmengine Runner
    has them for the config: torch's defaults (TF32 for cuDNN convolutions, full float32 matmuls),
    `cudnn.benchmark` from the config's env_cfg and `cudnn.deterministic` from its randomness."""

    device: str
    cudnn_benchmark: bool
    cudnn_deterministic: bool
    cudnn_allow_tf32: bool
    matmul_allow_tf32: bool
    cpu_threads: int
    cuda_graphs: bool = False

    @classmethod
    def for_config(cls, cfg: Any, device: str, cuda_graphs: bool = False) -> Numerics:
        import torch

        env = cfg.get("env_cfg") or {}
        randomness = cfg.get("randomness") or {}
        return cls(
            device=device,
            cudnn_benchmark=bool(env.get("cudnn_benchmark", False)),
            cudnn_deterministic=bool(randomness.get("deterministic", False)),
            cudnn_allow_tf32=True,  # torch's default, which the Runner keeps
            matmul_allow_tf32=os.environ.get("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE") == "1",
            cpu_threads=torch.get_num_threads(),
            cuda_graphs=cuda_graphs and device.startswith("cuda"),
        )

    def apply(self) -> None:
        import torch

        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        torch.backends.cudnn.allow_tf32 = self.cudnn_allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.matmul_allow_tf32

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def numbers_key(self) -> dict[str, Any]:
        """The fields that can change a predicted bit (the device's name is in the record's
        environment; cuda_graphs replays the same kernels and is recorded, not fingerprinted)."""
        out = self.to_json()
        out.pop("cuda_graphs")
        return out


# --------------------------------------------------------------------------------------------------
# the model: uint8 crops -> flip-averaged heatmaps


class HeatmapModel:
    """The heatmaps mmpose's `TopdownPoseEstimator.predict` hands its head's decoder, for a batch of
    uint8 crops (N, C, H, W) already on the model's device.

    It runs mmpose's own functions in mmpose's order: the data preprocessor's arithmetic (channel
    order, float, normalisation, on the stacked batch: elementwise, so the same values as per
    sample; `preprocess`), then `extract_feat` on the images and on their horizontal flips, the
    head's `forward` on both, and `flip_heatmaps` + average exactly as `HeatmapHead.predict` composes
    them. Nothing in it waits for the GPU, so the main thread can queue the next batch while the
    GPU computes. Only models whose `predict` methods are those two are accepted (all 12 rows are);
    others raise UnsupportedModel.
    """

    def __init__(self, model: Any, flip_indices: Sequence[int], cuda_graphs: bool = False) -> None:
        from mmpose.models.heads import HeatmapHead
        from mmpose.models.pose_estimators import TopdownPoseEstimator

        if type(model).predict is not TopdownPoseEstimator.predict or not model.with_head:
            raise UnsupportedModel(f"{type(model).__name__}: not a plain top-down estimator")
        if type(model.head).predict is not HeatmapHead.predict:
            raise UnsupportedModel(f"{type(model.head).__name__}: its predict is not HeatmapHead's")
        if model.test_cfg.get("output_heatmaps") or model.test_cfg.get("output_keypoint_indices") is not None:
            raise UnsupportedModel("test_cfg asks for outputs this path does not produce")
        preprocessor = model.data_preprocessor
        if getattr(preprocessor, "pad_size_divisor", None) != 1 or not hasattr(
            preprocessor, "_enable_normalize"
        ):
            raise UnsupportedModel(
                f"{type(preprocessor).__name__}: a preprocessor this path does not reproduce"
            )
        self.model = model
        self.preprocessor = preprocessor
        self.head = model.head
        self.codec = model.head.decoder
        self.test_cfg = dict(model.test_cfg)
        self.flip = bool(self.test_cfg.get("flip_test", False))
        self.flip_indices = list(flip_indices)
        self.cuda_graphs = cuda_graphs
        self.graph_error = ""
        self._graphs: dict[tuple[int, ...], Any] = {}
        self._flip_index: dict[Any, Any] = {}  # flip_indices as a tensor on each device

    def _features(self, x: Any) -> Any:
        """The head's raw outputs for the image (and its flip): the part a CUDA graph may replay."""
        feats = self.model.extract_feat(x)
        if not self.flip:
            return (self.head.forward(feats),)
        feats_flip = self.model.extract_feat(x.flip(-1))
        return self.head.forward(feats), self.head.forward(feats_flip)

    def preprocess(self, crops: Any) -> Any:
        """The data preprocessor's arithmetic on a stacked uint8 batch (mmengine's ImgDataPreprocessor:
        channel order, float, (x - mean) / std; no padding at divisor 1). Its own forward indexes the
        channels with a Python list, a host-to-device copy that waits for the GPU to drain before
        every batch; reversing the three channels with `flip` gives the same values without it."""
        p = self.preprocessor
        x = crops
        if p._channel_conversion:
            if x.shape[1] != 3:
                raise UnsupportedModel(f"channel conversion of {x.shape[1]} channels")
            x = x.flip(1)  # [2, 1, 0]
        x = x.float()
        if p._enable_normalize:
            x = (x - p.mean) / p.std
        return x

    def __call__(self, crops: Any) -> Any:
        import torch
        from mmpose.models.utils.tta import flip_heatmaps

        x = self.preprocess(crops)
        outputs = self._replay(x) if self.cuda_graphs and x.is_cuda else self._features(x)
        if not self.flip:
            return outputs[0]
        heatmaps, flipped = outputs
        if heatmaps.device not in self._flip_index:  # a device tensor: a list would be copied per batch
            self._flip_index[heatmaps.device] = torch.tensor(self.flip_indices, device=heatmaps.device)
        flipped = flip_heatmaps(
            flipped,
            flip_mode=self.test_cfg.get("flip_mode", "heatmap"),
            flip_indices=self._flip_index[heatmaps.device],
            shift_heatmap=self.test_cfg.get("shift_heatmap", False),
        )
        return (heatmaps + flipped) * 0.5

    def _replay(self, x: Any) -> Any:
        """`_features(x)` through a CUDA graph captured once per input shape (the same kernels). A
        model that cannot be captured runs eagerly from then on; `graph_error` says why."""
        import torch

        graph = self._graphs.get(tuple(x.shape))
        if graph is None:
            try:
                graph = self._capture(x)
            except Exception as exc:  # noqa: BLE001 - any capture failure: the eager path is the same math
                self.cuda_graphs, self.graph_error = False, f"{type(exc).__name__}: {exc}"
                log.warning("CUDA graph capture failed (%s); running eagerly", self.graph_error)
                torch.cuda.synchronize()
                return self._features(x)
        cuda_graph, static_x, static_out = graph
        static_x.copy_(x)
        cuda_graph.replay()
        return tuple(out.clone() for out in static_out)

    def _capture(self, x: Any) -> tuple[Any, Any, Any]:
        import torch

        static_x = x.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: cuDNN plans and the allocator settle before capture
                self._features(static_x)
        torch.cuda.current_stream().wait_stream(side)
        cuda_graph = torch.cuda.CUDAGraph()
        # thread_local: the decode threads keep synchronising on their own events during the capture
        with torch.cuda.graph(cuda_graph, capture_error_mode="thread_local"):
            static_out = self._features(static_x)
        graph = self._graphs[tuple(x.shape)] = (cuda_graph, static_x, static_out)
        return graph


# --------------------------------------------------------------------------------------------------
# decoding: heatmaps -> keypoints in image coordinates


class Decoder:
    """A row's decode: `zoo.decode` when it reproduces the codec, checked against mmpose's own
    decode on the first batch; mmpose's per-instance decode otherwise. Thread-safe. With a
    `DecodePool` attached (`pool`), `zoo.decode` runs in its worker processes."""

    def __init__(self, codec: Any, row_id: str) -> None:
        from zoo.decode import BatchDecoder, UnsupportedCodec

        self.codec = codec
        self.row_id = row_id
        self.pool: DecodePool | None = None
        self.path = "zoo.decode"
        self.note = ""
        try:
            self.fast: Any = BatchDecoder.for_codec(codec)
        except UnsupportedCodec as exc:
            self.fast, self.path, self.note = None, "mmpose", str(exc)
        self._checked = threading.Event()
        self._lock = threading.Lock()
        self._one_at_a_time = threading.Lock()

    @property
    def wants_processes(self) -> bool:
        """Whether this decode belongs in a `DecodePool` (when the pass has one, `POOL_MIN_WORKERS`):
        DARK and UDP blur, which costs more than copying the heatmaps into shared memory; plain MSRA
        is an argmax and a few reads, cheaper than the copy (on 2 cores two processes 0.6x one
        thread, two threads 1.8x), so it stays in the decode threads."""
        return self.fast is not None and self.fast.kind != "msra"

    def _mmpose(self, heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = [self.codec.decode(hm) for hm in heatmaps]
        return np.concatenate([k for k, _ in out]), np.concatenate([s for _, s in out])

    def __call__(self, heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, K, 2) keypoints in the model's input space and (N, K) scores."""
        if self.fast is None:
            return self._mmpose(heatmaps)
        if not self._checked.is_set():
            with self._lock:
                if not self._checked.is_set():
                    return self._first(heatmaps)
        if self.fast is None:
            return self._mmpose(heatmaps)
        return self._fast(heatmaps)

    def _fast(self, heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.pool is not None:
            return self.pool.decode(self.fast, heatmaps)
        if not self.wants_processes:
            return self.fast.decode(heatmaps)
        # A blurring decode spends its time in cv2's blur and torch's row maxima, which use every core
        # from one thread; two at once only contend (on 2 cores two threads ran at 0.8-0.97x of one).
        with self._one_at_a_time:
            return self.fast.decode(heatmaps)

    def _first(self, heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        try:
            theirs = self._mmpose(heatmaps)
            try:
                ours = self._fast(heatmaps)
                same = all(
                    a.dtype == b.dtype and a.tobytes() == b.tobytes()
                    for a, b in zip(ours, theirs, strict=True)
                )
            except Exception as exc:  # noqa: BLE001 - any failure where mmpose succeeds means: use mmpose
                same, why = False, f"{type(exc).__name__}: {exc}"
            else:
                why = "different keypoints or scores"
        finally:
            self._checked.set()
        if not same:
            self.fast, self.path = None, "mmpose"
            self.note = f"zoo.decode differed from mmpose's decode on the first batch ({why})"
            log.warning("%s: %s; decoding with mmpose", self.row_id, self.note)
        return theirs


# --------------------------------------------------------------------------------------------------
# one pass over the data for a group of rows


@dataclass
class RowPass:
    """One row's part in a pass: its model, decoder, batch size and where it starts (resume)."""

    row_id: str
    model: HeatmapModel
    decoder: Decoder
    batch_size: int
    start: int = 0  # samples of the stream this row already has (a multiple of batch_size)
    sink: Callable[[int, Instances], None] | None = None  # (samples done, a batch's instances), in order
    oom_retries: list[str] = field(default_factory=list)
    forward_s: float = 0.0
    _pending: deque = field(default_factory=deque)  # chunks (or parts) not yet in a batch
    _pending_n: int = 0
    _done: int = 0
    _batches: deque = field(default_factory=deque)  # (future, samples done) not yet handed to the sink

    def drain(self, wait: bool = False) -> None:
        """Hand finished batches to the sink in stream order (in the calling thread)."""
        while self._batches and (wait or self._batches[0][0].done()):
            future, done = self._batches.popleft()
            instances = future.result()
            if self.sink is not None:
                self.sink(done, instances)


@dataclass
class PassStats:
    """What a pass reports (per pass, shared by its rows)."""

    samples: int = 0
    seconds: float = 0.0  # the whole pass
    first_chunk_s: float = 0.0  # until the first crops arrived (data workers starting)
    data_s: float = 0.0  # the main thread waiting for crops (all of the data path with 0 workers)
    decode_workers: int = 0
    decode_processes: bool = False  # a DecodePool ran (for the rows whose decoder wants_processes)
    rows: list[str] = field(default_factory=list)
    warm_at_s: float | None = None  # into the pass, when every row's first batch had been decoded
    warm_samples: int = 0  # the samples whose crops arrived from then on

    @property
    def samples_per_s(self) -> float:
        """The pass's steady pace: from the first crops on (worker start-up is a constant, not a rate)."""
        steady = self.seconds - self.first_chunk_s
        return self.samples / steady if steady > 0 else math.nan

    @property
    def warm_samples_per_s(self) -> float | None:
        """The pace once the one-time costs are paid (cuDNN's first calls, graph capture, the first
        batch's check against mmpose's decode): the samples whose crops arrived after every row's first
        batch was decoded, over the time from then to the end. Never above the pace it measures: the
        batches already computed then and decoded after count in the time, not the samples. A short
        run is dominated by those costs (829 boxes take 2 s on an H200); a full-scale one is not.
        None when the pass ended before it warmed up."""
        if self.warm_at_s is None or not self.warm_samples:
            return None
        return self.warm_samples / (self.seconds - self.warm_at_s)


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


# Decode workers from which a pass gives the blurring decoders (`Decoder.wants_processes`) a
# `DecodePool`. Below it they decode in the calling threads, one batch at a time: on 2 cores a pool of
# 2 processes ran DARK and UDP at 0.55-0.85x of one thread (the copy into shared memory, and cv2's blur
# and torch's row maxima already use both cores from one thread). Processes are for the many cores of
# a GPU host, where one thread's decode (1.5-2 ms a box) would set the pace.
POOL_MIN_WORKERS = 4


def decode_workers_for(device: str, workers: int) -> int:
    """Decode workers (threads, or a `DecodePool`'s processes from `POOL_MIN_WORKERS`): the cores the
    data workers and the main thread leave (at least one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    spare = cores - workers - (1 if device.startswith("cuda") else 2)
    return max(1, min(16, spare))


_SLOTS: list[Any] = []  # the pool's shared buffers, inherited by its forked worker processes


def _worker_decode(
    slot: int, shape: tuple[int, ...], decoder: Any, scanned: Any
) -> tuple[np.ndarray, np.ndarray]:
    heatmaps = np.frombuffer(_SLOTS[slot], dtype=np.float32, count=int(np.prod(shape))).reshape(shape)
    return decoder.decode(heatmaps, scanned)


def _worker_ready() -> int:
    return os.getpid()


def _exit_with(parent: int) -> None:
    """Worker initializer: leave as soon as the process that made the pool is gone.

    A pool's workers block on a pipe whose write end they inherited themselves, so a SIGKILLed
    `zoo run` would leave them waiting forever, holding its stdout and stderr open (a caller
    waiting for the output hangs) and its shared buffers mapped. A daemon thread polls the parent.
    """
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="zoo-decode-watch", daemon=True).start()


class DecodePool:
    """`zoo.decode` in worker processes, fed through shared memory.

    Why processes: decoding allocates and frees tens of MB per batch; in threads of one process
    those allocations contend (the GIL between numpy calls, the process's memory map for every large
    array; measured with the earlier, slower DARK decode on 2 cores: two threads 1.45x one thread,
    two processes 2.2x). A batch's heatmaps are copied into one of the pool's shared buffers (anonymous shared
    memory made before the workers fork, so nothing is named, leaked or tracked), a worker decodes
    them there and sends back the keypoints and scores (kilobytes). Only decoders that
    `wants_processes` (DARK, UDP) use it; MSRA decodes in the threads. Where `fork` is not available
    the pool is not used (`available()`), and decoding runs in threads.
    """

    def __init__(self, processes: int, slot_bytes: int) -> None:
        import mmap
        import multiprocessing
        import queue
        from concurrent.futures import ProcessPoolExecutor

        if _SLOTS:
            raise RuntimeError("one DecodePool at a time")
        _SLOTS.extend(mmap.mmap(-1, max(slot_bytes, 1)) for _ in range(2 * processes))
        self.slot_bytes = slot_bytes
        self.free: queue.Queue[int] = queue.Queue()
        for i in range(len(_SLOTS)):
            self.free.put(i)
        self.executor = ProcessPoolExecutor(
            processes,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_exit_with,
            initargs=(os.getpid(),),
        )
        for started in [self.executor.submit(_worker_ready) for _ in range(processes)]:
            started.result()  # every worker forks now, before the data workers and decode threads exist

    @staticmethod
    def available() -> bool:
        import multiprocessing

        return "fork" in multiprocessing.get_all_start_methods()

    def decode(self, decoder: Any, heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`decoder.decode(heatmaps)`, computed in a worker process; the maps' `scan` (torch) is made
        here, in the calling process, and sent along."""
        from zoo.decode import scan

        if heatmaps.nbytes > self.slot_bytes:
            return decoder.decode(heatmaps)  # larger than planned for: decode here
        slot = self.free.get()
        try:
            view = np.frombuffer(_SLOTS[slot], dtype=np.float32, count=heatmaps.size).reshape(heatmaps.shape)
            np.copyto(view, heatmaps, casting="no")
            n, k, h, w = heatmaps.shape
            scanned = scan(view.reshape(n * k, h, w)) if decoder.scans else None
            return self.executor.submit(_worker_decode, slot, heatmaps.shape, decoder, scanned).result()
        finally:
            self.free.put(slot)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        for buffer in _SLOTS:
            buffer.close()
        _SLOTS.clear()


class _Transfer:
    """Device -> pinned host copies on a side stream, so the next batch's kernels need not wait."""

    def __init__(self, device: str) -> None:
        import torch

        self.cuda = device.startswith("cuda")
        self.stream = torch.cuda.Stream(device=device) if self.cuda else None

    def __call__(self, tensor: Any) -> tuple[Any, Any]:
        """(host tensor, event to wait for before reading it)."""
        import torch

        if not self.cuda:
            return tensor.detach(), None
        self.stream.wait_stream(torch.cuda.current_stream(tensor.device))
        with torch.cuda.stream(self.stream):
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            tensor.record_stream(self.stream)
            event = torch.cuda.Event()
            event.record(self.stream)
        return host, event


def _decode_job(decoder: Decoder, host: Any, event: Any, meta: dict[str, np.ndarray], size: Any) -> Instances:
    from zoo.decode import to_image

    if event is not None:
        event.synchronize()
    keypoints, scores = decoder(host.numpy())
    keypoints = to_image(keypoints, meta["center"], meta["scale"], size)
    return Instances(
        sample_id=meta["sample_id"],
        image_id=meta["image_id"],
        keypoints=keypoints,
        keypoint_scores=scores,
        bbox_score=meta["bbox_score"],
        area=np.prod(meta["scale"], axis=1),  # prod(bbox_scale), the area mmpose's OKS-NMS uses
    )


_META = ("sample_id", "image_id", "center", "scale", "bbox_score")


def _cut(chunk: dict[str, Any], lo: int, hi: int | None = None) -> dict[str, Any]:
    return {"crops": chunk["crops"][lo:hi], **{f: chunk[f][lo:hi] for f in _META}}


def _take(row: RowPass, n: int) -> dict[str, Any]:
    """The next n pending samples of a row as one batch (crops concatenated, fields too)."""
    import torch

    parts = []
    while n:
        chunk = row._pending[0]
        k = min(n, len(chunk["sample_id"]))
        parts.append(_cut(chunk, 0, k))
        if k == len(chunk["sample_id"]):
            row._pending.popleft()
        else:
            row._pending[0] = _cut(chunk, k)
        n -= k
        row._pending_n -= k
    if len(parts) == 1:
        return parts[0]
    return {
        "crops": torch.cat([p["crops"] for p in parts]),
        **{f: np.concatenate([p[f] for p in parts]) for f in _META},
    }


class Progress:
    """A bar on a terminal (unless disabled), and a line every `every` seconds otherwise."""

    def __init__(self, total: int, label: str, bar: bool, every: float = 30.0) -> None:
        from tqdm import tqdm

        self.total, self.label, self.every = total, label, every
        self.bar = tqdm(total=total, unit="box", desc=label, dynamic_ncols=True, mininterval=1.0) if (
            bar and sys.stderr.isatty()
        ) else None  # fmt: skip
        self.done = 0
        self.start = self.last = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            rate = self.done / (now - self.start)
            eta = (self.total - self.done) / rate if rate > 0 else math.inf
            log.info(
                "%s: %d/%d boxes (%.0f boxes/s, %s left)",
                self.label, self.done, self.total, rate, duration_text(eta),
            )  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def duration_text(seconds: float) -> str:
    """`42s`, `3m07s`, `2h05m` (`?` when unknown)."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def run_pass(
    dataset: Any,
    indices: Sequence[int],
    rows: Sequence[RowPass],
    *,
    device: str,
    workers: int,
    decode_workers: int | None = None,
    progress: bool = True,
    label: str = "",
) -> tuple[dict[str, Instances], PassStats]:
    """Run every row of `rows` over the samples `indices` of `dataset` (one shared crop stream).

    Returns each row's instances for the samples from its `start` on (in stream order) and the pass's
    stats. `row.sink(done, instances)` sees every decoded batch in order, for checkpoints. Heatmaps
    are decoded by `decode_workers` processes (a `DecodePool`; threads hand the batches over), or in
    as many threads where processes cannot be forked.
    """
    import torch

    from zoo.crops import CropRecipe, ImageError, chunk_loader

    threads = decode_workers or decode_workers_for(device, workers)
    stats = PassStats(decode_workers=threads, rows=[r.row_id for r in rows])
    decode_pool = None
    pooled = [r for r in rows if r.decoder.wants_processes]
    if DecodePool.available() and pooled and threads >= POOL_MIN_WORKERS:
        slot = max(
            r.batch_size * len(r.model.flip_indices) * int(np.prod(r.model.codec.heatmap_size)) * 4
            for r in pooled
        )
        decode_pool = DecodePool(threads, slot)
        stats.decode_processes = True
        for r in pooled:
            r.decoder.pool = decode_pool
    input_size = CropRecipe.from_pipeline(dataset.pipeline.transforms).input_size  # TopdownAffine's (w, h)
    first = min((r.start for r in rows), default=0)
    stream = list(indices[first:])
    results: dict[str, list[Future]] = {r.row_id: [] for r in rows}
    working = [r for r in rows if r.start < len(indices)]  # rows with batches to run in this pass
    for r in rows:
        r._done = r.start
    inflight: deque[Future] = deque()
    transfer = _Transfer(device)
    bar = Progress(len(stream), label or ",".join(stats.rows), progress)
    started = time.perf_counter()

    def launch(row: RowPass, n: int) -> None:
        batch = _take(row, n)
        t = time.perf_counter()
        try:
            with torch.no_grad():
                heatmaps = row.model(batch["crops"].to(device, non_blocking=True))
            host, event = transfer(heatmaps)
        except RuntimeError as exc:  # CUDA OOM: put the batch back and halve this row's batches
            if not _is_oom(exc) or n == 1:
                raise
            torch.cuda.empty_cache()
            row.oom_retries.append(f"CUDA OOM at batch size {n}; retrying with {n // 2}")
            log.warning("%s: %s", row.row_id, row.oom_retries[-1])
            row.batch_size = n // 2
            row._pending.appendleft(batch)
            row._pending_n += n
            return
        row.forward_s += time.perf_counter() - t
        meta = {f: batch[f] for f in _META}
        future = pool.submit(_decode_job, row.decoder, host, event, meta, input_size)
        results[row.row_id].append(future)
        row._done += n
        row._batches.append((future, row._done))
        inflight.append(future)
        while len(inflight) > 2 * threads + 2:  # back-pressure: a bounded number of batches in flight
            inflight.popleft().result()
        row.drain()

    position = first
    try:
        with ThreadPoolExecutor(threads, thread_name_prefix="zoo-decode") as pool:
            try:
                chunks = iter(
                    chunk_loader(dataset, stream, workers=workers, pin_memory=device.startswith("cuda"))
                )
                while True:
                    t = time.perf_counter()
                    chunk = next(chunks, None)
                    stats.data_s += time.perf_counter() - t
                    if chunk is None:
                        break
                    if not stats.first_chunk_s:
                        stats.first_chunk_s = time.perf_counter() - started
                    if "error" in chunk:
                        raise ImageError(chunk["error"])
                    n = len(chunk["sample_id"])
                    if stats.warm_at_s is None and all(
                        results[r.row_id] and results[r.row_id][0].done() for r in working
                    ):
                        stats.warm_at_s = time.perf_counter() - started
                        stats.warm_samples = len(stream) - (position - first)
                    chunk = {**chunk, "crops": chunk["crops"].to(device, non_blocking=True)}
                    for row in rows:
                        skip = max(0, row.start - position)
                        if skip >= n:
                            continue
                        row._pending.append(_cut(chunk, skip) if skip else chunk)
                        row._pending_n += n - skip
                        while row._pending_n >= row.batch_size:
                            launch(row, row.batch_size)
                    position += n
                    bar.update(n)
                for row in rows:
                    while row._pending_n:
                        launch(row, min(row.batch_size, row._pending_n))
                for row in rows:
                    row.drain(wait=True)
                out = {
                    row_id: Instances.concat([f.result() for f in futures])
                    for row_id, futures in results.items()
                }
            except KeyboardInterrupt:  # keep what is decoded: the rerun resumes after it
                for row in rows:
                    with contextlib.suppress(Exception):
                        while (
                            row._batches
                            and row._batches[0][0].done()
                            and row._batches[0][0].exception() is None
                        ):
                            row.drain()
                        if hasattr(row.sink, "flush"):
                            row.sink.flush()
                raise
            finally:
                bar.close()
    finally:  # after the decode threads are done with it
        if decode_pool is not None:
            for r in rows:
                r.decoder.pool = None
            decode_pool.close()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    stats.samples = len(stream)
    stats.seconds = time.perf_counter() - started
    return out, stats


@contextlib.contextmanager
def inference_mode(numerics: Numerics) -> Iterator[None]:
    """The numerics flags for the block, restored afterwards (a library must not leave them changed)."""
    import torch

    saved = (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    numerics.apply()
    try:
        yield
    finally:
        (
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32,
        ) = saved
