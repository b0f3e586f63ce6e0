#!/usr/bin/env bash
# DAKD's four paradigms end to end on the built-in synthetic pair, at demo size (2 CPU cores):
# synth -> ingest -> pretrain+adapt teacher and student -> cache-teacher -> distill a, b, c, d(from c)
# -> target val mIoU of every model in one table. Usage: benchmarks/paradigms_demo.sh [OUT_DIR]
set -euo pipefail
OUT=$(realpath -m "${1:-demo_paradigms}")
D="${DAKD:-.venv/bin/dakd}"
N=${N:-24} IT_PRE=${IT_PRE:-60} IT_ADAPT=${IT_ADAPT:-20} IT_DIST=${IT_DIST:-30}
TEACHER=${TEACHER:-deeplabv2_resnet50} STUDENT=${STUDENT:-deeplabv2_mobilenetv3}
export DAKD_NO_PROGRESS=1 MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1 MLFLOW_TRACKING_URI="sqlite:///$OUT/mlruns.db"
mkdir -p "$OUT"; S="file://$OUT/store"
$D synth --out "$OUT/raw_src" --domain source --n "$N" --size 128x64 --split train
$D synth --out "$OUT/raw_tgt" --domain target --n "$N" --size 128x64 --split train
$D synth --out "$OUT/raw_tgt" --domain target --n 8 --size 128x64 --split tune --seed 1
$D synth --out "$OUT/raw_tgt" --domain target --n 12 --size 128x64 --split val --seed 2
$D ingest --format gta5 --root "$OUT/raw_src" --split all --domain source --store "$S" --name src
$D ingest --format cityscapes --root "$OUT/raw_tgt" --split train --domain target --store "$S" --name tgt --no-labels
$D ingest --format cityscapes --root "$OUT/raw_tgt" --split tune --domain target --store "$S" --name tgt
$D ingest --format cityscapes --root "$OUT/raw_tgt" --split val --domain target --store "$S" --name tgt
M="$S/datasets"
COMMON=(--source-manifest "$M/src/all/manifest.parquet" --select-manifest "$M/tgt/tune/manifest.parquet"
        --source-resize 64 128 --crop 64 128 --select-resize 64 128 --batch-size 2 --num-workers 0
        --lr 0.001 --device cpu --eval-every 10 --checkpoint-every 1000)
ADAPT=("${COMMON[@]}" --target-manifest "$M/tgt/train/manifest.parquet" --target-resize 64 128)
for role in teacher student; do
  net=$TEACHER; [ $role = student ] && net=$STUDENT
  $D pretrain "${COMMON[@]}" --model $net --iterations "$IT_PRE" --out "$S/runs/demo/pretrain_$role" >/dev/null
  $D adapt "${ADAPT[@]}" --model $net --iterations "$IT_ADAPT" --init "$S/runs/demo/pretrain_$role/best.pt" \
     --out "$S/runs/demo/adapt_$role" >/dev/null
done
$D cache-teacher --teacher "$S/runs/demo/adapt_teacher/best.pt" --manifest "$M/src/all/manifest.parquet" \
   --manifest "$M/tgt/train/manifest.parquet" --store "$S" --name demo --size 64 128 --shard 0/1 --device cpu
DIST=("${ADAPT[@]}" --model $STUDENT --iterations "$IT_DIST" --teacher "$S/runs/demo/adapt_teacher/best.pt"
      --teacher-cache "$S/teacher_cache/demo/index.parquet" --gate warn)
for p in a b c; do
  $D distill "${DIST[@]}" --paradigm $p --init "$S/runs/demo/adapt_student/best.pt" --out "$S/runs/demo/distill_$p" >/dev/null
done
$D distill "${DIST[@]}" --paradigm d --init "$S/runs/demo/distill_c/last.pt" --out "$S/runs/demo/distill_d" >/dev/null
$D evaluate --manifest "$M/tgt/val/manifest.parquet" --resolution 64x128 --out "$OUT/eval" --no-mlflow --device cpu \
   --model teacher="$S/runs/demo/adapt_teacher/best.pt" --model student="$S/runs/demo/adapt_student/best.pt" \
   --model a="$S/runs/demo/distill_a/best.pt" --model b="$S/runs/demo/distill_b/best.pt" \
   --model c="$S/runs/demo/distill_c/best.pt" --model d="$S/runs/demo/distill_d/best.pt"
