#!/usr/bin/env bash
# One prepared run on a lent GPU machine (H100/H200, no napari, no internet): what only a GPU can show,
# in one call that fits the 10-minute command limit, with every result written under $OUT.
#
#   1. the card's name and the torch version (every GPU figure is recorded with them);
#   2. benchmarks/bench_train.py --device cuda: our training step vs the reference re-implementation;
#   3. scripts/train_default_model.py on the GPU for $MINUTES (cooperative stop, best weights kept),
#      from scratch or from $INIT (a model file carried along, e.g. the result of an earlier run), grown
#      first if $GROW says so (e.g. GROW='{"width": 48}' with INIT=default: same output, more capacity);
#   4. scripts/evaluate_default_model.py on the result (the model card's held-out protocol).
#
# Only small files come back from $OUT (at most 8, 16 MiB each), so the run returns model.pt (the kept
# weights, 9 MB for unet_fast), not the 46 MB resumable checkpoint: a later session continues with
# INIT=<that model.pt> (a warm start with a fresh optimizer, not an exact resume).
#
# Called from the repository root through the device tool, e.g.
#   MINUTES=5 bash scripts/gpu_session.sh
#   INIT=runs/gpu-1/model.pt MINUTES=5 bash scripts/gpu_session.sh       (carry runs/gpu-1)
# Settings (environment): MINUTES (5), STEPS (cosine schedule length, 40000), BATCH (32), PATCH (128),
# LR (5e-4 from scratch), ARCH and ARCH_ARGS (JSON; unset: the training script's default architecture),
# INIT (a model file or name to start from), GROW (JSON, needs INIT; models/growth.py),
# BLUR_KIND (mixed), SMOOTH_COPIES (16), SEED (0), SKIP_BENCH (set to skip step 2).
set -uo pipefail
: "${OUT:?OUT must name the folder whose files come back}"
MINUTES=${MINUTES:-5}
STEPS=${STEPS:-40000}
BATCH=${BATCH:-32}
PATCH=${PATCH:-128}
LR=${LR:-5e-4}
BLUR_KIND=${BLUR_KIND:-mixed}
SMOOTH_COPIES=${SMOOTH_COPIES:-16}
SEED=${SEED:-0}
DEVICE=${DEVICE:-cuda}  # "cpu" only to smoke-test this script here
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
} | tee "$OUT/machine.txt"

if [ -z "${SKIP_BENCH:-}" ]; then
    timeout 150 python3 benchmarks/bench_train.py --device "$DEVICE" --json "$OUT/bench_train.json" 2>&1 \
        | tee "$OUT/bench_train.log"
fi

run_dir=$(mktemp -d /tmp/gpu-session-XXXXXX)  # fresh: a warm machine must not resume an older run
model_args=()  # only what is set: the training script owns the defaults
[ -n "${INIT:-}" ] && model_args+=(--init "$INIT")
[ -n "${ARCH:-}" ] && model_args+=(--architecture "$ARCH")
[ -n "${ARCH_ARGS:-}" ] && model_args+=(--arch-args "$ARCH_ARGS")
[ -n "${GROW:-}" ] && model_args+=(--grow "$GROW")
python3 scripts/train_default_model.py --device "$DEVICE" --minutes "$MINUTES" --steps "$STEPS" \
    --batch-size "$BATCH" --patch-size "$PATCH" --learning-rate "$LR" --blur-kind "$BLUR_KIND" \
    --smooth-copies "$SMOOTH_COPIES" --seed "$SEED" \
    --validate-every 1000 --checkpoint-dir "$run_dir" --output "$OUT/model.pt" "${model_args[@]}" \
    2>&1 | awk '!/^step / || $2 ~ /^[0-9]*000\//' | tee "$OUT/train.log"  # every 1000th step line

if [ -f "$OUT/model.pt" ]; then
    python3 scripts/evaluate_default_model.py --model "$OUT/model.pt" --device "$DEVICE" --json "$OUT/eval.json" \
        2>&1 | tail -n 30 | tee "$OUT/eval.log"
fi
