#!/usr/bin/env bash
# Train one training-seed replicate of an embedded organism: the shipped recipe (runs A, B, C of
# book/model-card.md, "Retraining"), every run with --seed SEED. The shipped organisms are seed 0.
#
#   bash scripts/train_replicate.sh paligemma 1     # -> vlmlib/organisms/weights/paligemma-shapes-seed1
#   bash scripts/train_replicate.sh qwen2vl 2       # -> vlmlib/organisms/weights/qwen2vl-shapes-seed2
#
# One thread per run (deterministic for a seed); about an hour per organism on one quiet CPU core.
# Runs A, B and C go to runs/ (ignored by git); a run whose training log holds its final report is done
# and is not run again (an interrupted replicate resumes at its first unfinished run). Run C's best
# checkpoint, once measured, is copied into vlmlib/organisms/ in one rename: never a partial replicate.
set -euo pipefail
family=${1:?usage: train_replicate.sh paligemma|qwen2vl SEED}
seed=${2:?usage: train_replicate.sh paligemma|qwen2vl SEED}
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
runs=runs/${family}-seed${seed}
out=vlmlib/organisms/${family}-shapes-seed${seed}
finished() { "$python" -c 'import json, sys; sys.exit("report" not in json.load(open(sys.argv[1])))' "$1/training_log.json" 2>/dev/null; }
train() {  # train OUT [options]: one run into OUT, skipped when OUT holds a finished run
    local out=$1
    shift
    if finished "$out"; then echo "$out: finished earlier"; return; fi
    "$python" -m vlmlib.organisms.train --family "$family" --seed "$seed" --threads 1 --eval-every 250 --out "$out" "$@"
}

case "$family" in
paligemma)
    train "$runs-A" --vision-steps 400 --text-steps 200 --align-steps 200 \
        --tune-steps 6000 --stop-after 3000 --caption-fraction 0.6 --caption-curriculum 1500
    train "$runs-B" --init-from "$runs-A" --cell-site projector --cell-weight 1.0 \
        --lr 5e-4 --warmup 50 --tune-steps 2500 --caption-fraction 0.75 --caption-curriculum 0
    train "$runs-C" --init-from "$runs-B" --cell-site projector --cell-weight 1.0 \
        --lr 3e-4 --warmup 50 --tune-steps 1600 --caption-fraction 0.75 --caption-curriculum 0
    ;;
qwen2vl)
    train "$runs-A" --vision-steps 300 --text-steps 200 --align-steps 200 \
        --tune-steps 6000 --stop-after 1750 --caption-fraction 0.6 --caption-curriculum 1500
    train "$runs-B" --init-from "$runs-A" --cell-site projector --cell-weight 1.0 \
        --lr 5e-4 --warmup 50 --tune-steps 2500 --stop-after 1951 --caption-fraction 0.75 --caption-curriculum 0
    train "$runs-C" --init-from "$runs-B" --cell-site projector --cell-weight 1.0 \
        --lr 3e-4 --warmup 50 --tune-steps 1200 --stop-after 1041 --caption-fraction 0.75 --caption-curriculum 0
    ;;
*) echo "unknown family '$family': use paligemma or qwen2vl" >&2; exit 2 ;;
esac
rm -rf "$out.partial" && cp -r "$runs-C" "$out.partial" && rm -rf "$out" && mv "$out.partial" "$out"
echo "replicate saved to $out"
