"""A simulation production: N independent Geant4 processes, one output file each, resumable.

The output folder holds ``production.json`` (what was asked), ``job_XXX.root`` (complete files
only: a job writes ``job_XXX.root.tmp`` and renames it when done) and ``logs/job_XXX.log``
(Geant4's own output). Running the same command again skips the complete files.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fastshower.errors import FastShowerError
from fastshower.geometry import load
from fastshower.progress import Tracker
from fastshower.simulation.gun import GunConfig, require_on_detector, sample_primaries
from fastshower.simulation.runner import JobSpec, fast_hook, job_seed, run_job

TIMING_KEYS = ("n", "cpu_seconds", "fast_showers", "fast_energy_mev")


def plan(geometry: str | Path, gun: GunConfig, n: int, jobs: int, seed: int, out: str | Path,
         physics: str = "auto", em_option: int = 0, upstream_x0: float = 0.0,
         fast: dict | None = None, scoring: str = "cells") -> list[JobSpec]:
    """The job specs of a production (events split as evenly as possible)."""
    if n <= 0:
        raise FastShowerError(f"--n must be positive, got {n}")
    if jobs <= 0:
        raise FastShowerError(f"--jobs must be positive, got {jobs}")
    jobs = min(jobs, n)
    sizes = [n // jobs + (i < n % jobs) for i in range(jobs)]
    out = Path(out)
    return [JobSpec(geometry=str(geometry), gun=gun.model_dump(mode="json"), n=size,
                    seed=job_seed(seed, i), out=str(out / f"job_{i:03d}.root"), physics=physics,
                    em_option=em_option, upstream_x0=upstream_x0, fast=fast, scoring=scoring,
                    meta={"job": i, "production_seed": seed})
            for i, size in enumerate(sizes)]


def _child(spec_dict: dict, index: int, progress: mp.Queue, log_path: str) -> None:
    """Process entry point: Geant4's output goes to the job's log file."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    last = [0.0]

    def report(done: int) -> None:
        now = time.monotonic()
        if now - last[0] > 0.2:
            progress.put(("progress", index, done))
            last[0] = now

    try:
        result = run_job(JobSpec(**spec_dict), report)
        progress.put(("done", index, result))
    except BaseException:  # noqa: BLE001 - every failure goes back to the parent
        progress.put(("error", index, traceback.format_exc()))



def _same(old: dict, new: dict) -> bool:
    """Whether a folder's production.json describes the production ``new``: its gun read
    with today's defaults (a gun option added later must not stop an older production from
    resuming)."""
    try:
        old = {**old, "gun": GunConfig(**old["gun"]).model_dump(mode="json")}
    except (KeyError, TypeError, ValueError):
        return False
    return old == new

def simulate(geometry: str | Path, gun: GunConfig, n: int, out: str | Path, jobs: int = 1,
             seed: int = 1, physics: str = "auto", em_option: int = 0,
             force: bool = False, show_progress: bool = True, upstream_x0: float = 0.0,
             fast: dict | None = None, scheduler: str | None = None,
             scoring: str = "cells", workers: int | None = None,
             announce: Callable[[], None] | None = None,
             job_range: tuple[int, int] | None = None) -> list[Path]:
    """Run (or resume) a production; returns the output files in job order.

    ``fast`` (inference.g4hook.fast_spec) makes it a hybrid production: showers of the model's
    particles (or those ``fast["particles"]`` names) reaching the calorimeter come from it.
    ``scheduler``: run the jobs on a Dask cluster ('local' or an address; fastshower.cluster)
    instead of local processes; the files are the same. ``scoring``: 'cells' (C++, the
    default) or 'steps' (Python, exact first-deposit times); see simulation.scoring.SCORING.
    ``workers``: processes at once (default: one per job, at most one per core); more jobs
    than workers make smaller files, so a stopped production loses less when resumed.
    ``announce`` is called once every input has been checked, before anything is written.
    ``job_range`` (first, end): run only these jobs of the production, so that machines share
    it (each a range, same command otherwise); their files join in one folder."""
    if scoring not in ("cells", "steps"):
        raise FastShowerError(f"--scoring must be cells or steps, not {scoring!r}")
    geom = load(geometry)  # refuses a file that fails its hash, before any process starts
    require_on_detector(geom, sample_primaries(gun, 1000, np.random.default_rng(seed)))
    workers = min(jobs, os.cpu_count() or 1) if workers is None else workers
    if workers <= 0:
        raise FastShowerError(f"--workers must be positive, got {workers}")
    if upstream_x0 < 0:
        raise FastShowerError(f"--upstream-x0 must not be negative, got {upstream_x0}")
    if fast is not None:  # a missing or mismatched model fails here, not in every job
        fast_hook(fast, geom)
    out = Path(out)
    specs = plan(geometry, gun, n, jobs, seed, out, physics, em_option, upstream_x0, fast,
                 scoring)
    first, end = job_range or (0, len(specs))
    if not 0 <= first < end <= len(specs):
        raise FastShowerError(f"--job-range {first}:{end} is not a range of the production's "
                              f"jobs 0:{len(specs)}")
    manifest = {"geometry_hash": geom.hash, "gun": gun.model_dump(mode="json"), "n": n,
                "jobs": len(specs), "seed": seed, "physics": physics, "em_option": em_option,
                "upstream_x0": upstream_x0, "fast": fast, "scoring": scoring}
    manifest_path = out / "production.json"
    if out.exists() and any(out.iterdir()) and not force:
        if not manifest_path.is_file() or not _same(json.loads(manifest_path.read_text()),
                                                    manifest):
            raise FastShowerError(f"output folder {out} exists and holds something else; choose "
                                  "another --out, or pass --force to overwrite it")
    if announce is not None:
        announce()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=2))
    todo = [i for i, s in enumerate(specs)
            if first <= i < end and (force or not Path(s.out).is_file())]
    skipped = sum(specs[i].n for i in range(first, end) if i not in todo)
    n = sum(s.n for s in specs[first:end])
    if todo and scheduler:
        _run_dask([specs[i] for i in todo], out, skipped, n, show_progress, scheduler, workers)
    elif todo:
        _run_parallel([specs[i] for i in todo], out, skipped, n, show_progress, workers)
    return [Path(s.out) for s in specs[first:end]]


def run_isolated(spec: dict) -> dict:
    """A cluster task: one job in a fresh Python process, its Geant4 output in its log file.
    Idempotent: a job whose complete file exists is not run again."""
    index = spec["meta"]["job"]
    logs = Path(spec["out"]).parent / "logs"
    timing = logs / f"job_{index:03d}.json"
    if Path(spec["out"]).is_file() and timing.is_file():
        return json.loads(timing.read_text())
    result_file = logs / f"job_{index:03d}.result.json"
    with open(logs / f"job_{index:03d}.log", "w") as log:
        done = subprocess.run([sys.executable, "-m", "fastshower.simulation.runner",
                               json.dumps(spec), str(result_file)], stdout=log, stderr=log)
    if done.returncode != 0:
        raise RuntimeError(f"simulation job {index} exited with {done.returncode}; see "
                           f"{logs / f'job_{index:03d}.log'}")
    result = json.loads(result_file.read_text())
    result_file.unlink()
    summary = {k: result.get(k) for k in TIMING_KEYS}
    timing.write_text(json.dumps(summary))
    return summary


def _run_dask(specs: list[JobSpec], out: Path, skipped: int, total: int, show_progress: bool,
              scheduler: str, workers: int) -> None:
    from distributed import as_completed

    from fastshower.cluster import RETRIES, close, connect

    client = connect(scheduler, workers)
    try:
        futures = [client.submit(run_isolated, asdict(s), retries=RETRIES, pure=False)
                   for s in specs]
        with Tracker(f"simulating on Dask ({scheduler})", total, completed=skipped,
                     enabled=show_progress) as bar:
            for future in as_completed(futures):
                try:
                    bar.update(advance=future.result()["n"])
                except Exception as err:  # noqa: BLE001 - every failure ends the same way
                    raise FastShowerError(f"a simulation job failed {RETRIES + 1} times: {err}"
                                          ) from None
    finally:
        close(client)


def geant4_cpu_per_shower(out: str | Path) -> float:
    """CPU seconds per shower of a finished production (from its jobs' timing files)."""
    runs = [json.loads(f.read_text()) for f in sorted(Path(out).glob("logs/job_*.json"))]
    if not runs:
        raise FastShowerError(f"{out} has no job timing files (logs/job_*.json)")
    return sum(r["cpu_seconds"] for r in runs) / sum(r["n"] for r in runs)


def _run_parallel(specs: list[JobSpec], out: Path, skipped: int, total: int,
                  show_progress: bool, workers: int) -> None:
    """Run the jobs in spawned processes, at most ``workers`` at a time."""
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    pending = list(specs)
    procs: dict[int, mp.Process] = {}

    def start_next() -> None:
        spec = pending.pop(0)
        index = spec.meta["job"]
        log = str(out / "logs" / f"job_{index:03d}.log")
        procs[index] = ctx.Process(target=_child, args=(asdict(spec), index, messages, log),
                                   daemon=True)
        procs[index].start()

    while pending and len(procs) < workers:
        start_next()
    done = {spec.meta["job"]: 0 for spec in specs}
    finished: set[int] = set()
    try:
        with Tracker("simulating", total, completed=skipped, enabled=show_progress) as bar:
            while len(finished) < len(specs):
                try:
                    kind, index, payload = messages.get(timeout=1.0)
                except queue.Empty:
                    dead = [i for i, p in procs.items() if not p.is_alive() and i not in finished]
                    if dead and messages.empty():
                        raise FastShowerError(f"simulation job {dead[0]} died; see "
                                              f"{out / 'logs' / f'job_{dead[0]:03d}.log'}"
                                              ) from None
                    bar.update()
                    continue
                if kind == "error":
                    raise FastShowerError(f"simulation job {index} failed:\n{payload}\nlog: "
                                          f"{out / 'logs' / f'job_{index:03d}.log'}")
                if kind == "done":
                    finished.add(index)
                    done[index] = payload["n"]
                    (out / "logs" / f"job_{index:03d}.json").write_text(json.dumps(
                        {k: payload[k] for k in TIMING_KEYS}))
                    procs[index].join()
                    if pending:
                        start_next()
                else:
                    done[index] = payload
                bar.update(completed=skipped + sum(done.values()))
    finally:
        for p in procs.values():
            if p.is_alive():
                p.terminate()
            p.join()
