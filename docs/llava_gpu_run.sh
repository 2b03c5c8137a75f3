#!/usr/bin/env bash
# The tutorial's LLaVA pair (InternLM2-Chat-1.8B + CLIP ViT-L/14-336) at the real shapes, random weights,
# on one GPU: stage 1 (projector, fp16 autocast) and stage 2 (QLoRA r=512 + CLIP LoRA r=64, batch 1,
# one image's Q&A repeated 200 times, as in the tutorial). Writes $OUT/summary.txt and the two logs.
# Prepare (here, beside the repo): xtuner-assistant vqa data --out work_dirs/gpu6/vqa --train-images 64 --test-images 1;
#   one record of its train.json cut to one Q&A -> vqa repeat -n 200 -> work_dirs/gpu6/vqa/repeated.json;
#   the wheels of ../shared/gpu/fetch-wheels.sh in work_dirs/gpu6/whl. Run it with carry=["work_dirs/gpu6"].
set -u
OUT=${OUT:-/tmp/out}; SITE=/tmp/site; G=/tmp/g; D=work_dirs/gpu6
mkdir -p "$OUT" $G
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
note() { echo "$*" | tee -a "$OUT/summary.txt"; }
note "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader)"
t0=$SECONDS
python3 -m pip install -q --no-index --no-deps --no-compile --target $SITE work_dirs/gpu6/whl/*.whl >"$OUT/install.log" 2>&1 || { note "install failed"; tail -5 "$OUT/install.log"; exit 1; }
export PYTHONPATH=$SITE:$PWD
note "installed in $((SECONDS - t0)) s"
t0=$SECONDS
python3 - <<'PY' >"$OUT/build.log" 2>&1 || { note "stand-in build failed"; tail -20 "$OUT/build.log" | tee -a "$OUT/summary.txt"; exit 1; }
import sys, torch
sys.path.insert(0, "tests")
from pathlib import Path
from tiny_models import tiny_chat_model_dir
from xtuner_assistant.models.stand_ins import random_clip_vision, random_internlm2_chat
tokenizer_dir = tiny_chat_model_dir(Path("/tmp/g/tiny"))
with torch.device("cuda"):
    random_clip_vision(Path("/tmp/g/clip"), real_shape=True)
    random_internlm2_chat(Path("/tmp/g/internlm2"), tokenizer_dir, real_shape=True, dtype="bfloat16")
PY
note "random InternLM2-1.8B + CLIP-L/14-336 built in $((SECONDS - t0)) s"
TRAIN='import sys; from xtuner_assistant.training.xtuner_tools import run_tool; sys.exit(run_tool("train", sys.argv[1:]))'
export XA_LLM=$G/internlm2 XA_VISUAL_ENCODER=$G/clip XA_IMAGE_FOLDER=$D/vqa/images XA_SAVE_STEPS=1000 XA_WARMUP_ITERS=5
t0=$SECONDS
XA_DATA_PATH=$D/vqa/captions.json XA_BATCH_SIZE=8 timeout 130 python3 -c "$TRAIN" \
  configs/llava/internlm2_chat_1_8b_clip_vit_large_p14_336_pretrain.py --work-dir $G/stage1 >"$OUT/stage1.log" 2>&1
note "stage 1 exit $? in $((SECONDS - t0)) s"
grep "Iter(train)" "$OUT/stage1.log" | tail -2 | tee -a "$OUT/summary.txt"
t0=$SECONDS
XA_PRETRAINED_PTH=$(ls $G/stage1/iter_*.pth | tail -1) XA_DATA_PATH=$D/vqa/repeated.json timeout 170 python3 -c "$TRAIN" \
  configs/llava/internlm2_chat_1_8b_qlora_clip_vit_large_p14_336_lora_finetune.py --work-dir $G/stage2 >"$OUT/stage2.log" 2>&1
note "stage 2 exit $? in $((SECONDS - t0)) s"
grep "Iter(train)" "$OUT/stage2.log" | tail -3 | tee -a "$OUT/summary.txt"
nvidia-smi --query-gpu=memory.used --format=csv,noheader | tee -a "$OUT/summary.txt"
