#!/usr/bin/env bash
# Flickr8k from scratch on a CPU: import, train the mini preset for an hour, evaluate.
#   bash recipes/flickr8k.sh [FLICKR8K_DIR] [RUN_DIR]
# FLICKR8K_DIR holds captions.csv and images/ (default: ../shared/data/flickr8k beside the repo).
# An interrupted run continues from its last checkpoint when you run the script again.
set -euo pipefail
SRC=${1:-../shared/data/flickr8k}
RUN=${2:-runs/flickr8k}
[ -f "$SRC/captions.csv" ] || { echo "no $SRC/captions.csv: pass the Flickr8k folder as the first argument" >&2; exit 2; }

[ -d "$RUN/data/train" ] || tinyvlm data import "$SRC" --format csv --out "$RUN/data" --val-fraction 0.1 --seed 0

RESUME=""
[ -f "$RUN/model/checkpoint/state.json" ] && RESUME="--resume"
tinyvlm train --data "$RUN/data" --out "$RUN/model" --preset mini --image-size 128 --patch-size 16 \
  --minutes 60 --batch-size 32 --lr 1e-3 --warmup 200 --augment --eval-every 400 --save-every 200 \
  --vocab-size 4096 --seed 0 $RESUME

tinyvlm eval --model "$RUN/model" --data "$RUN/data" --judge captions --n 1000 --out "$RUN/eval"
