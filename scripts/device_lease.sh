#!/usr/bin/env bash
# Run paper-table rows on a lent GPU machine (this workplace's device tool) across calls of one lease.
#
# The tool sends the checkout (64 MiB at most per call, the ACDC pack alone is 64 MiB), keeps the
# machine ~30 s after a call and kills what a call leaves running unless it has its own session.  So:
# the pack travels in pieces over three calls, the trainings run under setsid from a copy of the
# checkout in /tmp, and later calls, sent back to back, only watch and finally bring the results back.
#
#   bash scripts/device_lease.sh prepare     # here: .carry/ pieces, .whl/ wheels (both git-ignored)
#   device run "bash scripts/device_lease.sh start"      carry [.carry/pack/pack.tgz.part00, .whl]
#   device run "bash scripts/device_lease.sh stage"      carry [.carry/pack/pack.tgz.part01]
#   device run "bash scripts/device_lease.sh stage"      carry [.carry/pack/pack.tgz.part02]
#   device run "PLAN=scripts/lease_plans/NAME.sh COMMIT=<clean HEAD> bash scripts/device_lease.sh launch"
#       carry [.carry/pack/SHA256SUMS, .carry/cache]
#   device run "UNTIL=540 EXPECTED=<runs> bash scripts/device_lease.sh watch"     # again until it packs
# (A call carries the tracked tree, ~30 MB and growing with results/, and what is left of the 64 MiB
# beside it: the pack's pieces are 24 MB, the gzipped compile cache 17 MB.  Every phase keeps the
# pieces it was given; launch checks them all.)
#   (FINAL=1 ... watch packs what is published now.)  Then, here:
#   cat <files>/results.tgz.part* | tar xzf - -C fetched && python scripts/reproduce.py collect fetched/runs/published/*
#   cat <files>/compile_cache.bin.gz.part* > .carry/cache/compile_cache.bin.gz   # when it came back
#
# watch also scores each newly published run again after largest-component post-processing
# (metrics/test_lcc) and brings back the torch.compile cache a row wrote (gzipped; `prepare` keeps it
# in .carry/cache/: the next lease's rows skip part of their compile, ~45 of ~127 s measured).
# A plan (scripts/lease_plans/*.sh) is sourced by `launch`: it calls `lane NAME GPUS COMMAND`, each lane
# one shell command run in the background on those GPUs, with $RUN (reproduce.py run) and $COMMON
# (pack root, results folder, commit) to build it from.
set -u
W=/tmp/lease/w
S=/tmp/lease/logs
CACHE=/tmp/lease/compile_cache.bin
export PYTHONPATH=/tmp/site:$W PYTHONUNBUFFERED=1
# multicast stays off on the lent machines (device KINDS.md)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
PIECE=24000000  # bytes per pack piece: one piece beside the tree (~30 MB) stays well under a call's 64 MiB

elapsed() { echo $(( $(date +%s) - $(cat /tmp/lease/started) )); }

prepare() {
  [ -f .pack/acdc/slices.npz ] || .venv/bin/ssl-mamba data pack ../shared/datasets/ACDC .pack/acdc --dtype uint8 --parts
  rm -rf .carry/pack && mkdir -p .carry/pack .carry/cache .whl  # .carry/cache: the last lease's compile cache
  tar cf - -C .pack acdc | gzip -1 | split -b $PIECE -d - .carry/pack/pack.tgz.part
  (cd .carry/pack && sha256sum pack.tgz.part* > SHA256SUMS && ls -la)
  ls .whl/tensorboard[Xx]-*.whl > /dev/null 2>&1 || .venv/bin/python -m pip download -q --no-deps \
    --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 -d .whl tensorboardX
  ls -la .whl .carry/cache
}

# the pack pieces and the compile cache this call carried, kept outside the checkout for later calls
stage() {
  mkdir -p /tmp/lease/pieces
  local f
  for f in .carry/pack/* .carry/cache/*; do [ -f "$f" ] && cp "$f" /tmp/lease/pieces/ && echo "kept $f"; done
}

start() {
  mkdir -p /tmp/lease "$S" && date +%s > /tmp/lease/started
  stage
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  nvidia-smi -L
  python3 -c "import torch, tensorboardX; print('torch', torch.__version__, 'gpus', torch.cuda.device_count())"
}

stage_checkout() {
  stage
  (cd /tmp/lease/pieces && sha256sum -c SHA256SUMS) || exit 1
  if [ -f /tmp/lease/pieces/compile_cache.bin.gz ]; then gunzip -c /tmp/lease/pieces/compile_cache.bin.gz > "$CACHE"; fi
  rm -rf "$W" && mkdir -p "$W/.pack"
  tar --exclude=./.carry --exclude=./.whl -cf - . | tar xf - -C "$W"
  cat /tmp/lease/pieces/pack.tgz.part* | tar xzf - -C "$W/.pack" || exit 1
}

# lane NAME GPUS COMMAND: COMMAND in its own session (it outlives the call), output in $S/NAME.log
lane() {
  local name=$1 gpus=$2; shift 2
  (cd "$W" && CUDA_VISIBLE_DEVICES=$gpus setsid nohup bash -c "$*" > "$S/$name.log" 2>&1 < /dev/null &)
}

launch() {
  : "${COMMIT:?set COMMIT to the hash of the clean tree the device runs}" "${PLAN:?set PLAN}"
  if [ -d "$W/runs" ]; then  # a second launch would wipe the copy its trainings run from
    echo "$W already holds runs: one launch per lease (watch it, or add lanes with another plan by hand)"; exit 1
  fi
  stage_checkout
  RUN="python3 scripts/reproduce.py run"
  COMMON="--set data.root=.pack/acdc --results runs/published --commit $COMMIT"
  # shellcheck disable=SC1090
  source "$PLAN"
  echo "launched $PLAN at +$(elapsed)s"
  sleep 60
  poll
}

published() { ls -d "$W"/runs/published/*/provenance.json "$W"/runs/published/diagnostics/*/provenance.json \
  2>/dev/null | xargs -r -n1 dirname; }

poll() {
  echo "--- lease +$(elapsed)s"
  nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader
  for log in "$W"/runs/reproduce/*/train.log; do
    [ -f "$log" ] && python3 "$W/scripts/lease_progress.py" "$log"
  done
  for f in "$S"/*.log; do [ -f "$f" ] || continue; echo "== $(basename "$f"): $(tail -n 2 "$f" | tr '\n' ' ' | cut -c1-300)"; done
  echo "published: $(published | xargs -r -n1 basename | tr '\n' ' ')"
}

# each published run scored again after largest-component post-processing, spread over the GPUs.
# A rescoring's log ends with "lcc exit N"; a failed one (say, out of memory beside a training) is
# retried once, its first log kept as lcc_NAME.failed.log, so one failure cannot hold watch from packing.
rescore_published() {
  local gpus; gpus=$(nvidia-smi -L 2>/dev/null | wc -l); [ "$gpus" -gt 0 ] || gpus=1
  local gpu d name log
  gpu=$(cat /tmp/lease/next_gpu 2>/dev/null || echo 0)  # go on round the GPUs from the last pass
  for d in $(published); do
    name=$(basename "$d")
    log="$S/lcc_$name.log"
    [ -e "$d/metrics/test_lcc" ] && continue
    if [ -e "$log" ]; then
      lcc_failed "$log" || continue  # still running (or done: test_lcc is there by the next look)
      [ -e "$S/lcc_$name.failed.log" ] && continue  # failed twice: given up (rescored counts it)
      mv "$log" "$S/lcc_$name.failed.log" && echo "rescoring $name failed; once more"
    fi
    lane "lcc_$name" $gpu "rm -rf $d/metrics/test_lcc.tmp && python3 -m ssl_mamba.cli evaluate \
      --run runs/reproduce/$name --set eval.postprocess=largest_component --out $d/metrics/test_lcc.tmp \
      --no-progress && mv $d/metrics/test_lcc.tmp $d/metrics/test_lcc; echo \"lcc exit \$?\""
    gpu=$(( (gpu + 1) % gpus ))
    echo $gpu > /tmp/lease/next_gpu
  done
}

lcc_failed() { grep -q '^lcc exit [1-9]' "$1" 2>/dev/null; }

# published runs whose rescoring is over: scored, or failed twice (its logs come back in the pack)
rescored() {
  local n=0 d name
  for d in $(published); do
    name=$(basename "$d")
    if [ -e "$d/metrics/test_lcc" ] || { [ -e "$S/lcc_$name.failed.log" ] && lcc_failed "$S/lcc_$name.log"; }; then
      n=$((n + 1))
    fi
  done
  echo $n
}

# $OUT takes at most 8 files of 16 MiB: results first, the compile cache if it still fits
pack() {
  rm -rf /tmp/lease/out && mkdir -p /tmp/lease/out
  # the finished publications only (provenance.json is written last: `collect` refuses a folder without
  # it, and with it every folder named), without a rescoring in progress (test_lcc.tmp)
  local rows; rows=$(published | sed "s|^$W/||")
  # shellcheck disable=SC2086 # one word per row folder
  (cd "$W" && tar czf /tmp/lease/out/results.tgz --exclude=test_lcc.tmp $rows -C "$S" .)
  (cd /tmp/lease/out && split -b 15M -d results.tgz "$OUT/results.tgz.part" && sha256sum results.tgz)
  if [ "$(ls "$OUT" | wc -l)" -gt 8 ]; then  # only 8 files come back: say so rather than lose the rest
    echo "results.tgz is $(ls "$OUT" | wc -l) pieces; only 8 come back: fetch the rest from /tmp/lease/out"
  fi
  if [ -f "$CACHE" ]; then
    gzip -1 -c "$CACHE" > /tmp/lease/out/compile_cache.bin.gz
    local have need
    have=$(ls "$OUT" | wc -l)
    need=$(( ($(stat -c %s /tmp/lease/out/compile_cache.bin.gz) + 15728639) / 15728640 ))
    if [ $(( have + need )) -le 8 ]; then
      (cd /tmp/lease/out && split -b 15M -d compile_cache.bin.gz "$OUT/compile_cache.bin.gz.part" \
        && sha256sum compile_cache.bin.gz)
    else echo "compile cache ($need pieces) left behind: only 8 files come back"; fi
  fi
  ls -la "$OUT"
}

watch() {
  local until=$(( $(date +%s) + ${UNTIL:-540} ))
  while [ "$(date +%s)" -lt "$until" ]; do
    rescore_published
    if [ "$(rescored)" -ge "${EXPECTED:-1}" ] || [ -n "${FINAL:-}" ]; then poll; pack; return; fi
    sleep 30
  done
  poll
}

"$@"
