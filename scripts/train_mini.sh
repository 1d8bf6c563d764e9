#!/usr/bin/env bash
# The mini model's recipe, resumable in legs: the autoencoder (skipped when its weights exist), then the transformer
# on its latents. Run in the background, at low priority, leaving a core for other work:
#
#   nohup nice -n 10 bash scripts/train_mini.sh training/mini > training/mini/log.txt 2>&1 &
#
# RUN_DIR holds codec.pt, checkpoint.pt (model + optimiser + RNG + log; resumed when present) and the model file.
set -euo pipefail
RUN_DIR=${1:-training/mini}
STEPS=${STEPS:-2500}
THREADS=${THREADS:-2}
PY=${PY:-.venv/bin/python}
mkdir -p "$RUN_DIR"
if [ ! -f "$RUN_DIR/codec.pt" ]; then
  "$PY" - "$RUN_DIR" <<'PY'
import sys, torch
from deepforcing.mini.train_codec import CodecTrainConfig, train_codec
run = sys.argv[1]
model = train_codec(CodecTrainConfig(steps=1500, threads=1, run_dir=run, log_every=50))
torch.save(model.state_dict(), f"{run}/codec.pt")
PY
fi
# Euler ODE timesteps stored with the model: 16 steps, shift 3 (t = 1000 * 3s / (1 + 2s), s = 1, 15/16, ...)
EULER=$("$PY" -c "
import torch; s = torch.linspace(1, 0, 17)[:-1]; t = 1000 * 3 * s / (1 + 2 * s)
print(','.join('%.2f' % v for v in t.tolist()))")
"$PY" -m deepforcing.cli train-mini --codec autoencoder --codec-weights "$RUN_DIR/codec.pt" --patch 2 --dim 192 \
  --layers 4 --steps "$STEPS" --batch 8 --lr 1.5e-3 --threads "$THREADS" --first-chunk-weight 2 --text-dropout 0.1 \
  --rollout-probe-every 100 --euler-steps "$EULER" --curriculum 6:400,12:1000 --run-dir "$RUN_DIR" \
  --output "$RUN_DIR/mini_model.safetensors"
