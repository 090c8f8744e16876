# Sixteenth session, one nvidia-h200-x4 lease (ran at ba67dce; 6 runs, EXPECTED=6).
# GPUs 0-1: Semi-Mamba-UNet 3 cases on darker training copies, bf16 + graphs + compile, two processes.
# GPU 2: the supervised half with the same range, then the plain supervised half at seed 2 | MT intensity seed 2.
# GPU 3: MT intensity seed 3 | plain MT + UNet 3 cases seed 2.  UNet rows fp32 + graphs, as the rows they pool with.
# All score HD95 / ASD at every tenth validation only (Dice, and so the checkpoints, unchanged).
FAST="--cuda-graphs --set eval.val_distances_every=10"
UNET="$FAST --set data.num_workers=6 --concurrent-rows 2 $COMMON"
lane semi 0,1 "$RUN configs/diagnostics/acdc_semi_mamba_unet_3cases_intensity.yaml --gpus 2 --gpus-per-row 2 \
  $FAST --set train.amp=bf16 --set train.compile=true --set data.num_workers=12 \
  --set train.compile_cache=$CACHE $COMMON"
lane supervised 2 "$RUN configs/diagnostics/acdc_supervised_unet_3cases_intensity.yaml $UNET; \
  $RUN configs/diagnostics/acdc_supervised_unet_3cases.yaml --seeds 2 $UNET"
lane mt_intensity_2 2 "$RUN configs/diagnostics/acdc_mt_unet_3cases_intensity.yaml --seeds 2 $UNET"
lane mt_intensity_3 3 "$RUN configs/diagnostics/acdc_mt_unet_3cases_intensity.yaml --seeds 3 $UNET"
lane mt_plain_2 3 "$RUN configs/acdc/mt_unet_3cases.yaml --seeds 2 $UNET"
lane gputest 2,3 "python3 -m pytest -q -x tests/test_distributed_gpu.py -k two_gpu"
