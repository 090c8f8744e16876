# A later lease on an x4 (planned in the sixteenth session; EXPECTED=1): Table 6's Mamba-UNet + Mamba-UNet
# pair at 3 cases at the full 30,000 iterations, data-parallel over all four GPUs (global batch 16, 4 images
# per GPU; Mamba-UNet normalises with LayerNorm, so the per-GPU batch changes no statistics).  Its
# 2,000-iteration fp32 version ran at 87 img/s on one H100; the UNet + Mamba-UNet row runs at 399 img/s
# on two H200s in bf16 + graphs + compile, and two Mamba-UNets cost more per step: whether 30k fits a lease
# (~23 min of training) is measured by the first poll (ms/it and time left).  If the projection runs past
# the lease, stop it early (FINAL=1 watch) and keep the rate for planning; nothing is published then.
FAST="--cuda-graphs --set eval.val_distances_every=10 --set train.amp=bf16 --set train.compile=true"
lane pair 0,1,2,3 "$RUN configs/acdc/ablation_2x_mamba_3cases.yaml --gpus 4 --gpus-per-row 4 $FAST \
  --set data.num_workers=12 --set train.compile_cache=$CACHE $COMMON"
