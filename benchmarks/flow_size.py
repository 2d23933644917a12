"""Is FlowGNN's layer-level flow limited by capacity or by the training sample? Trains the flow
alone at several sizes on the same data, same seed and schedule, and prints the training and
validation NLL per dimension every 150 steps (over-fitting shows as a rising validation NLL).
Usage:
    python benchmarks/flow_size.py --data samples/train/e- --sizes 64x4,128x6 [--steps 1200]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fastshower.data.splits import read_split
from fastshower.geometry import load
from fastshower.models.flowgnn import FlowGNN, FlowGNNConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--sizes", default="64x4,128x6", help="hidden x transforms, comma-separated")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--geometry", default="data/geometry/hgcal_roi.h5")
    ap.add_argument("--out", default="benchmarks/results/flow_size.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    geom = load(args.geometry)
    train_set = read_split(args.data, geom, "train")
    tr = FlowGNN.training_data(train_set, geom)
    va = FlowGNN.training_data(read_split(args.data, geom, "val"), geom)
    norms = FlowGNN.build(tr, geom, FlowGNNConfig(), 0).norms
    results = {}
    for size in args.sizes.split(","):
        hidden, transforms = (int(v) for v in size.split("x"))
        torch.manual_seed(0)
        model = FlowGNN(geom, norms["particles"], FlowGNNConfig(flow_hidden=hidden,
                                                                flow_transforms=transforms),
                        norms)
        opt = torch.optim.AdamW(model.flow.parameters(), 1e-3, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
        x_val, c_val = va.flow_batch(model, np.arange(len(va)), np.random.default_rng(1))
        rows, start = [], time.time()
        for step in range(1, args.steps + 1):
            rng = np.random.default_rng([0, step])
            x, c = tr.flow_batch(model, rng.choice(len(tr), 256, replace=False), rng)
            loss = -model.flow.log_prob(x, c).mean() / x.shape[1]
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if step % 150 == 0:
                with torch.no_grad():
                    val = (-model.flow.log_prob(x_val, c_val).mean() / x_val.shape[1]).item()
                rows.append({"step": step, "train_nll": loss.item(), "val_nll": val})
                print(f"{size}: step {step}: train {loss.item():.3f}, validation {val:.3f} "
                      f"({time.time() - start:.0f} s)", flush=True)
        best = min(rows, key=lambda r: r["val_nll"])
        print(f"{size}: best validation NLL {best['val_nll']:.3f} at step {best['step']}, "
              f"last {rows[-1]['val_nll']:.3f}")
        results[size] = rows
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"data": args.data, "n_train": len(tr),
                                          "results": results}, indent=2))


if __name__ == "__main__":
    main()
