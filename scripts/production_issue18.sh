#!/usr/bin/env bash
# The Geant4 production of issue 18 (3DGAN on the CLIC-like grid): electrons of 10-510 GeV
# (uniform, as the original CLIC sample), incident at 0-30 degrees from the grid's normal
# (uniform in the polar angle, azimuth 0-360) through the centre of its front face; 12,600
# for training (the fixed 80/10/10 event splits of each file fit on 10,080 of them, choose the
# weights on 1,260), then an independent held-out production of 2,000 (own seeds). Jobs 0-49 are
# the 10,000-shower production of sessions 19-22 (a job's seed depends only on its index), so
# those files come out the same. Training first:
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
nice -n 19 fastshower simulate --n 12600 --jobs 63 --seed 1801 $common --out samples/grid/train/e-
nice -n 19 fastshower simulate --n 2000 --jobs 40 --seed 8001 $common --out samples/grid/heldout/e-
