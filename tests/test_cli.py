"""The command line, run as a user runs it: subcommands, --help, outputs, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def fastshower(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fastshower", *args], capture_output=True,
                          text=True, cwd=cwd, stdin=subprocess.DEVNULL, timeout=300)


@pytest.mark.parametrize("cmd", [[], ["geometry"], ["geometry", "build"], ["geometry", "info"],
                                 ["geometry", "plot"], ["geometry", "import"],
                                 ["geometry", "export"], ["import-hits"], ["simulate"],
                                 ["preprocess"],
                                 ["validate"], ["export"], ["train"], ["generate"], ["demo"]])
def test_every_command_has_help(cmd):
    proc = fastshower(*cmd, "--help")
    assert proc.returncode == 0
    assert "Usage" in proc.stdout


def test_geometry_build_info_plot(tmp_path):
    out = tmp_path / "g.h5"
    proc = fastshower("geometry", "build", "--builder", "grid", "--set", "z_front=1000",
                      "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "72285" in proc.stdout  # 25 x 51 x 51 + 60 x 11 x 11
    info = json.loads(fastshower("geometry", "info", str(out), "--json").stdout)
    assert info["n_cells"] == 72285 and len(info["layers"]) == 85
    assert info["layers"][0]["silicon"] == 51 * 51 and info["layers"][30]["scintillator"] == 121
    png = tmp_path / "layer.png"
    proc = fastshower("geometry", "plot", str(out), "--layer", "3", "--out", str(png))
    assert proc.returncode == 0 and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, message", [
    (["geometry", "build", "--builder", "cube"], "unknown geometry builder"),
    (["geometry", "build", "--set", "roi_radius"], "key=value"),
    (["geometry", "info", "missing.h5"], "does not exist"),
    (["geometry", "build", "--config", "missing.yaml"], "does not exist"),
])
def test_bad_input_is_one_line_without_traceback(args, message, tmp_path):
    proc = fastshower(*args, "--out", str(tmp_path / "x.h5")) if args[1] == "build" else \
        fastshower(*args)
    assert proc.returncode == 2
    assert message in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_existing_output_is_not_overwritten(tmp_path):
    out = tmp_path / "g.h5"
    out.write_text("precious")
    proc = fastshower("geometry", "build", "--out", str(out))
    assert proc.returncode == 2 and "--force" in proc.stdout
    assert out.read_text() == "precious"


def test_progress_goes_to_a_log_as_lines_when_output_is_not_a_terminal(tmp_path):
    from fastshower.models.pretrained import pretrained

    env = {**os.environ, "FASTSHOWER_PROGRESS_SECONDS": "0"}
    geometry = tmp_path / "g.h5"
    assert fastshower("geometry", "build", "--out", str(geometry)).returncode == 0
    proc = subprocess.run([sys.executable, "-m", "fastshower", "generate", "--run",
                           str(pretrained("parametric")), "--particle", "gamma", "--energy",
                           "10:100", "--eta", "1.99:2.01", "--n", "300", "--batch-size", "100",
                           "--geometry", str(geometry), "--out", str(tmp_path / "p.root")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("generating (parametric)")]
    assert [ln.split(": ")[1].split(" showers")[0] for ln in lines] == [
        "0/300", "100/300", "200/300", "300/300"]
    assert "showers/s" in lines[-1] and "ETA 0m00s" in lines[-1]
    assert "\x1b[" not in proc.stdout  # no terminal control codes in a log
