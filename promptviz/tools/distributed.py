"""``promptviz compare --ray``: a study's runs as Ray tasks, one run per task.

The driver (:func:`promptviz.tools.compare.run_study`) decides which runs are finished and
writes the table; this module only carries the others to Ray and brings back each one's
rows or error, in the order they finish. A task asks for one GPU (``--device cuda``) or
``--ray-cpus`` CPUs, runs :func:`promptviz.tools.compare.run_one` (the function the
sequential path calls), and writes into its run's folder under ``--out``, which every
machine of the cluster must see: :func:`check_shared` proves it before the first run.

Ray is imported here only, and only when ``--ray`` is given (``pip install
'promptviz[ray]'``); ``promptviz --help`` imports neither Ray nor torch.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptviz.errors import PromptvizError

if TYPE_CHECKING:
    from promptviz.config import CompareConfig

EXTRA = "pip install 'promptviz[ray]'"


def require_ray() -> Any:
    """The ``ray`` module, or one PromptvizError naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise PromptvizError(f"--ray needs Ray, which is not installed: {EXTRA} (or leave out "
                             "--ray to run the study here, one run after another)") from None
    return ray


def _attempt(work: Any, cfg: CompareConfig, task: tuple, res: Any) -> Any:
    """One try of one run on a worker (Ray retries it: ``max_retries``)."""
    return work(cfg, task, res)


def _probe(folder: str, token: str) -> str | None:
    """On one node: can it see the driver's ``token`` file in ``folder`` and write there?"""
    path = Path(folder)
    if not (path / token).is_file():
        return f"does not see {path / token}, which the driver wrote there"
    mine = path / f"{token}-{uuid.uuid4().hex[:8]}"
    try:
        mine.write_text("")
        mine.unlink()
    except OSError as e:
        return f"cannot write there ({e.strerror or e})"
    return None


def check_shared(ray: Any, folder: Path) -> None:
    """Every live node of the cluster sees ``folder`` (the driver's files in it) and can
    write there; else one PromptvizError naming the nodes and the fix."""
    folder.mkdir(parents=True, exist_ok=True)
    token = f".promptviz-shared-{uuid.uuid4().hex}"
    (folder / token).write_text("")
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    try:
        probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        answers = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(str(folder), token) for n in nodes])
    finally:
        (folder / token).unlink()
    bad = [f"{n.get('NodeManagerAddress', n['NodeID'])} {why}"
           for n, why in zip(nodes, answers) if why]
    if bad:
        raise PromptvizError(f"--out {folder} is not storage every Ray node shares: "
                             + "; ".join(bad) + ". Put --out on a file system all machines "
                             "mount at the same path (NFS, a cluster file system)")


def _error(ray: Any, e: Exception) -> str:
    """A failed task's error in one line: the run's own exception, or how its worker died."""
    cause = getattr(e, "cause", None) if isinstance(e, ray.exceptions.RayTaskError) else None
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    first = next((line for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first}"


def on_ray(cfg: CompareConfig, work: Any, todo: list[tuple[tuple, Any]]
           ) -> Iterator[tuple[tuple, Any, str | None]]:
    """Each ``(task, res)`` of ``todo`` as the Ray task ``work(cfg, task, res)``, tried
    ``1 + cfg.retries`` times (an exception or a dead worker); yields ``(task, rows, None)``
    or ``(task, None, error)`` as each finishes. Joins ``cfg.ray`` (``"local"``: a cluster
    started on this machine, shut down at the end) unless Ray is already initialised here.
    Closing the generator early (Ctrl-C, a dead driver) cancels the runs not finished."""
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            ray.init(address=cfg.ray, include_dashboard=False)
        except ConnectionError as e:
            raise PromptvizError(f"--ray {cfg.ray}: no Ray cluster there ({e}); start one "
                                 "with `ray start --head` and give the address it prints, "
                                 "or give --ray alone for a cluster on this machine") from None
    refs: dict[Any, tuple] = {}
    try:
        out = Path(cfg.out).resolve()
        check_shared(ray, out)
        gpu = cfg.device.startswith("cuda")
        if gpu and not ray.cluster_resources().get("GPU"):
            raise PromptvizError(f"--device {cfg.device} --ray: the Ray cluster has no GPU; "
                                 "give --device cpu (and --ray-cpus), or join a cluster with "
                                 "GPUs")
        # a worker sees only its own GPU (as cuda); paths as the driver means them
        worker_cfg = dataclasses.replace(
            cfg, out=str(out), data_root=str(Path(cfg.data_root).resolve()),
            device="cuda" if gpu else cfg.device, progress=False)
        remote = ray.remote(_attempt).options(
            num_cpus=cfg.ray_cpus, num_gpus=1 if gpu else 0, max_retries=cfg.retries,
            retry_exceptions=True)
        refs = {remote.remote(work, worker_cfg, task, res): task for task, res in todo}
        pending = list(refs)
        while pending:
            (ref,), pending = ray.wait(pending, num_returns=1)
            try:
                rows, error = ray.get(ref), None
            except ray.exceptions.RayError as e:
                rows, error = None, _error(ray, e)
            yield refs.pop(ref), rows, error
    finally:
        for ref in refs:                 # the runs not finished: stop them, and wait till
            ray.cancel(ref, force=True)  # they have (a rerun must not race them)
        if refs:
            ray.wait(list(refs), num_returns=len(refs), timeout=60)
        if started:
            ray.shutdown()
