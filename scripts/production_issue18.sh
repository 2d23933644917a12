#!/usr/bin/env bash
# The Geant4 production of issue 18 (3DGAN on the CLIC-like grid): electrons of 10-510 GeV
# (uniform, as the original CLIC sample), incident at 0-30 degrees from the grid's normal
# (uniform in the polar angle, azimuth 0-360) through the centre of its front face; 10,000
# for training, then an independent held-out production of 2,000 (own seeds). Training first:
# the GAN's development needs training showers, the held-out set only its final measurement.
# Resumable: run it again and complete files are skipped. Nice 19, so it only takes cores
# nothing else wants. Usage: nohup scripts/production_issue18.sh >> logs/production_18.log 2>&1 &
set -u
cd "$(dirname "$0")/.."
. .venv/bin/activate
export FASTSHOWER_PROGRESS_SECONDS=120
geometry=data/geometry/clic_grid.h5
[ -f $geometry ] || fastshower geometry build --builder grid --out $geometry
common="--particle e- --energy 10:510 --spectrum uniform --theta 0:30 --phi 0:360
        --aim 0,0,1500 --geometry $geometry --workers 2"
nice -n 19 fastshower simulate --n 10000 --jobs 50 --seed 1801 $common --out samples/grid/train/e-
nice -n 19 fastshower simulate --n 2000 --jobs 40 --seed 8001 $common --out samples/grid/heldout/e-
