"""The `fastshower` command line: a thin layer over the Python API, one subcommand per stage."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
import yaml
from rich.console import Console
from rich.table import Table

from fastshower.errors import FastShowerError

try:  # typer >= 0.16 carries its own copy of click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer on the real click
    from click.exceptions import NoArgsIsHelpError, UsageError

console = Console()
app = typer.Typer(help="Fast ML calorimeter showers for high-granularity calorimeters.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
geometry_app = typer.Typer(help="Build, inspect and draw detector geometries.",
                           no_args_is_help=True)
app.add_typer(geometry_app, name="geometry")
regress_app = typer.Typer(help="Energy regression from shower graphs (GNN and baselines).",
                          no_args_is_help=True)
app.add_typer(regress_app, name="regress")

DEFAULT_GEOMETRY = Path("data/geometry/hgcal_roi.h5")


def finite(value: float | None) -> float | None:
    """Option callback: NaN and inf are refused (click's float ranges let NaN through)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def positive(value: float | None) -> float | None:
    """Option callback: a finite number above zero."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value} is not a finite number above zero")
    return value


def _load_yaml(path: Path | None) -> dict:
    if path is None:
        return {}
    if not path.is_file():
        raise FastShowerError(f"config file {path} does not exist")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise FastShowerError(f"config file {path} is not valid YAML: {err}") from None


def _parse_set(values: list[str]) -> dict:
    """--set key=value pairs, values parsed as YAML scalars."""
    out = {}
    for item in values:
        if "=" not in item:
            raise FastShowerError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _refuse_overwrite(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise FastShowerError(f"{out} exists; pass --force to overwrite it")


def _save_geometry(out: Path, force: bool, doing: str, make) -> None:
    """``make()`` a geometry (under a status line ``doing``) and save it to ``out``."""
    from fastshower.geometry import save

    _refuse_overwrite(out, force)
    with console.status(doing):
        geom = make()
    out.parent.mkdir(parents=True, exist_ok=True)
    save(geom, out)
    console.print(f"wrote {out}: {geom.builder} geometry, {len(geom.layers)} layers, "
                  f"{geom.n_cells} cells, {geom.edges.shape[1]} directed edges, "
                  f"hash {geom.short_hash}")


@geometry_app.command("build")
def geometry_build(
    builder: Annotated[str, typer.Option(
        help="Geometry builder: hgcal, grid or calochallenge.")] = "hgcal",
    config: Annotated[Path | None, typer.Option(help="YAML file with builder settings.")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override a setting: key=value.")] = [],  # noqa: B006
    out: Annotated[Path, typer.Option(help="Output geometry file (.h5).")] = DEFAULT_GEOMETRY,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Build a geometry with its neighbour graph and save it as one hashed file."""
    from fastshower.geometry import build_geometry

    settings = {**_load_yaml(config), **_parse_set(set_)}
    _save_geometry(out, force, f"building {builder} geometry",
                   lambda: build_geometry(builder, settings))


@geometry_app.command("import")
def geometry_import(
    source: Annotated[Path, typer.Argument(
        help="A cell table (.csv, .parquet, .h5, .root: columns in docs/your-data.md) or a "
             "CaloChallenge binning XML.")],
    out: Annotated[Path, typer.Option(help="Output geometry file (.h5).")],
    config: Annotated[Path | None, typer.Option(
        help="YAML with the material of the layers: absorbers [[material, mm]] and "
             "sensor_thickness (mm), or layers: [{absorbers, sensor_thickness}, ...] for a "
             "table; z_front (mm) for an XML.")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override a setting: key=value.")] = [],  # noqa: B006
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Import a geometry described elsewhere (its voxels or cells become the geometry's cells)
    and save it with its neighbour graph as one hashed file."""
    from fastshower.geometry import import_geometry

    settings = {**_load_yaml(config), **_parse_set(set_)}
    _save_geometry(out, force, f"importing {source}",
                   lambda: import_geometry(source, settings))


@geometry_app.command("export")
def geometry_export(
    path: Annotated[Path, typer.Argument(help="Geometry file.")],
    out: Annotated[Path, typer.Option(help="Cell table to write: .csv, .parquet, .h5 or .root.")],
) -> None:
    """Write a geometry's cells as a table (the columns `geometry import` reads)."""
    from fastshower.geometry import load
    from fastshower.geometry.table import cell_table, write_table

    geom = load(path)
    write_table(cell_table(geom, type_names=out.suffix.lower() != ".root"), out)
    console.print(f"wrote {out}: {geom.n_cells} cells")


@geometry_app.command("info")
def geometry_info(
    path: Annotated[Path, typer.Argument(help="Geometry file.")] = DEFAULT_GEOMETRY,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Cells per layer and type, edges by kind, depth in X0 and lambda per layer."""
    from fastshower.geometry import load
    from fastshower.geometry.summary import summary

    s = summary(load(path))
    if as_json:
        print(json.dumps(s, indent=2))
        return
    console.print(f"[bold]{path}[/]: builder {s['builder']}, {s['n_cells']} cells, "
                  f"hash {s['hash'][:12]}")
    console.print("edges by kind (directed): " +
                  ", ".join(f"{k} {v}" for k, v in s["edges_by_kind"].items()))
    table = Table("layer", "section", "z [mm]", "X0", "λ", "silicon", "scintillator",
                  title="layers")
    for row in s["layers"]:
        table.add_row(str(row["index"]), row["section"], f"{row['z']:.1f}",
                      f"{row['depth_x0']:.2f}", f"{row['depth_lambda']:.2f}",
                      str(row["silicon"]), str(row["scintillator"]))
    console.print(table)


@geometry_app.command("plot")
def geometry_plot(
    path: Annotated[Path, typer.Argument(help="Geometry file.")] = DEFAULT_GEOMETRY,
    layer: Annotated[int | None, typer.Option(
        min=0, help="Layer index; default: the one with the most "
                                  "silicon-scintillator edges.")] = None,
    out: Annotated[Path, typer.Option(help="Output PNG.")] = Path("geometry.png"),
) -> None:
    """Draw one layer: cells by type and thickness, neighbour edges, border edges in red."""
    from fastshower.geometry import load
    from fastshower.geometry.plot import border_layer, plot_layer

    geom = load(path)
    layer = border_layer(geom) if layer is None else layer
    if not 0 <= layer < len(geom.layers):
        raise FastShowerError(f"layer {layer} out of range 0..{len(geom.layers) - 1}")
    plot_layer(geom, layer, out)
    console.print(f"wrote {out} (layer {layer})")


def _numbers(text: str, sep: str, what: str, usage: str,
             sizes: tuple[int, ...] | None = None) -> list[float]:
    """Finite numbers separated by ``sep``, as many as one of ``sizes`` (None: any number);
    one-line errors."""
    try:
        values = [float(v) for v in text.split(sep)]
    except ValueError:
        values = []
    if (not values or (sizes and len(values) not in sizes)
            or not all(math.isfinite(v) for v in values)):
        raise FastShowerError(f"cannot read --{what} {text!r}: use {usage} (finite numbers)")
    return values


def parse_energy(text: str, spectrum: str | None) -> tuple[list[float], str]:
    """'10' (fixed), '10,50,100' (list) or '1:500' (range; uniform or log-uniform), in GeV."""
    usage = "10, 10,50,100 or 1:500 (GeV)"
    if ":" in text:
        return _numbers(text, ":", "energy", usage, (2,)), spectrum or "log-uniform"
    values = _numbers(text, ",", "energy", usage)
    return values, spectrum or ("fixed" if len(values) == 1 else "list")


def _range(text: str, what: str) -> tuple[float, float]:
    parts = _numbers(text, ":", what, "2.0 or 1.8:2.2", (1, 2))
    return (parts[0], parts[-1])


def _vector(text: str, what: str) -> tuple[float, float, float]:
    x, y, z = _numbers(text, ",", what, "three numbers x,y,z", (3,))
    return (x, y, z)


def default_geometry(path: Path) -> Path:
    """The geometry file to use: the default one is built on first use."""
    from fastshower.geometry import build_geometry, save

    if path == DEFAULT_GEOMETRY and not path.exists():
        console.print(f"building the default geometry -> {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        save(build_geometry("hgcal"), path)
    return path


def _valid(config, what: str, /, **values):
    """``config(**values)``; a validation failure becomes one line starting with ``what``."""
    from pydantic import ValidationError

    try:
        return config(**values)
    except ValidationError as err:
        raise FastShowerError(f"{what}: " + "; ".join(
            ": ".join([*(["/".join(map(str, e["loc"]))] if e["loc"] else []),
                       e["msg"].removeprefix("Value error, ")]) for e in err.errors())) from None


def make_gun(particle: str, energy: str, spectrum: str | None, eta: str, phi: str,
             direction: str | None, vertex_sigma: str, theta: str | None = None,
             aim: str | None = None):
    """The particle gun of `simulate` and `generate`, with one-line errors."""
    from pydantic import ValidationError

    from fastshower.simulation.gun import GunConfig

    energies, spec = parse_energy(energy, spectrum)
    try:
        return GunConfig(particle=particle, energy=energies, spectrum=spec,
                         eta=_range(eta, "eta"), phi_deg=_range(phi, "phi"),
                         direction=_vector(direction, "direction") if direction else None,
                         theta_deg=_range(theta, "theta") if theta else None,
                         aim_mm=_vector(aim, "aim") if aim else None,
                         vertex_sigma=_vector(vertex_sigma, "vertex-sigma"))
    except ValidationError as err:
        raise FastShowerError("; ".join(e["msg"].removeprefix("Value error, ")
                                        for e in err.errors())) from None


# options shared by `simulate` and `generate` (the particle gun)
Particle = Annotated[str, typer.Option(help="e-, e+, gamma, mu-, mu+, pi-, pi+.")]
Energy = Annotated[str, typer.Option(help="GeV: 10 | 10,50,100 | 1:500 (a range).")]
Spectrum = Annotated[str | None, typer.Option(
    help="fixed, list, uniform or log-uniform (default from --energy).")]
Eta = Annotated[str, typer.Option(help="Pseudorapidity or range, e.g. 2.0 or 1.9:2.1.")]
Phi = Annotated[str, typer.Option(help="Azimuth in degrees, or a range.")]
Theta = Annotated[str | None, typer.Option(
    help="Polar angle from the z axis in degrees, or a range (uniform), instead of --eta: "
         "incidence on a calorimeter facing +z, e.g. 0:30 with --aim.")]
Aim = Annotated[str | None, typer.Option(
    help="Lines pass through this point x,y,z (mm), starting 100 mm before it, instead of "
         "from the origin: e.g. the centre of a grid calorimeter's front face.")]
Count = Annotated[int, typer.Option("--n", min=1, help="Number of showers.")]
ModelGeometry = Annotated[Path, typer.Option(help="Geometry file the model was trained on.")]


@app.command()
def simulate(
    particle: Particle = "e-",
    energy: Energy = "10",
    spectrum: Spectrum = None,
    eta: Eta = "2.0",
    phi: Phi = "90",
    theta: Theta = None,
    aim: Aim = None,
    n: Count = 100,
    jobs: Annotated[int, typer.Option(
        min=1, help="Geant4 jobs, one output file each (more jobs: smaller files, less lost when a "
             "stopped production resumes).")] = 1,
    workers: Annotated[int | None, typer.Option(
        min=1, help="Geant4 processes at once (default: one per job, at most one per core).")
    ] = None,
    seed: Annotated[int, typer.Option(
        min=0, help="Production seed (jobs get distinct seeds).")] = 1,
    job_range: Annotated[str | None, typer.Option(
        help="Run only jobs FIRST:END of the production (machines sharing one production: "
             "same command, each a range; the files join in one folder).")] = None,
    geometry: Annotated[Path, typer.Option(help="Geometry file.")] = DEFAULT_GEOMETRY,
    physics: Annotated[str, typer.Option(help="auto, full (Geant4 datasets) or offline.")] = "auto",
    em_option: Annotated[int, typer.Option(min=0, max=1,
                                           help="Geant4 EM option: 0 or 1.")] = 0,
    direction: Annotated[str | None, typer.Option(
        help="Fixed direction x,y,z instead of (eta, phi) from the origin.")] = None,
    vertex_sigma: Annotated[str, typer.Option(
        help="Gaussian vertex smearing sx,sy,sz in mm.")] = "0,0,0",
    out: Annotated[Path, typer.Option(help="Output folder (one ROOT file per job).")] = Path(
        "samples/e-_10GeV"),
    force: Annotated[bool, typer.Option(help="Overwrite an existing output folder.")] = False,
    upstream_x0: Annotated[float, typer.Option(
        min=0.0, max=100.0, callback=finite,
        help="Silicon in front of the calorimeter, in radiation lengths (tracker material).")
    ] = 0.0,
    fast_model: Annotated[Path | None, typer.Option(
        help="Hybrid run: showers of the particles the model generates (e+-/gamma, pions) "
             "reaching the calorimeter come from this model (run folder, model.pt, or ONNX "
             "export with --fast-backend onnx).")] = None,
    fast_particles: Annotated[str | None, typer.Option(
        help="Hybrid run: only these of the model's particles, e.g. pi-,pi+ (default: all).")
    ] = None,
    fast_backend: Annotated[str, typer.Option(help="torch or onnx.")] = "torch",
    fast_min_energy: Annotated[float, typer.Option(
        callback=positive, help="Hybrid run: lowest energy (GeV) handed to the model.")] = 1.0,
    scheduler: Annotated[str | None, typer.Option(
        help="Run the jobs on Dask: 'local' or a scheduler address (tcp://host:8786).")] = None,
    scoring: Annotated[str, typer.Option(
        help="cells: cells are Geant4 volumes scored in C++, time = time of flight (fastest); "
             "steps: sensor steps looked up in Python, time = first deposit.")] = "cells",
) -> None:
    """Simulate showers with Geant4 and write sim-hit ROOT files (resumable)."""
    from fastshower.simulation.g4data import describe_mode
    from fastshower.simulation.jobs import simulate as run

    if physics not in ("auto", "full", "offline"):
        raise FastShowerError(f"--physics must be auto, full or offline, not {physics!r}")
    if em_option not in (0, 1):
        raise FastShowerError(f"--em-option must be 0 or 1, not {em_option}")
    gun = make_gun(particle, energy, spectrum, eta, phi, direction, vertex_sigma, theta, aim)
    try:
        mode = describe_mode(physics, em_option)
    except RuntimeError as err:
        raise FastShowerError(str(err)) from None
    fast = None
    if fast_model is not None:
        from fastshower.inference.g4hook import fast_spec

        fast = fast_spec(fast_model, fast_backend, fast_min_energy,
                         fast_particles and [p.strip() for p in fast_particles.split(",")])
    files = run(default_geometry(geometry), gun, n, out, jobs=jobs, seed=seed, physics=physics,
                em_option=em_option, force=force, upstream_x0=upstream_x0, fast=fast,
                scheduler=scheduler, scoring=scoring, workers=workers,
                announce=lambda: console.print(mode), job_range=_job_range(job_range))
    console.print(f"wrote {len(files)} file(s) to {out}")


def _job_range(text: str | None) -> tuple[int, int] | None:
    """'FIRST:END' -> (first, end); one clear error for anything else."""
    if text is None:
        return None
    try:
        first, end = (int(v) for v in text.split(":"))
    except ValueError:
        raise FastShowerError(f"--job-range must be FIRST:END (e.g. 40:50), not {text!r}"
                              ) from None
    return first, end


@app.command()
def preprocess(
    input_: Annotated[str, typer.Option(
        "--input", help="Sim-hit sample: file, folder, glob (several: comma-separated).")],
    geometry: Annotated[Path, typer.Option(help="Geometry file of the sample.")] = (
        DEFAULT_GEOMETRY),
    out: Annotated[Path, typer.Option(help="Cache root folder.")] = Path("cache"),
    threshold_mip: Annotated[float, typer.Option(min=0.0, callback=finite,
                                                 help="Cell threshold in MIPs.")] = 0.5,
    max_hits: Annotated[int | None, typer.Option(
        min=1, help="Keep the N most energetic hits.")] = None,
    bad_showers: Annotated[str, typer.Option(
        help="A shower with NaN/negative energies or unknown cells: 'raise' (stop, naming "
             "file and shower) or 'skip' (leave it out, counted).")] = "raise",
    workers: Annotated[int, typer.Option(min=1,
                                         help="Transform worker processes.")] = 1,
    scheduler: Annotated[str | None, typer.Option(
        help="Transform on Dask: 'local' or a scheduler address (tcp://host:8786).")] = None,
) -> None:
    """Turn sim-hit files into cached graph shards (train/val/test) for training."""
    from fastshower.data.cache import preprocess as run
    from fastshower.data.transform import TransformConfig

    cfg = _valid(TransformConfig, "bad preprocessing option", threshold_mip=threshold_mip,
                 max_hits=max_hits, bad_showers=bad_showers)
    folder = run(input_, geometry, out, cfg, workers=workers, scheduler=scheduler)
    manifest = json.loads((folder / "manifest.json").read_text())
    console.print(f"cache {folder}: " + ", ".join(f"{k} {v}" for k, v in
                                                  manifest["counts"].items())
                  + (f"; {manifest['skipped_showers']} bad showers left out"
                     if manifest["skipped_showers"] else ""))


@app.command()
def validate(
    reference: Annotated[str, typer.Option(help="Reference sample: file, folder or glob.")],
    generated: Annotated[str, typer.Option(help="Sample to test: file, folder or glob.")],
    geometry: Annotated[Path, typer.Option(help="Geometry file of both samples.")] = (
        DEFAULT_GEOMETRY),
    out: Annotated[Path, typer.Option(help="Report folder.")] = Path("validation"),
    seed: Annotated[int, typer.Option(min=0,
                                      help="Seed of the splits and the classifier.")] = 0,
    regressor: Annotated[Path | None, typer.Option(
        help="Energy-regression run (trained on Geant4) to apply to both samples.")] = None,
) -> None:
    """Compare two sim-hit samples: metrics.json and a self-contained HTML report."""
    from fastshower.validation.report import validate as run

    if regressor is not None:
        from fastshower.geometry import load
        from fastshower.training.regress import RegressionRun

        regressor = RegressionRun(regressor, load(geometry))
    with console.status("comparing samples"):
        m = run(reference, generated, geometry, out, seed=seed, regressor=regressor)
    console.print(f"classifier AUC {m['generated']['classifier']['auc']:.3f} (floor "
                  f"{m['floor']['classifier']['auc']:.3f}), FPD {m['generated']['fpd']:.3f} "
                  f"(floor {m['floor']['fpd']:.3f}) -> {out / 'report.html'}")
    if "regression" in m:
        r, g = m["regression"]["reference"], m["regression"]["generated"]
        console.print(f"energy regression: response {r['response']:.4f} (Geant4) vs "
                      f"{g['response']:.4f}, resolution {r['resolution']:.4f} vs "
                      f"{g['resolution']:.4f}")


@app.command("import-hits")
def import_hits(
    source: Annotated[Path, typer.Argument(help="ROOT file with a tree of events.")],
    out: Annotated[Path, typer.Option(help="Sim-hit file to write (.root).")],
    geometry: Annotated[Path, typer.Option(
        help="Geometry whose cell keys are the source's detids (geometry import).")],
    branches: Annotated[Path | None, typer.Option(
        help="YAML naming the branches (detid, energy, time, primary_energy, primary_pdg or "
             "particle, primary_dx/dy/dz or primary_eta/phi, units: docs/your-data.md).")] = None,
    set_: Annotated[list[str], typer.Option(
        "--set", help="A branch setting: detid=simhit_detid, energy_unit=GeV.")] = [],  # noqa: B006
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Map an external sim-hit ntuple onto a geometry's cells and write fastshower's sim-hit
    file (unknown detids counted and reported)."""
    from fastshower.data.imports import HitBranches, import_hits
    from fastshower.geometry import load
    from fastshower.progress import Tracker

    _refuse_overwrite(out, force)
    b = _valid(HitBranches, "branch settings", **{**_load_yaml(branches), **_parse_set(set_)})
    geom = load(geometry)
    with Tracker(f"importing {source.name}", 0, unit="events", console=console) as bar:
        summary = import_hits(source, geom, out, b, on_chunk=lambda done, total: bar.update(
            completed=done, total=total))
    console.print(f"wrote {out}: {summary['showers']} showers, {summary['hits']} cell hits")
    if summary["unknown_detid_hits"]:
        console.print(f"[yellow]{summary['unknown_detid_hits']} hits with detids not in "
                      f"{geometry} ({summary['unknown_detid_energy_mev']:.1f} MeV): recorded as "
                      "the showers' lost_energy[/]")


@app.command()
def export(
    input_: Annotated[str, typer.Option("--input", help="Sample: file, folder or glob.")],
    out: Annotated[Path, typer.Option(help="Output HDF5 file.")],
    format_: Annotated[str, typer.Option("--format", help="Export format.")] = "calochallenge",
    geometry: Annotated[Path, typer.Option(help="Geometry file of the sample.")] = (
        DEFAULT_GEOMETRY),
    like: Annotated[Path | None, typer.Option(
        help="A reference export whose binning and energy scale to reuse.")] = None,
    scale: Annotated[str | None, typer.Option(
        help="Energy factor: 'auto' (mean voxel sum = mean incident energy; the default, "
             "except for a geometry imported from a binning XML: 1) or a number.")] = None,
) -> None:
    """Export showers in the CaloChallenge 2022 HDF5 format (+ binning XML, scale JSON)."""
    from fastshower.geometry import load
    from fastshower.simhits import read_sample
    from fastshower.validation.export import export_calochallenge

    if format_ != "calochallenge":
        raise FastShowerError(f"unknown export format {format_!r}; available: calochallenge")
    geom = load(geometry)
    batch, meta = read_sample(input_, geom)
    geom.require_same(meta.get("geometry_hash"), str(input_))
    if scale not in (None, "auto"):
        scale = _numbers(scale, ",", "scale", "auto or a number above 0", sizes=(1,))[0]
    info = export_calochallenge(batch, geom, out, like=like, scale=scale)
    console.print(f"wrote {out} ({info['n_showers']} showers x {info['n_voxels']} voxels), "
                  f"{out.with_suffix('.xml')} and {out.with_suffix('.json')} "
                  f"(energy scale {info['scale']:.2f})")


@app.command()
def train(
    data: Annotated[str, typer.Option(help="Geant4 sample(s): folder, file or glob; "
                                           "several joined by commas.")],
    out: Annotated[Path, typer.Option(help="Run folder (rerun the same command to resume).")],
    model: Annotated[str, typer.Option(help="Registered generator: layerhits, flowgnn, "
                                            "parametric or a plug-in's name.")] = "flowgnn",
    config: Annotated[Path | None, typer.Option(help="YAML training config.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a config key: max_steps=2000, flowgnn.gnn_hidden=32.")] = None,
    geometry: Annotated[Path, typer.Option(help="Geometry file of the sample.")] = (
        DEFAULT_GEOMETRY),
) -> None:
    """Train a generator on the train split of a Geant4 sample (run folder, resumable).
    Data-parallel: torchrun --nproc_per_node N -m fastshower train ..."""
    from fastshower.training.loop import TrainConfig
    from fastshower.training.loop import train as run

    values = {"model": model, **_load_yaml(config)}
    for key, value in _parse_set(set_ or []).items():
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    cfg = _valid(TrainConfig, "bad training config", **values)
    record = run(data, geometry, out, cfg)
    if not record:  # a data-parallel rank other than 0: rank 0 reports
        return
    console.print(f"{cfg.model}: step {record.get('step')}, separation power (mean over "
                  f"observables) {record.get('sep_power_mean', float('nan')):.3f} on the "
                  f"validation split -> {out / 'model.pt'}")


@regress_app.command("train")
def regress_train(
    cache: Annotated[Path, typer.Option(help="Graph cache folder (fastshower preprocess).")],
    out: Annotated[Path, typer.Option(help="Run folder (rerun the same command to resume).")],
    config: Annotated[Path | None, typer.Option(help="YAML regression config.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a key: conv=edge, high_level=true, max_epochs=40.")] = None,
    geometry: Annotated[Path, typer.Option(help="Geometry file of the sample.")] = (
        DEFAULT_GEOMETRY),
) -> None:
    """Train the energy-regression GNN (3 graph convolutions, 2 BN, 2 FC) on a graph cache."""
    from fastshower.models.regression import RegressionConfig
    from fastshower.training.regress import train as run

    cfg = _valid(RegressionConfig, "bad regression config",
                 **{**_load_yaml(config), **_parse_set(set_ or [])})
    result = run(cache, geometry, out, cfg)
    if result["rank"] != 0:  # a data-parallel rank other than 0: rank 0 reports
        return
    console.print(f"epoch {result['epoch']}: best validation mean |1 - E/E_true| "
                  f"{result['best_val_loss']:.4f} -> {out / 'model.pt'}")


@regress_app.command("evaluate")
def regress_evaluate(
    runs: Annotated[str, typer.Option(help="Regression run folder(s), joined by commas.")],
    cache: Annotated[Path, typer.Option(help="Graph cache folder (its test split is used).")],
    out: Annotated[Path, typer.Option(help="Output folder: regression.json, regression.png.")],
    geometry: Annotated[Path, typer.Option(help="Geometry file of the sample.")] = (
        DEFAULT_GEOMETRY),
    held_out: Annotated[Path | None, typer.Option(
        help="Evaluate on every shower of this cache (another sample, preprocessed with the "
             "same options) instead of the test split.")] = None,
) -> None:
    """Response and resolution vs energy: the GNN run(s), a linear calibrated energy sum and a
    DNN on high-level variables, on the same test split (or a held-out sample)."""
    from fastshower.training.regress import evaluate

    result = evaluate(runs.split(","), cache, geometry, out, held_out=held_out)
    table = Table("method", "response", "resolution", "mean |1 - E/E_true|")
    for name, r in result["methods"].items():
        table.add_row(name, f"{r['response']:.4f}", f"{r['resolution']:.4f}",
                      f"{r['mean_relative_error']:.4f}")
    console.print(table)
    console.print(f"-> {out / 'regression.json'}, {out / 'regression.png'}")


@app.command()
def tune(
    data: Annotated[str, typer.Option(help="Geant4 sample(s), several joined by commas.")],
    out: Annotated[Path, typer.Option(help="Study folder: trial runs, best.yaml, plot.")],
    config: Annotated[Path, typer.Option(help="Search YAML: base, space, objective.")] = Path(
        "configs/tune/flowgnn.yaml"),
    trials: Annotated[int, typer.Option(min=1,
                                        help="Trials to run (added to the study).")] = 10,
    storage: Annotated[str | None, typer.Option(
        help="Optuna storage URL shared by workers (default: sqlite in OUT).")] = None,
    study: Annotated[str, typer.Option(help="Study name in the storage.")] = "fastshower",
    geometry: Annotated[Path, typer.Option(help="Geometry file of the sample.")] = (
        DEFAULT_GEOMETRY),
) -> None:
    """Hyper-parameter search with Optuna (pruning, shared study database)."""
    from pydantic import ValidationError

    from fastshower.training.tune import TuneConfig
    from fastshower.training.tune import tune as run

    if trials <= 0:
        raise FastShowerError("--trials must be positive")
    try:
        cfg = TuneConfig(**_load_yaml(config))
    except (ValidationError, TypeError) as err:
        raise FastShowerError(f"bad search config {config}: {err}") from None
    best = run(cfg, data, geometry, out, trials, storage, study)
    console.print(f"best of {best['trials']} trials ({best['pruned']} pruned): trial "
                  f"{best['number']} ({best['run']}), "
                  f"{cfg.objective} {best['value']:.4f}, {best['params']} "
                  f"-> {out / 'best.yaml'}, {out / 'search.png'}")


@app.command()
def generate(
    run: Annotated[Path, typer.Option(
        help="Training run folder or model.pt (torch), or export folder (onnx).")],
    out: Annotated[Path, typer.Option(help="Output sim-hit ROOT file.")],
    backend: Annotated[str, typer.Option(help="torch or onnx (ONNX Runtime).")] = "torch",
    particle: Particle = "e-",
    energy: Energy = "10",
    spectrum: Spectrum = None,
    eta: Eta = "2.0",
    phi: Phi = "90",
    theta: Theta = None,
    aim: Aim = None,
    n: Count = 100,
    seed: Annotated[int, typer.Option(min=0,
                                      help="Seed of conditions and generation.")] = 1,
    batch_size: Annotated[int, typer.Option(min=1,
                                            help="Showers per generation batch.")] = 500,
    allow_extrapolation: Annotated[bool, typer.Option(
        help="Generate outside the training range (logged, and flagged in the file).")] = False,
    geometry: ModelGeometry = DEFAULT_GEOMETRY,
    primaries_from: Annotated[str | None, typer.Option(
        help="Generate exactly the primaries of this sample (sim-hit file, folder or glob, or "
             "CaloChallenge HDF5), in order, instead of drawing them from the gun "
             "options.")] = None,
) -> None:
    """Generate showers with a trained model into a sim-hit ROOT file (same schema as Geant4)."""
    from fastshower.geometry import load
    from fastshower.inference.generate import generate_file, load_generator
    from fastshower.simhits import read_primaries
    from fastshower.simulation.gun import require_on_detector, sample_primaries

    geom = load(default_geometry(geometry))
    if primaries_from is None:
        gun = make_gun(particle, energy, spectrum, eta, phi, None, "0,0,0", theta, aim)
        primaries = sample_primaries(gun, n, np.random.default_rng(seed))
    else:
        primaries = read_primaries(primaries_from, geom)
    generator = load_generator(run, geom, backend)
    require_on_detector(geom, primaries)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = generate_file(generator, primaries, out, seed=seed, batch_size=batch_size,
                         allow_extrapolation=allow_extrapolation)
    console.print(f"wrote {len(primaries)} {generator.name} showers -> {path}")


@app.command("export-model")
def export_model(
    run: Annotated[Path, typer.Option(help="Training run folder (or its model.pt).")],
    out: Annotated[Path, typer.Option(help="Output folder for model.onnx and its files.")],
    geometry: ModelGeometry = DEFAULT_GEOMETRY,
    triton: Annotated[bool, typer.Option(
        help="Also write a Triton model repository under OUT/triton_repository.")] = False,
) -> None:
    """Export a generator to ONNX with its side file and model card (checked against PyTorch)."""
    from fastshower.geometry import load
    from fastshower.inference.generate import load_generator
    from fastshower.inference.onnx import export_model as export

    generator = load_generator(run, load(default_geometry(geometry)))
    with console.status("exporting to ONNX and checking ONNX Runtime against PyTorch"):
        folder = export(generator, out)
    card = json.loads((folder / "model_card.json").read_text())
    console.print(f"wrote {folder / 'model.onnx'} ({card['model_bytes'] / 1e6:.1f} MB); ONNX "
                  f"Runtime vs PyTorch: largest relative difference of the outputs "
                  f"{card['check']['max_relative_diff']:.1e} on {card['check']['showers']} "
                  "showers")
    if triton:
        from fastshower.inference.serve import triton_repository

        repo = triton_repository(folder, out / "triton_repository")
        console.print(f"Triton model repository -> {repo}")


@app.command()
def serve(
    model: Annotated[Path, typer.Option(help="Export folder (fastshower export-model).")],
    host: Annotated[str, typer.Option(help="Address to bind; localhost by default.")] = (
        "127.0.0.1"),
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    name: Annotated[str, typer.Option(help="Model name in the URLs.")] = "fastshower",
    max_showers: Annotated[int, typer.Option(min=1,
                                             help="Most showers in one request.")] = 256,
    max_batch: Annotated[int, typer.Option(min=1,
                                           help="Most showers in one model call.")] = 8,
    max_delay_ms: Annotated[float, typer.Option(min=0.0, max=60_000.0, callback=finite,
                                                help="Longest wait to fill a batch.")] = 5.0,
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime threads.")] = 1,
    allow_extrapolation: Annotated[bool, typer.Option(
        help="Serve conditions outside the training range.")] = False,
    geometry: ModelGeometry = DEFAULT_GEOMETRY,
) -> None:
    """Serve a generator over HTTP with the KServe v2 (Triton) inference protocol."""
    import logging

    from fastshower.geometry import load
    from fastshower.inference.serve import ServeConfig
    from fastshower.inference.serve import serve as run

    if min(max_showers, max_batch, threads) <= 0:
        raise FastShowerError("--max-showers, --max-batch and --threads must be positive")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = ServeConfig(host=host, port=port, model_name=name, max_showers=max_showers,
                      max_batch=max_batch, max_delay_ms=max_delay_ms, threads=threads,
                      allow_extrapolation=allow_extrapolation)
    console.print(f"serving {model} as {name!r} on http://{host}:{port}/v2 (Ctrl-C stops)")
    run(model, load(default_geometry(geometry)), cfg)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("demo-out"),
    n: Annotated[int, typer.Option("--n", min=40, help="Geant4 showers.")] = 200,
    particle: Annotated[str, typer.Option(help="e- or gamma.")] = "gamma",
    energy: Annotated[str, typer.Option(help="GeV range (log-uniform).")] = "1:100",
) -> None:
    """The main job: the default geometry, Geant4 showers in it, the same showers from the
    shipped LayerHits, FlowGNN and parametric models, validation reports and the speed-up; then
    full events through tracker material, with the calorimeter showers from LayerHits inside
    Geant4."""
    from fastshower.demo import run_demo

    run_demo(out, n, make_gun(particle, energy, "log-uniform", "1.98:2.02", "89:91", None,
                              "0,0,0"), say=console.print)


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds: worker pools and Geant4 jobs are stopped


def main() -> None:
    """Entry point: user errors are printed as one line, without a traceback; SIGTERM stops
    cleanly like Ctrl-C (no leaked worker processes, no file that looks complete)."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as err:
        console.print(err.ctx.get_help())
        raise SystemExit(0) from None
    except UsageError as err:
        hint = f" (see {err.ctx.command_path} --help)" if err.ctx else ""
        console.print(f"[bold red]error:[/] {err.format_message()}{hint}", highlight=False,
                      soft_wrap=True)
        raise SystemExit(2) from None
    except typer.Abort:
        console.print("interrupted")
        raise SystemExit(130) from None
    except FastShowerError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        console.print("interrupted")
        raise SystemExit(130) from None
    if code:
        raise SystemExit(code)
