"""Bad input to every command: one line, a non-zero exit, nothing written; model files that
would run code when unpickled are refused and the code does not run."""

from __future__ import annotations

import pathlib
import sys

import pytest
import torch

from fastshower import cli
from fastshower.errors import FastShowerError
from fastshower.geometry import build_geometry, save
from fastshower.models.files import load_model_file
from fastshower.models.pretrained import pretrained


class Payload:
    """Unpickling this touches a file: a stand-in for arbitrary code."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_input")
    geometry = save(build_geometry("hgcal"), tmp / "g.h5")
    (tmp / "junk.root").write_bytes(b"this is not a ROOT file")
    good = torch.load(pretrained("parametric"), weights_only=True)
    torch.save({**good, "extra": Payload(tmp / "pwned")}, tmp / "evil.pt")
    return {"G": str(geometry), "JUNK": str(tmp / "junk.root"), "EVIL": str(tmp / "evil.pt"),
            "FLOWGNN": str(pretrained("flowgnn")), "tmp": tmp}


SIM = ["simulate", "--geometry", "G", "--out", "out"]
GEN = ["generate", "--run", "FLOWGNN", "--geometry", "G", "--particle", "gamma", "--out", "x.root"]
PRE = ["preprocess", "--input", "JUNK", "--geometry", "G", "--out", "out"]
CASES = [
    # geometry
    (["geometry", "build", "--set", "roi_radius=.nan", "--out", "g.h5"], "finite"),
    (["geometry", "build", "--set", "roi_radius=-1", "--out", "g.h5"], "greater than 0"),
    (["geometry", "build", "--set", "eta=nan", "--out", "g.h5"], "finite"),
    (["geometry", "build", "--set", "eta=4", "--out", "g.h5"], "outside the detector"),
    (["geometry", "build", "--builder", "grid", "--set", "z_front=.inf", "--out", "g.h5"],
     "finite"),
    (["geometry", "plot", "G", "--layer", "-1", "--out", "p.png"], "--layer"),
    (["geometry", "plot", "G", "--layer", "999", "--out", "p.png"], "out of range"),
    # simulate: the gun, counts, seeds, options
    (SIM + ["--energy", "nan"], "--energy"),
    (SIM + ["--energy", "inf"], "--energy"),
    (SIM + ["--energy", ""], "--energy"),
    (SIM + ["--energy", "-5"], "positive"),
    (SIM + ["--energy", "10:1"], "reversed"),
    (SIM + ["--eta", "nan"], "--eta"),
    (SIM + ["--phi", "inf:90"], "--phi"),
    (SIM + ["--n", "0"], "--n"),
    (SIM + ["--n", "-3"], "--n"),
    (SIM + ["--jobs", "0"], "--jobs"),
    (SIM + ["--workers", "0"], "--workers"),
    (SIM + ["--seed", "-1"], "--seed"),
    (SIM + ["--em-option", "2"], "--em-option"),
    (SIM + ["--direction", "0,0,0"], "zero"),
    (SIM + ["--direction", "nan,0,1"], "--direction"),
    (SIM + ["--direction", "0,0,1"], "miss the calorimeter"),
    (SIM + ["--vertex-sigma", "-1,0,0"], "negative"),
    (SIM + ["--vertex-sigma", "nan,0,0"], "--vertex-sigma"),
    (SIM + ["--upstream-x0", "nan"], "--upstream-x0"),
    (SIM + ["--upstream-x0", "-1"], "--upstream-x0"),
    (SIM + ["--fast-min-energy", "nan"], "--fast-min-energy"),
    (SIM + ["--fast-min-energy", "0"], "--fast-min-energy"),
    (SIM + ["--physics", "fast"], "--physics"),
    (SIM + ["--fast-model", "FLOWGNN", "--fast-particles", "pi-"], "cannot take pi-"),
    (SIM + ["--scoring", "voxels"], "--scoring"),
    # preprocess, validate, export
    (PRE, "not a readable fastshower sim-hit file"),
    (PRE + ["--threshold-mip", "nan"], "--threshold-mip"),
    (PRE + ["--threshold-mip", "-1"], "--threshold-mip"),
    (PRE + ["--max-hits", "0"], "--max-hits"),
    (PRE + ["--workers", "0"], "--workers"),
    (["validate", "--reference", "JUNK", "--generated", "JUNK", "--geometry", "G", "--out",
      "v"], "not a readable fastshower sim-hit file"),
    (["validate", "--reference", "JUNK", "--generated", "JUNK", "--seed", "-1"], "--seed"),
    (["export", "--input", "JUNK", "--geometry", "G", "--out", "e.h5"], "not a readable"),
    # training, tuning
    (["train", "--data", "JUNK", "--out", "run", "--set", "lr=nan"], "finite"),
    (["train", "--data", "JUNK", "--out", "run", "--set", "lr=.inf"], "finite"),
    (["train", "--data", "JUNK", "--out", "run", "--set", "max_steps=0"], "max_steps"),
    (["train", "--data", "JUNK", "--out", "run", "--set", "seed=-1"], "seed"),
    (["train", "--data", "JUNK", "--out", "run", "--set", "flowgnn.gnn_hidden=0"],
     "gnn_hidden"),
    (["regress", "train", "--cache", "c", "--out", "run", "--set", "lr=nan"], "finite"),
    (["tune", "--data", "JUNK", "--out", "study", "--trials", "0"], "--trials"),
    # generation and serving
    (GEN + ["--energy", "nan", "--n", "5"], "--energy"),
    (GEN + ["--energy", "50", "--n", "0"], "--n"),
    (GEN + ["--energy", "50", "--batch-size", "0"], "--batch-size"),
    (GEN + ["--energy", "50", "--seed", "-1"], "--seed"),
    (GEN + ["--energy", "50", "--eta", "1.9:nan"], "--eta"),
    (GEN + ["--energy", "50", "--eta", "1.6", "--allow-extrapolation"], "miss the calorimeter"),
    (GEN + ["--energy", "5000"], "outside the training range"),
    (GEN + ["--primaries-from", "JUNK"], "not a readable fastshower sim-hit file"),
    (["generate", "--run", "shipped:nope", "--geometry", "G", "--particle", "gamma", "--energy",
      "50", "--out", "x.root"], "no shipped model 'nope'"),
    (["generate", "--run", "EVIL", "--geometry", "G", "--out", "x.root"], "could run code"),
    (["export-model", "--run", "EVIL", "--geometry", "G", "--out", "onnx"], "could run code"),
    (["serve", "--model", "onnx", "--port", "0"], "--port"),
    (["serve", "--model", "onnx", "--port", "70000"], "--port"),
    (["serve", "--model", "onnx", "--max-delay-ms", "nan"], "--max-delay-ms"),
    (["serve", "--model", "onnx", "--max-batch", "0"], "--max-batch"),
    (["serve", "--model", "onnx", "--threads", "0"], "--threads"),
    (["demo", "--n", "0", "--out", "demo"], "--n"),
    (["simulatee"], "No such command"),
]


@pytest.mark.parametrize("args, message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_nonzero_and_writes_nothing(args, message, files, tmp_path,
                                                           monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["fastshower", *(files.get(a, a) for a in args)])
    with pytest.raises(SystemExit) as done:
        cli.main()
    out = capsys.readouterr()
    text = (out.out + out.err).strip()
    assert done.value.code == 2, text
    assert message in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), text
    assert not any(tmp_path.iterdir()), f"wrote {list(tmp_path.iterdir())}"


def test_a_model_file_that_would_run_code_is_refused_and_the_code_does_not_run(files):
    marker = files["tmp"] / "pwned"
    with pytest.raises(FastShowerError, match="could run code"):
        load_model_file(files["EVIL"])
    assert not marker.exists()
    torch.load(files["EVIL"], weights_only=False)  # the payload is real: plain pickle runs it
    assert marker.exists()
    marker.unlink()
