# Next lease (planned in the sixteenth session; EXPECTED=2 on an x4, 1 on an x2): seeds 2 and 3 of
# Semi-Mamba-UNet at 3 cases on darker training copies (seed 1337: 0.7963), each on two GPUs as the
# seed-1337 row (bf16 + graphs + compile, 8 images per GPU).  ~22 min each without the compile cache;
# carry .carry/cache (the sixteenth session's cache, 17 MB gzipped) to skip most of the ~2 min compile.
# On an x2, one lane fits a lease: keep the first (seed 2), drop the second.
FAST="--cuda-graphs --set eval.val_distances_every=10 --set train.amp=bf16 --set train.compile=true"
ROW="$RUN configs/diagnostics/acdc_semi_mamba_unet_3cases_intensity.yaml --gpus 2 --gpus-per-row 2 $FAST \
  --set data.num_workers=12 --set train.compile_cache=$CACHE $COMMON"
lane semi_seed2 0,1 "$ROW --seeds 2"
lane semi_seed3 2,3 "$ROW --seeds 3"
