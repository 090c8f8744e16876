#!/usr/bin/env bash
# Trainer throughput of the UNet semi-supervised rows with train.cuda_graphs (+ eval.cuda_graphs),
# one run per GPU, on a generated phantom: checks that each method runs graphed through the real
# trainer and gives its img/s (validation included) to plan 30,000-iteration rows.  The last run
# is mean teacher without graphs, the control.  Usage (a machine with >= 4 GPUs):
#   OUT=/tmp/out ITERS=600 bash benchmarks/trainer_methods_gpu.sh
set -u
OUT=${OUT:-/tmp}; ITERS=${ITERS:-600}; PH=/tmp/phantom-bench
python3 -m ssl_mamba.cli data phantom "$PH" --train-patients 20 > /dev/null || exit 1
run() {  # gpu, config, graphs
    CUDA_VISIBLE_DEVICES=$1 python3 -m ssl_mamba.cli train -c "configs/acdc/$2.yaml" --run-dir "/tmp/bench-$2-$3" \
        --set data.root="$PH" --set data.labeled_cases=2 --set data.num_workers=8 \
        --set train.max_iterations="$ITERS" --set train.cuda_graphs="$3" --set eval.cuda_graphs="$3" \
        --no-progress > "$OUT/trainer-$2-graphs-$3.log" 2>&1
    echo "$2 graphs=$3 exit $?"
}
run 0 mt_unet_7cases true & run 1 uamt_unet_7cases true & run 2 cps_unet_7cases true &
run 3 mt_unet_7cases false & wait
grep -h '"images_per_s"' "$OUT"/trainer-*.log
