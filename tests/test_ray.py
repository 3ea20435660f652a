"""``promptviz compare --ray`` on a local Ray cluster of this machine's CPUs (issue #24):
the same table as the sequential path, a failing run retried and then reported, a driver
stopped mid-study resumed from the finished runs, the shared-storage check, and the one
message when Ray is not installed.

Ray workers are other processes: a test that changes what a run does swaps the study's
per-run function (``compare.run_one``) for one defined here, which Ray then pickles by
value (``register_pickle_by_value``), and which leaves its trace in files, not in memory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import promptviz.tools.compare as study
from promptviz.cli import main
from promptviz.config import CompareConfig
from promptviz.errors import PromptvizError
from promptviz.tools import distributed
from promptviz.tools.compare import StudyFailed, compare, run_label, run_one


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module (ray.init takes seconds on two cores). Ray is
    in the test extra: without it these tests fail, they are not skipped."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import cloudpickle
    cloudpickle.register_pickle_by_value(sys.modules[__name__])   # this module's functions
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _cfg(root: Path, out: Path, **kw) -> CompareConfig:
    base = dict(methods=["zeroshot", "coop"], datasets=["dtd"], seeds=[1, 2],
                backbone="pv-tiny", data_root=str(root), out=str(out), epochs=1, shots=[2])
    return CompareConfig(**{**base, **kw})


def _log(cfg: CompareConfig, task: tuple, what: str) -> None:
    with (Path(cfg.out).parent / "attempts.log").open("a") as f:
        f.write(f"{what} {run_label(task)}\n")


def _lines(folder: Path) -> list[str]:
    path = folder / "attempts.log"
    return path.read_text().splitlines() if path.exists() else []


def counted(cfg: CompareConfig, task: tuple, res):
    """run_one, leaving "start RUN" and "end RUN" in attempts.log beside the study."""
    _log(cfg, task, "start")
    rows = run_one(cfg, task, res)
    _log(cfg, task, "end")
    return rows


def flaky(cfg: CompareConfig, task: tuple, res):
    """coop seed 2 always fails; coop seed 1 fails its first try only."""
    _log(cfg, task, "start")
    if task[0] == "coop" and task[3] == 2:
        raise RuntimeError("broken on purpose")
    tries = _lines(Path(cfg.out).parent).count(f"start {run_label(task)}")
    if task[0] == "coop" and task[3] == 1 and tries == 1:
        raise RuntimeError("fails once")
    return run_one(cfg, task, res)


def test_a_ray_study_writes_the_sequential_table(tiny_root, tmp_path, cluster):
    cfg = _cfg(tiny_root, tmp_path / "here")
    t0 = time.perf_counter()
    here = compare(cfg)
    t1 = time.perf_counter()
    on_ray = compare(dataclasses.replace(cfg, out=str(tmp_path / "ray"), ray="local"))
    t2 = time.perf_counter()
    print(f"\nsequential {t1 - t0:.1f} s, local Ray cluster (2 CPUs, warm) {t2 - t1:.1f} s")
    assert on_ray == here and len(here) == 2 and all(r["n"] == 2 for r in here)
    for name in ("table.csv", "table.json"):
        a, b = (tmp_path / d / name for d in ("here", "ray"))
        if name == "table.json":     # the same but for the config's out and ray
            a, b = (json.loads(p.read_text()) for p in (a, b))
            assert a["table"] == b["table"] and a["notes"] == b["notes"]
            assert b["config"]["ray"] == "local"
        else:
            assert a.read_text() == b.read_text()
    assert (tmp_path / "ray" / "report.html").is_file()
    assert not list((tmp_path / "ray").glob(".promptviz-shared-*"))    # the probe cleaned up


@pytest.mark.parametrize("where", ["here", "ray"])
def test_a_failing_run_is_retried_then_reported_failed(tiny_root, tmp_path, monkeypatch,
                                                      where, request):
    if where == "ray":
        request.getfixturevalue("cluster")
    monkeypatch.setattr(study, "run_one", flaky)
    cfg = _cfg(tiny_root, tmp_path / "study", retries=1, ray="local" if where == "ray" else None)
    with pytest.raises(StudyFailed, match="1 run.*failed 2 time.*broken on purpose"):
        compare(cfg)
    starts = _lines(tmp_path)
    assert starts.count("start coop/dtd/shots2/seed2") == 2          # tried, tried again
    assert starts.count("start coop/dtd/shots2/seed1") == 2          # failed once, then ran
    assert starts.count("start zeroshot/dtd/shots2/seed1") == 1
    table = json.loads((tmp_path / "study" / "table.json").read_text())["table"]
    failed = [r for r in table if r.get("status") == "failed"]
    assert failed == [{"method": "coop", "dataset": "dtd", "shots": 2, "seed": 2,
                       "status": "failed", "error": "RuntimeError: broken on purpose",
                       "run": str(tmp_path / "study" / "runs" / "coop" / "dtd" / "shots2" /
                                  "seed2")}]
    coop = next(r for r in table if r["method"] == "coop" and "status" not in r)
    assert coop["n"] == 1 and [s["seed"] for s in coop["by_seed"]] == [1]
    csv_text = (tmp_path / "study" / "table.csv").read_text()
    assert "failed,2,RuntimeError: broken on purpose" in csv_text
    assert "broken on purpose" in (tmp_path / "study" / "report.html").read_text()
    # fixed, the same command runs only the failed run
    monkeypatch.setattr(study, "run_one", counted)
    open(tmp_path / "attempts.log", "w").close()
    table = compare(cfg)
    assert _lines(tmp_path) == ["start coop/dtd/shots2/seed2", "end coop/dtd/shots2/seed2"]
    assert all(r.get("status") != "failed" and r["n"] == 2 for r in table)


class _DriverDies:
    """A progress bar whose first step stops the driver, as Ctrl-C or a kill would."""

    def update(self, n: int = 1) -> None:
        raise KeyboardInterrupt

    def close(self) -> None:
        pass


def test_a_stopped_driver_resumes_from_the_finished_runs(tiny_root, tmp_path, monkeypatch,
                                                          cluster):
    monkeypatch.setattr(study, "run_one", counted)
    cfg = _cfg(tiny_root, tmp_path / "study", ray="local")
    with monkeypatch.context() as m:
        m.setattr(study, "progress_bar", lambda *a, **k: _DriverDies())
        with pytest.raises(KeyboardInterrupt):
            compare(cfg)
    runs = tmp_path / "study" / "runs"
    finished = {str(p.parent.relative_to(runs)) for p in runs.rglob("results.json")}
    assert finished and len(finished) < 4            # stopped after the first finished run
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("results.json")}
    assert not (tmp_path / "study" / "table.json").exists()
    before = len(_lines(tmp_path))
    table = compare(cfg)
    again = [line.split()[1] for line in _lines(tmp_path)[before:] if line.startswith("start")]
    assert sorted(again) == sorted({f"{m}/dtd/shots2/seed{s}" for m in ("zeroshot", "coop")
                                    for s in (1, 2)} - finished)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # reused, not rewritten
    assert len(table) == 2 and all(r["n"] == 2 for r in table)


def cannot_write(folder: str, token: str) -> str:
    return "cannot write there (a test says so)"


def test_out_must_be_shared_by_every_node(tiny_root, tmp_path, monkeypatch, cluster):
    assert distributed._probe(str(tmp_path), "no-such-token").startswith("does not see")
    (tmp_path / "token").write_text("")
    assert distributed._probe(str(tmp_path), "token") is None
    monkeypatch.setattr(distributed, "_probe", cannot_write)
    with pytest.raises(PromptvizError, match="is not storage every Ray node shares: .*"
                       "cannot write there.*mount at the same path"):
        compare(_cfg(tiny_root, tmp_path / "study", ray="local"))
    assert not (tmp_path / "study" / "runs").exists()


def test_without_ray_the_flag_names_the_extra(tiny_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)                 # import ray fails
    out = tmp_path / "study"
    assert main(["compare", "--methods", "zeroshot", "--datasets", "dtd", "--seeds", "1",
                 "--backbone", "pv-tiny", "--data-root", str(tiny_root), "--out", str(out),
                 "--shots", "2", "--quiet", "--ray"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'promptviz[ray]'" in err
    assert not out.exists()


def test_the_ray_flag_with_and_without_an_address():
    from promptviz.cli import build_parser
    parse = build_parser().parse_args
    assert parse(["compare"]).ray is None
    assert parse(["compare", "--ray", "--quiet"]).ray == "local"
    assert parse(["compare", "--ray", "10.0.0.1:6379"]).ray == "10.0.0.1:6379"


def test_compare_help_imports_neither_ray_nor_torch():
    code = ("import sys, promptviz.cli as c\n"
            "try:\n    c.main(['compare', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert "--ray" in done.stdout and done.stdout.strip().endswith("[]")
