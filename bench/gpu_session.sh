#!/usr/bin/env bash
# One prepared GPU visit for the GPU issue: the device benchmarks, then configs/study_gpu.json, every stage
# under its own timeout; at most 8 files under $OUT (what the device tool brings back): summary.txt (machine,
# stage status and times), one log per stage, the study's report.md. The study's own files stay in $RUN.
#
#   bash bench/gpu_session.sh study     # on the GPU machine (carry .whl and .gpu_data): 9 min at most
#   bash bench/gpu_session.sh bench     # a second call if device time is left (carry .whl): 4.5 min at most
#   TINY=1 OUT=/tmp/dry bash bench/gpu_session.sh all  # the CPU dry run at tiny size (a minute)
# One device command may run 10 minutes and a session has 15 minutes of device time, start included: run
# "study" first (the issue's deliverable), then "bench".
#
# .whl/: wheels of the packages the GPU machine lacks (../shared/GPU.md; /work/.library/device/README.md shows
# the pip download line); .gpu_data/real_complex/brain_4coil: the real slices (never committed).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-bench}
OUT=${OUT:-/tmp/gpu_session}
RUN=${RUN:-/tmp/gpu_run}
TINY=${TINY:-0}
PCT=${PCT:-100}  # every stage's time limit scaled to this percentage (a shorter second call when device time is short)
[[ $PCT =~ ^[0-9]+$ ]] && (( PCT >= 10 )) || { echo "PCT must be a whole percentage of at least 10, got '$PCT'"; exit 1; }
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ! python3 -c "import monai, sigpy, ptwt, nilearn" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || { echo "wheel install failed"; exit 1; }
fi
(nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 || echo "no GPU"; python3 -c "import torch; print(torch.__version__, torch.cuda.is_available())") | tee "$OUT/summary.txt"

stage() {  # stage NAME SECONDS COMMAND...: its output in $OUT/NAME.log, its exit status and time in $OUT/summary.txt
    local name=$1 limit=$(($2 * PCT / 100)); shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - t0)) limit=$limit" | tee -a "$OUT/summary.txt"
}

if [ "$TINY" = 1 ]; then
    BENCH_ARGS=(--size 32 --coils 2 --batch 2 --sample-batch 2 --l1-iter 5 --unet 8 16 --attention 0 1 --sim-subjects 2 --sim-slices 2 --workers 2)
    SYN_ARGS=(--size 32 --coils 2 --slices 8 --per-volume 4)
    VARNET_ARGS=(--profiles cpu --size 32 --coils 2 --batches 1 2 --slices 8 --subjects 2)
    STUDY_FILES="['configs/study.json','configs/study_gpu.json','bench/study_gpu_dryrun.json']"
else
    BENCH_ARGS=(--size 256 --coils 16 --batch 16 --sample-batch 64 --unet 64 128 256 256 --attention 0 0 1 1 --head-channels 64 --sim-subjects 8 --sim-slices 8 --workers 12)
    SYN_ARGS=(--size 256 --coils 16 --slices 100)
    VARNET_ARGS=(--profiles gpu --size 128 --coils 8 --batches 1 16 64 --slices 192 --skip_monai)
    STUDY_FILES="['configs/study.json','configs/study_gpu.json']"
fi

if [ "$MODE" = bench ] || [ "$MODE" = all ]; then
    stage bench_device 100 python3 bench/bench_device.py "${BENCH_ARGS[@]}" 
    stage bench_synthesize 60 python3 bench/bench_synthesize.py "${SYN_ARGS[@]}" --device "$(python3 -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")" --skip memory bank
    stage bench_varnet 100 python3 bench/bench_varnet.py "${VARNET_ARGS[@]}"
fi
if [ "$MODE" = study ] || [ "$MODE" = all ]; then
    REAL=.gpu_data/real_complex/brain_4coil
    [ -d "$REAL" ] || REAL=../shared/data/real_complex/brain_4coil
    # resumable: a second call continues where a timed-out one stopped
    stage study 540 python3 -m monai.bundle run study --config_file "$STUDY_FILES" --bundle_root "$RUN" \
        --real_test_dir "$REAL" --meta_file configs/metadata.json --logging_file configs/logging.conf
    python3 - "$RUN" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
from pathlib import Path
for f in sorted((Path(sys.argv[1]) / "study" / "stages").glob("*.json")):
    print(f"{f.stem.replace('__', '/'):40s} {json.loads(f.read_text()).get('seconds', '?')} s")
PY
    cp "$RUN"/report/report.md "$OUT"/ 2>/dev/null
fi
