#!/usr/bin/env bash
# The Geant4 production of issue 17: 10,000 training showers per particle and an independent
# held-out production of 2,000 per particle (own seeds), 1-500 GeV log-uniform, the training
# sample's directions. Order: the held-out samples first (fidelity can be measured while the
# rest is produced), then the electrons (none yet), then the rest of the photons. Resumable: run it again and complete files are skipped. Nice 19, so it
# only takes cores nothing else wants. Usage: nohup scripts/production_issue17.sh >> logs/production_17.log 2>&1 &
set -u
cd "$(dirname "$0")/.."
. .venv/bin/activate
export FASTSHOWER_PROGRESS_SECONDS=120
common="--energy 1:500 --spectrum log-uniform --eta 1.98:2.02 --phi 89:91 --workers 2"
nice -n 19 fastshower simulate --particle gamma --n 2000 --jobs 8 --seed 7001 $common --out samples/heldout/gamma
nice -n 19 fastshower simulate --particle e- --n 2000 --jobs 8 --seed 7002 $common --out samples/heldout/e-
nice -n 19 fastshower simulate --particle e- --n 10000 --jobs 40 --seed 1202 $common --out samples/train/e-
nice -n 19 fastshower simulate --particle gamma --n 10000 --jobs 40 --seed 1201 $common --out samples/train/gamma
