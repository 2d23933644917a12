"""One Geant4 job: build the detector, shoot n primaries, score cells, write one sim-hit file.

A Geant4 run manager lives once per process, so every job runs in a process of its own
(see ``jobs.py``); this module is what that process executes.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import awkward as ak
import numpy as np

from fastshower import __version__
from fastshower.errors import FastShowerError
from fastshower.geometry import load
from fastshower.simhits import HADRONS, ShowerBatch, SimHitWriter
from fastshower.simulation.g4data import cleanup, particlexs_dir, setup_data, write_em_tables
from fastshower.simulation.gun import GunConfig, sample_primaries
from fastshower.simulation.neutron_xs import RECIPE
from fastshower.simulation.scoring import merge_hits

OFFLINE_NOTE = ("offline EM mode: synthetic bremsstrahlung (<1 GeV), photoelectric and Rayleigh "
                "tables from analytic theory; see docs/physics.md")
OFFLINE_HADRONIC_NOTE = ("offline hadronic mode: FTFP_BERT's constructors on synthetic neutron "
                         "cross sections (" + RECIPE + "), no discrete nuclear levels; "
                         "see docs/physics.md")


@dataclass
class JobSpec:
    """Everything one job needs; plain data so it crosses process boundaries."""

    geometry: str
    gun: dict
    n: int
    seed: int
    out: str
    physics: str = "auto"
    em_option: int = 0
    scoring: str = "cells"  # see simulation.scoring.SCORING
    chunk: int = 50
    leakage: bool = False
    upstream_x0: float = 0.0  # silicon in front of the calorimeter (radiation lengths)
    fast: dict | None = None  # hybrid mode: see fast_hook
    xs_scale: dict | None = None  # offline hadronic systematics: see neutron_xs.write_neutron_files
    meta: dict = field(default_factory=dict)

    @property
    def hadronic(self) -> bool:
        """Hadrons (pions, protons) get FTFP_BERT's hadronic constructors in offline mode;
        e-, e+ and photons the EM-only list (their samples do not change)."""
        return GunConfig.model_validate(self.gun).particle in HADRONS


def job_seed(seed: int, job: int) -> int:
    """Independent, reproducible seed of job ``job`` in a production with seed ``seed``."""
    return int(np.random.SeedSequence(seed, spawn_key=(job,)).generate_state(1)[0] & 0x7FFFFFFF)


def fast_hook(fast: dict, geom):
    """The ML hook of a hybrid run, built by the factory ``fast["hook"]`` ("module:function",
    called as factory(fast, geom); e.g. inference.g4hook.make_hook from inference.g4hook.
    fast_spec). Handing the factory in keeps simulation below inference in the layering."""
    module, _, name = str(fast.get("hook", "")).partition(":")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise FastShowerError(f"hybrid run: no fast-simulation hook factory {fast.get('hook')!r}"
                              ) from None
    return factory(fast, geom)


def _start(spec: JobSpec) -> SimpleNamespace:
    """Geant4 set up for a job: data, run manager, detector, physics list and gun."""
    data = setup_data(spec.physics)
    from fastshower.simulation import g4app  # after setup_data: it imports geant4_pybind
    g4 = g4app.g4

    geom = load(spec.geometry)
    gun = GunConfig.model_validate(spec.gun)
    primaries = sample_primaries(gun, spec.n, np.random.default_rng(spec.seed))
    g4.HepRandom.setTheSeed(spec.seed)
    run = g4.G4RunManagerFactory.CreateRunManager(g4.G4RunManagerType.Serial)
    hook = entry = None
    if spec.fast is not None:  # hybrid run: the caller named the factory of its ML hook
        hook = fast_hook(spec.fast, geom)
        entry = g4app.ShowerEntry("entry", hook.accept, hook.particle_names)
    detector = g4app.Detector(geom, scoring=spec.scoring, upstream_x0=spec.upstream_x0,
                              entry=entry)
    run.SetUserInitialization(detector)
    physics = (g4app.full_physics(spec.em_option) if data.mode == "full" else
               g4app.OfflinePhysics(spec.em_option, spec.hadronic, particlexs_dir(data),
                                    spec.xs_scale))
    run.SetUserInitialization(physics)
    g4app.quiet()  # after the physics constructors, which set their own verbosity
    gun_action = g4app.Gun(primaries, gun.particle)
    run.SetUserAction(gun_action)
    return SimpleNamespace(data=data, g4app=g4app, g4=g4, geom=geom, gun=gun,
                           primaries=primaries, run=run, detector=detector, hook=hook,
                           keep=[physics, gun_action])


def em_dedx(geometry: str, particle: str, process: str, materials: list[str],
            energies_mev: list[float], physics: str = "offline") -> dict[str, list[float]]:
    """Restricted dE/dx (MeV/mm, no cut) of one process from Geant4's tables, per material.

    Used to check the synthetic tables against Geant4's own models where they meet.
    """
    s = _start(JobSpec(geometry=geometry, gun={"particle": particle}, n=1, seed=1, out="",
                       physics=physics, scoring="none"))
    s.run.Initialize()
    write_em_tables(s.g4, s.data)
    try:
        s.run.BeamOn(0)  # builds the physics tables, reading the data files
        calc = s.g4.G4EmCalculator()
        for m in materials:
            s.g4app.g4_material(m)
        return {m: [calc.ComputeDEDX(e, particle, process, m, 1e9) for e in energies_mev]
                for m in materials}
    finally:
        cleanup(s.data)


def neutron_data(geometry: str, out: str | Path, xs_scale: dict | None = None) -> Path:
    """Write the offline hadronic mode's synthetic neutron files (G4PARTICLEXS layout:
    ``{el,inel,cap}{Z}``, MeV and mm^2) to the folder ``out``, for inspection and plots."""
    s = _start(JobSpec(geometry=geometry, gun={"particle": "pi-"}, n=1, seed=1, out="",
                       physics="offline", scoring="none", xs_scale=xs_scale))
    try:
        s.run.Initialize()  # the first physics constructor writes the files
        shutil.copytree(particlexs_dir(s.data) / "neutron", out, dirs_exist_ok=True)
    finally:
        cleanup(s.data)
    return Path(out)


def run_job(spec: JobSpec, report=None) -> dict:
    """Run one job in this process; ``report(n_done)`` is called as events finish.

    Returns timing and the output path. Only a complete file gets the final name.
    """
    s = _start(spec)
    data, g4, g4app, geom = s.data, s.g4, s.g4app, s.geom
    gun, primaries, run, detector = s.gun, s.primaries, s.run, s.detector

    writer = None
    if detector.scoring != "none":
        offline_hadronic = data.mode == "offline" and spec.hadronic
        writer = SimHitWriter(spec.out, {
            "generator": "geant4", "geant4_version": str(g4.G4VERSION_NUMBER),
            "physics_mode": data.mode,
            "physics_list": g4app.physics_list_name(data.mode, spec.em_option, spec.hadronic),
            "hadronic_data": RECIPE if offline_hadronic else "",
            "xs_scale": spec.xs_scale or {},
            "em_option": spec.em_option, "geometry_hash": geom.hash, "seed": spec.seed,
            "gun": gun.model_dump(mode="json"), "n_events": spec.n,
            "fastshower_version": __version__, "scoring": detector.scoring,
            "scoring_note": g4app.SCORING[detector.scoring],
            "notes": (OFFLINE_NOTE + "; " + OFFLINE_HADRONIC_NOTE if offline_hadronic
                      else OFFLINE_NOTE if data.mode == "offline" else ""),
            "upstream_x0": spec.upstream_x0,
            "fast_simulation": None if s.hook is None else {**spec.fast,
                                                            "what": s.hook.describe()},
            **spec.meta,
        })
    pending: list[tuple] = []
    done = [0]
    leakage = g4app.LeakageAction() if spec.leakage else None
    escaped: list[float] = []
    if leakage is not None:
        run.SetUserAction(leakage)

    entries: list[np.ndarray] = []
    flushes = [0]

    def flush() -> None:
        if not pending:
            return
        ids, en, tm, lost = zip(*pending, strict=True)
        counts = [len(i) for i in ids]
        lo, hi = done[0] - len(pending), done[0]
        ids, en, tm = np.concatenate(ids), np.concatenate(en), np.concatenate(tm)
        if s.hook is not None:  # the model's showers, one batch for all pending events
            event = np.repeat(np.arange(len(pending)), counts)
            made = s.hook.showers(np.concatenate(entries), np.repeat(
                np.arange(len(pending)), [len(e) for e in entries]),
                seed=spec.seed * 1_000_003 + flushes[0])
            counts, ids, en, tm = merge_hits(*(np.concatenate(pair) for pair in zip(
                (event, ids, en, tm), made, strict=True)), len(pending))
            entries.clear()
        flushes[0] += 1

        def jagged(values, dtype):
            return ak.unflatten(values.astype(dtype), counts)

        writer.write(ShowerBatch(
            primaries=primaries.subset(slice(lo, hi)),
            cell_id=jagged(ids, np.int32), cell_energy=jagged(en, np.float32),
            cell_time=jagged(tm, np.float32), lost_energy=np.array(lost)))
        pending.clear()

    def on_event(event_id: int, hits: tuple) -> None:
        if s.hook is not None:
            entries.append(detector.entry.take())
        if writer is not None:
            pending.append(hits)
        done[0] += 1
        if leakage is not None:
            escaped.append(leakage.take())
        if writer is not None and len(pending) >= spec.chunk:
            flush()
        if report is not None:
            report(done[0])

    run.SetUserAction(g4app.EventAction(detector, on_event))
    run.Initialize()
    elements = write_em_tables(g4, data)
    t0 = time.process_time()
    try:
        run.BeamOn(spec.n)
        if writer is not None:
            flush()
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        cleanup(data)
    return {"cpu_seconds": time.process_time() - t0, "n": spec.n, "mode": data.mode,
            "elements": elements, "out": spec.out if writer is not None else None,
            "escaped_mev": escaped,
            "fast_showers": None if s.hook is None else s.hook.handed,
            "fast_energy_mev": None if s.hook is None else s.hook.handed_energy}


def main() -> None:
    """``python -m fastshower.simulation.runner SPEC_JSON RESULT_JSON``: one job in a fresh
    process (a Geant4 run manager lives once per process; cluster workers live longer)."""
    result = run_job(JobSpec(**json.loads(sys.argv[1])))
    Path(sys.argv[2]).write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
