"""Running skyvar's pipelines on a Dask ``distributed`` cluster: one config block, one client helper,
one task runner, one per-worker component cache.

The ``dask:`` block (:class:`DaskConfig`) is the same in ``pipeline=field``, ``pipeline=detect``,
``pipeline=lightcurves`` and the field simulator::

    dask:
      enabled: false          # true: run the per-frame / per-tile / per-partition work as Dask tasks
      address: null           # scheduler address (tcp://host:8786) to join; null starts a LocalCluster
      n_workers: null         # LocalCluster workers; null = one per usable core (one per GPU with gpu=true)
      threads_per_worker: 1   # one task at a time per worker: memory per worker = one frame (or tile)
      processes: true         # workers are processes (false: threads of this process)
      memory_limit: auto      # per worker, e.g. "4GiB"; auto = system memory / n_workers
      retries: 1              # a task whose worker dies is run again this many times, then reported
      gpu: false              # one worker per GPU with the model on it (dask-cuda's LocalCUDACluster)
      local_directory: null   # workers' spill directory (default: the system temp directory)

Where the work goes (``pipeline=field``): the frame stages (simulation, per-frame detection or forced
photometry) are one task per frame, except forced photometry of frames larger than
``forced.region_px`` (default 2048): one task per (sky region x run of frames), each building only its
region's engine from the frames' sections, then one task per frame assembling its catalogue
(:func:`skyvar.detect.forced_psf.measure_by_region`; memory bounded by the region); association is one task per frame to shard the catalogues by sky
tile and one task per tile to match them (:mod:`skyvar.lightcurves.associate`); light-curve features
are one task per store partition. A task reads its own inputs (frame files, catalogue shards) from the
shared file system and writes its own outputs atomically; the client ships only file names and small
records, never pixels. A component that is expensive to build (a PNet model, the forced-photometry
engine with its factorised design matrices) is built once per worker and cached there, keyed by the
hash of its configuration (:func:`worker_cached`).

Failures: a task that raises is reported (``failures.json``, with the file and the error); a task whose
worker *dies* (killed, out of memory, segfault) is rerun on another worker up to ``retries`` times
(Dask's ``distributed.scheduler.allowed-failures``) and then reported the same way. Outputs already
written are never redone: every stage checks them before submitting work, so a rerun computes exactly
what is missing.

Clusters
--------
* Local (default): ``LocalCluster(n_workers = cores, threads_per_worker=1)``.
* An existing cluster: ``dask.address=tcp://scheduler:8786``. Every worker must see the same file
  system paths as the client (the frames, ``out_dir``) and have skyvar installed. On SLURM::

      # dask-jobqueue (pip install dask-jobqueue), in a small launcher script:
      from dask_jobqueue import SLURMCluster
      cluster = SLURMCluster(cores=8, processes=8, memory="32GB", walltime="04:00:00")
      cluster.scale(jobs=8)              # 64 workers, one core and 4 GB each
      print(cluster.scheduler_address)   # -> skyvar infer ... pipeline.dask.address=<this>

  or start ``dask scheduler`` in one job and ``dask worker <address> --nthreads 1 --nworkers 8
  --memory-limit 4GB`` in array jobs. On Kubernetes, the dask-kubernetes operator's ``DaskCluster``
  resource (or ``KubeCluster(name=..., image=<an image with skyvar>)``) gives a scheduler service
  address; mount the data volume at the same path on every worker pod. Retries of tasks whose worker
  died are then governed by the scheduler's own ``distributed.scheduler.allowed-failures`` (set it in
  the scheduler's Dask config; skyvar sets it only for the clusters it starts). Start the workers
  without ``MALLOC_TRIM_THRESHOLD_`` (Dask's nanny sets it by default: put
  ``distributed.nanny.pre-spawn-environ: {OMP_NUM_THREADS: 1, MKL_NUM_THREADS: 1, OPENBLAS_NUM_THREADS: 1}``
  in the workers' Dask config), or every frame pays ~80 % extra CPU in page faults (see ``dask_client``).
* GPUs: ``dask.gpu=true`` starts one worker per visible GPU, each pinned to its device
  (``dask_cuda.LocalCUDACluster`` when dask-cuda is installed, else a LocalCluster whose workers
  select their device at start), and a ``device: auto`` detector loads its model onto that worker's
  GPU once. On a multi-node GPU cluster start workers with ``dask cuda worker <address>`` (dask-cuda),
  one per GPU, and join with ``dask.address``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from skyvar.utils.log import get_logger

log = get_logger(__name__)

__all__ = ["DaskConfig", "TaskFailed", "SharedObject", "dask_client", "active_client", "run_tasks", "worker_cached",
           "default_workers", "task_stats", "drop_cached", "start_rss_sampler", "rss_peak", "process_cpu_s"]


@dataclasses.dataclass
class DaskConfig:
    """The ``dask:`` block of the pipelines (see the module documentation)."""

    enabled: bool = False
    address: str | None = None
    n_workers: int | None = None
    threads_per_worker: int = 1
    processes: bool = True
    memory_limit: str | float | int | None = "auto"
    retries: int = 1
    gpu: bool = False
    local_directory: str | None = None

    @classmethod
    def from_any(cls, cfg: Any) -> DaskConfig:
        """A DaskConfig from a dict / DictConfig / DaskConfig / None; unknown keys are an error."""
        if isinstance(cfg, cls):
            return cfg
        from skyvar.pipeline.components import plain

        cfg = dict(plain(cfg) or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(f"dask: unknown key(s) {unknown}; valid: {', '.join(sorted(names))}")
        out = cls(**cfg)
        if out.threads_per_worker < 1:
            raise ValueError(f"dask.threads_per_worker={out.threads_per_worker}: must be >= 1")
        if out.retries < 0:
            raise ValueError(f"dask.retries={out.retries}: must be >= 0")
        return out


def default_workers(gpu: bool = False) -> int:
    """Workers of a default LocalCluster: one per usable core (CPU affinity), or one per GPU."""
    if gpu:
        import torch

        n = torch.cuda.device_count()
        if n < 1:
            raise RuntimeError("dask.gpu=true, but torch sees no CUDA device")
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------- client
_ACTIVE: list = []  # clients opened by dask_client in this process, innermost last


def active_client():
    """The client of the innermost :func:`dask_client` block of this process (None outside one)."""
    return _ACTIVE[-1] if _ACTIVE else None


def _pin_gpu_plugin():
    """Worker plugin: worker ``i`` of a LocalCluster uses GPU ``i mod n`` (dask-cuda's one-worker-per-GPU
    pattern without dask-cuda), so ``device=auto`` puts each worker's model on its own GPU."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class PinGPU(WorkerPlugin):
        name = "skyvar-pin-gpu"

        def setup(self, worker):
            import torch

            n = torch.cuda.device_count()
            try:
                idx = int(worker.name)
            except (TypeError, ValueError):
                idx = sum(map(ord, str(worker.name)))
            if n:
                torch.cuda.set_device(idx % n)

    return PinGPU()


def _local_cluster(cfg: DaskConfig):
    from dask.distributed import LocalCluster

    n = cfg.n_workers or default_workers(cfg.gpu)
    kw = dict(n_workers=n, threads_per_worker=cfg.threads_per_worker, memory_limit=cfg.memory_limit,
              dashboard_address=None, silence_logs=40)
    if cfg.local_directory:
        kw["local_directory"] = cfg.local_directory
    if cfg.gpu:
        try:
            from dask_cuda import LocalCUDACluster

            kw.pop("threads_per_worker")
            return LocalCUDACluster(threads_per_worker=1, **{**kw, "n_workers": cfg.n_workers}), False
        except ImportError:
            log.info("dask-cuda not installed: one LocalCluster worker per GPU, each pinned to its device")
            return LocalCluster(processes=True, **{**kw, "threads_per_worker": 1}), True
    return LocalCluster(processes=cfg.processes, **kw), False


@contextlib.contextmanager
def dask_client(cfg: Any) -> Iterator[Any]:
    """A ``distributed.Client`` for the ``dask:`` block: joins ``address`` or starts a LocalCluster,
    and closes what it started on exit. Inside an outer ``dask_client`` block the outer client is
    reused (``pipeline=field`` keeps one cluster for all its stages)."""
    if _ACTIVE:
        yield _ACTIVE[-1]
        return
    cfg = DaskConfig.from_any(cfg)
    try:
        import dask
        from dask.distributed import Client
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise ImportError("dask.enabled=true needs dask[distributed]: pip install 'skyvar[dask]'") from e
    # A task whose worker dies is rerun `retries` times, then reported (KilledWorker). One task per
    # worker thread at a time (saturation 1.0): a worker that dies takes only the task it was running
    # down with it, so an innocent queued frame is never blamed for another frame's crash.
    settings = {"distributed.scheduler.allowed-failures": int(cfg.retries),
                "distributed.scheduler.worker-saturation": 1.0}
    # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536 (return freed memory to the OS at once). That
    # also switches off glibc's adaptive mmap threshold, so every frame-sized temporary array is a fresh
    # mmap that page-faults in: measured +0.40 s of system time per 2048² forced-photometry frame on top
    # of 0.48 s of work. skyvar's workers run one frame at a time and reuse that memory, so it is left out.
    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    settings["distributed.nanny.pre-spawn-environ"] = env
    # the workers' statistical profiler feeds the dashboard (which skyvar does not start): ~3 % of CPU
    settings["distributed.worker.profile.enabled"] = False
    cluster = None
    t0 = time.perf_counter()
    # distributed logs every connection at INFO; under a CLI whose root logger is at INFO that drowns the
    # pipeline's own messages. Warnings (a worker that died, memory pressure) still come through.
    import logging

    dlog = logging.getLogger("distributed")
    level = dlog.level
    dlog.setLevel(max(level, logging.WARNING))
    with dask.config.set(settings):
        if cfg.address:
            client = Client(cfg.address)
            log.info("dask: joined %s (%d workers)", cfg.address, len(client.scheduler_info().get("workers", {})))
        else:
            cluster, pin = _local_cluster(cfg)
            client = Client(cluster)
            if pin:
                client.register_plugin(_pin_gpu_plugin())
            log.info("dask: LocalCluster with %d workers x %d thread(s) started in %.1f s",
                     len(cluster.workers), cfg.threads_per_worker, time.perf_counter() - t0)
    _ACTIVE.append(client)
    try:
        with dask.config.set(settings):
            yield client
    finally:
        _ACTIVE.remove(client)
        client.close()
        if cluster is not None:
            cluster.close()
        dlog.setLevel(level)


# ------------------------------------------------------------------------------------------ tasks
@dataclasses.dataclass
class TaskFailed:
    """A task that raised, or whose workers died ``retries + 1`` times (``KilledWorker``)."""

    error: str
    traceback: str = ""
    killed: bool = False


def run_tasks(fn: Callable, items: Sequence, *args: Any, client: Any = None, desc: str = "tasks",
              progress: bool = False, on_result: Callable[[int, Any], None] | None = None,
              resources: dict | None = None, **kwargs: Any) -> list:
    """``[fn(item, *args, **kwargs) for item in items]``, on Dask when ``client`` is given (one task
    per item, results gathered as they complete), in this process otherwise.

    Never raises for one item: an item whose task raised (or whose worker died too often) yields a
    :class:`TaskFailed` in its place, so one bad frame does not stop a batch. Arguments that are the
    same for every task (configs, specs) are sent once per task as small pickles; put anything large in
    files or build it on the worker (:func:`worker_cached`). ``on_result(i, result)`` is called as each
    item completes (progress, incremental bookkeeping).
    """
    items = list(items)
    out: list = [None] * len(items)
    bar = None
    if progress and len(items) > 1:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc=desc, unit="task")

    def done(i: int) -> None:
        if on_result is not None:
            on_result(i, out[i])
        if bar is not None:
            bar.update()

    if client is None:
        for i, it in enumerate(items):
            try:
                out[i] = fn(it, *args, **kwargs)
            except Exception as e:  # one bad item must not stop the rest
                out[i] = TaskFailed(f"{type(e).__name__}: {e}", traceback.format_exc(limit=5))
            done(i)
        if bar is not None:
            bar.close()
        return out

    from dask.distributed import as_completed

    futs = client.map(fn, items, *[[a] * len(items) for a in args], pure=False, resources=resources,
                      key=[f"{desc}-{i}-{os.urandom(4).hex()}" for i in range(len(items))],
                      **{k: [v] * len(items) for k, v in kwargs.items()}) if items else []
    index = {f.key: i for i, f in enumerate(futs)}
    for fut in as_completed(futs):
        i = index[fut.key]
        try:
            out[i] = fut.result()
        except Exception as e:
            killed = type(e).__name__ == "KilledWorker"
            tb = "" if killed else "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=5))
            msg = (f"its worker died on every try (KilledWorker): {e}") if killed else f"{type(e).__name__}: {e}"
            out[i] = TaskFailed(msg, tb, killed)
        fut.release()
        done(i)
    if bar is not None:
        bar.close()
    return out


# --------------------------------------------------------------------------------- worker cache
_CACHE: collections.OrderedDict = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4


def worker_cached(key: str, factory: Callable[[], Any]) -> Any:
    """``factory()`` built once per worker (per worker thread) for ``key`` and kept for later tasks.

    Keyed by a content hash of the component's configuration (and its model file), so a long-lived
    cluster never reuses a detector built for another configuration; at most a few entries are kept.
    Per thread because components hold mutable caches (the forced-photometry engine) that are not
    thread-safe; with the default ``threads_per_worker=1`` that is once per worker process.
    """
    k = (key, threading.get_ident())
    with _CACHE_LOCK:
        if k in _CACHE:
            _CACHE.move_to_end(k)
            return _CACHE[k]
    obj = factory()
    with _CACHE_LOCK:
        _CACHE[k] = obj
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return obj


@dataclasses.dataclass(frozen=True)
class SharedObject:
    """An object pickled once into a file on the shared file system, loaded once per worker
    (:meth:`get`). Unlike ``client.scatter`` it survives the death of the workers that held it (a
    restarted worker reads the file again), so a killed worker costs one task, not the whole stage."""

    path: str
    key: str

    @classmethod
    def put(cls, obj: Any, folder: str | os.PathLike, name: str = "shared") -> SharedObject:
        import hashlib
        from pathlib import Path

        import cloudpickle

        from skyvar.utils.atomic import atomic_path

        blob = cloudpickle.dumps(obj)
        key = hashlib.sha256(blob).hexdigest()[:16]
        p = Path(folder) / f".{name}-{key}.pkl"
        if not p.exists():
            with atomic_path(p) as tmp:
                tmp.write_bytes(blob)
        return cls(str(p), key)

    def get(self) -> Any:
        import pickle
        from pathlib import Path

        return worker_cached(f"shared:{self.key}", lambda: pickle.loads(Path(self.path).read_bytes()))


def drop_cached(prefix: str = "") -> int:
    """Forget this worker's cached components whose key starts with ``prefix`` (all by default); run
    on the workers with ``client.run(drop_cached, prefix)`` when a stage is over, so that the next
    stage's memory is its own (a 5000² forced-photometry engine holds ~10 GB)."""
    import gc

    with _CACHE_LOCK:
        keys = [k for k in _CACHE if k[0].startswith(prefix)]
        for k in keys:
            del _CACHE[k]
    gc.collect()
    try:  # hand the freed heap back to the OS, so the next stage starts small (glibc only)
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return len(keys)


def task_stats(t_cpu0: float, t_wall0: float) -> dict:
    """CPU and wall seconds of the task so far and the process's peak RSS [MB] (for the benchmark and
    the stage metrics; ``ru_maxrss`` is in KiB on Linux)."""
    import resource

    return {"cpu_s": round(time.thread_time() - t_cpu0, 4), "wall_s": round(time.perf_counter() - t_wall0, 4),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
            "pid": os.getpid()}


# ------------------------------------------------------------------------------------- monitoring
_RSS = {"peak": 0, "thread": None}


def start_rss_sampler(interval_s: float = 0.1) -> int:
    """Sample this process's resident memory every ``interval_s`` in a daemon thread (idempotent);
    :func:`rss_peak` reads the peak. Run on every worker with ``client.run(start_rss_sampler)`` to state
    the memory per worker (``ru_maxrss`` cannot be reset between stages)."""
    import psutil

    if _RSS["thread"] is None:
        proc = psutil.Process()

        def loop():
            while True:
                _RSS["peak"] = max(_RSS["peak"], proc.memory_info().rss)
                time.sleep(interval_s)

        t = threading.Thread(target=loop, daemon=True, name="skyvar-rss")
        t.start()
        _RSS["thread"] = t
    return os.getpid()


def rss_peak(reset: bool = False) -> float:
    """Peak resident memory [MB] seen by the sampler since the last reset (the current RSS when no
    sampler runs); ``reset`` starts a new window at the current RSS."""
    import psutil

    cur = psutil.Process().memory_info().rss
    peak = max(_RSS["peak"], cur)
    if reset:
        _RSS["peak"] = cur
    return peak / 2**20


def process_cpu_s() -> float:
    """User + system CPU seconds of this process (all its threads)."""
    t = os.times()
    return t.user + t.system
