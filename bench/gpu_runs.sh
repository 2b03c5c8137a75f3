#!/usr/bin/env bash
# Every GPU run of docs/gpu.md in one go, on a machine with CUDA torch but without XTuner:
#   bench/gpu_runs.sh bench    # 1 GPU: speed benchmark, then the InternLM2 config with QLoRA + evaluation hook
#   bench/gpu_runs.sh single   # 1 GPU: deepspeed_zero2, the Qwen configs, QLoRA merge check
#   bench/gpu_runs.sh multi    # 2 GPUs: NPROC_PER_NODE=2 with deepspeed_zero2
#   bench/gpu_runs.sh all      # 2 GPUs: bench on one while single runs on the other, then multi
#   bench/gpu_runs.sh speed    # 1 GPU: the speed benchmark alone (stock twice, ours per pack size and loss chunk)
#   bench/gpu_runs.sh deepspeed  # deepspeed_zero2: the three QLoRA configs on 1 GPU, InternLM2 on 2 GPUs where there are 2
#                                (SKIP_INTERNLM2=1: the Qwen configs alone)
# Each step is skipped when a warm machine already did it (installed wheels, random models).
# Expects, beside the repo: .whl/ (the wheels of ../shared/gpu/fetch-wheels.sh), .gpds/ (deepspeed's sdist and
# pydantic), .gpu/tokenizer (a stand-in tokenizer) and .gpu/bench_data.json (`bench/speed.py data`).
# Writes its results under $OUT (default /tmp/xtuner-assistant-gpu-out).
set -u
MODE=${1:-single}
OUT=${OUT:-/tmp/xtuner-assistant-gpu-out}
mkdir -p "$OUT"
SITE=/tmp/site
LOG="$OUT/runs.log"
SUMMARY="$OUT/summary.txt"
WORK=/tmp/xa-gpu
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false MKL_SERVICE_FORCE_INTEL=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

note() { echo "$*" | tee -a "$SUMMARY"; }

note "== $(date -u +%FT%TZ) mode=$MODE"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$SUMMARY"
start=$SECONDS
# A warm machine keeps /tmp between calls: the stand-in tokenizer and data stay for calls that carry other things.
mkdir -p /tmp/stash && { [ -d .gpu ] && cp -r .gpu /tmp/stash/ || ln -sfn /tmp/stash/.gpu .gpu; }
[ -d $SITE/xtuner ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .whl/*.whl >>"$LOG" 2>&1 \
  || { note "wheel install failed"; tail -20 "$LOG"; exit 1; }
# DeepSpeed and pydantic travel in .gpds/ (beside .whl/ they pass the 64 MiB a call carries).
[ -d $SITE/deepspeed ] || { ls .gpds/deepspeed-*.tar.gz >/dev/null 2>&1 \
  && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $SITE .gpds/*.whl >>"$LOG" 2>&1 \
  && DS_BUILD_OPS=0 PYTHONPATH=$SITE python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
  --target $SITE .gpds/deepspeed-*.tar.gz >>"$LOG" 2>&1; } || note "deepspeed not installed (runs with --deepspeed will fail)"
export PYTHONPATH=$SITE:$PWD
note "installed in $((SECONDS - start)) s: $(python3 -c 'import torch, transformers, xtuner, bitsandbytes as b, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "xtuner", xtuner.__version__, "bitsandbytes", b.__version__, "peft", peft.__version__)' 2>&1 | tail -1)"
python3 -c 'import deepspeed; print("deepspeed", deepspeed.__version__)' 2>&1 | tail -1 | tee -a "$SUMMARY"

random_model() {  # NAME -> folder
  python3 bench/random_models.py "$1" "$WORK/$1" --tokenizer .gpu/tokenizer 2>>"$LOG" | tail -1
}

# head -n 1000: ~10 rows of 8192 tokens, a short run that still saves checkpoints and evaluates.
python3 - <<'EOF'
import json
records = json.load(open(".gpu/bench_data.json"))
json.dump(records[:1000], open("/tmp/xa-gpu/train_data.json", "w"), ensure_ascii=False)
EOF

# The library calls behind `xtuner-assistant train/convert/merge`, so these runs do not depend on the CLI.
TRAIN='import sys; from xtuner_assistant.training.xtuner_tools import run_tool; sys.exit(run_tool("train", sys.argv[1:]))'
CONVERT='import sys; from pathlib import Path; from xtuner_assistant.training.export import checkpoint_to_adapter; print(checkpoint_to_adapter(Path(sys.argv[1]), Path(sys.argv[2])))'
MERGE='import sys, json; from pathlib import Path; from xtuner_assistant.training.export import merge_adapter; print(json.dumps(merge_adapter(Path(sys.argv[1]), Path(sys.argv[3]), Path(sys.argv[2]), quantized_reference=True)))'

train() {  # LABEL CONFIG MODEL_DIR [extra args...]; settings come from XA_* in the environment
  local label=$1 config=$2 model=$3; shift 3
  local t0=$SECONDS
  echo "=== $label" >>"$LOG"
  # One process with DeepSpeed still needs the rendezvous variables torchrun would set.
  local dist_env=""
  [ "${NPROC_PER_NODE:-1}" = 1 ] && [[ "$*" == *deepspeed* ]] && dist_env="RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=$((20000 + RANDOM % 9000))"
  XA_IDENTITY_FILE=$WORK/train_data.json XA_GENERAL="" XA_GENERAL_RATIO=0 XA_MAX_EPOCHS=${XA_MAX_EPOCHS:-1} XA_SAVE_STEPS=${XA_SAVE_STEPS:-4} \
    XA_MODEL=$model env $dist_env timeout ${TRAIN_TIMEOUT:-300} python3 -c "$TRAIN" "$config" --work-dir "$WORK/wd_$label" "$@" >"$WORK/$label.log" 2>&1
  local rc=$?
  grep -E "Iter\(train\)|IdentityEvalHook|Error|error:|Traceback|Saving checkpoint|PackedChat|Mixed" "$WORK/$label.log" | grep -v "^\s*$" | tail -40 >>"$LOG"
  [ $rc -ne 0 ] && tail -30 "$WORK/$label.log" >>"$LOG"
  local last=$(grep -E "Iter\(train\)" "$WORK/$label.log" | tail -1 | sed -E 's/.*(Iter\(train\) \[[^]]*\]).* time: ([0-9.]+).*memory: ([0-9]+).*loss: ([0-9.]+).*/\1 time \2 s memory \3 MB loss \4/')
  local first=$(grep -E "Iter\(train\)" "$WORK/$label.log" | head -1 | sed -E 's/.*loss: ([0-9.]+).*/first-logged loss \1/')
  local eval=$(grep -E "evaluation took" "$WORK/$label.log" | tail -1 | sed -E 's/.*(evaluation took [0-9]+ s in all).*/\1/')
  note "$label: exit $rc, $((SECONDS - t0)) s wall; $first; last: $last; ${eval:-no eval line}; checkpoints: $(ls $WORK/wd_$label 2>/dev/null | grep -E '^iter_' | tr '\n' ' ')"
  return $rc
}

bench() {  # stock twice (two data orders: the loss curve's noise), ours per pack size and loss chunk (or BENCH_OURS)
  python3 bench/speed.py run --data .gpu/bench_data.json --tokenizer .gpu/tokenizer --work $WORK/bench \
    --model-dir $WORK/internlm2-chat-1.8b --stock-seeds ${BENCH_STOCK_SEEDS:-0 1} --eval-new-tokens ${BENCH_EVAL_TOKENS:-0} \
    --out "$OUT/bench_results.json" --real-tokens ${BENCH_TOKENS:-196608} --pack-tokens ${BENCH_PACKS:-4096 8192} \
    --loss-chunk-tokens ${BENCH_CHUNKS:-256 1024} ${BENCH_OURS:+--ours $BENCH_OURS} \
    >"$WORK/bench.log" 2>&1 || { note "bench failed"; tail -40 "$WORK/bench.log" >>"$LOG"; }
  sed -n '/^cuda\|^NVIDIA\|recipe \|^stock\|^ours\|^loss at\|^  /p' "$WORK/bench.log" | tail -14 | tee -a "$SUMMARY"
  grep -E "^\{" "$WORK/bench.log" >>"$LOG"
  cp "$WORK/bench.log" "$OUT/bench.log"
}

single() {
  local I2=$WORK/internlm2-chat-1.8b Q05=$(random_model qwen2.5-0.5b) Q15=$(random_model qwen2.5-1.5b)
  XA_EVALUATION_FREQ=0 train qwen0.5b_1gpu configs/qwen2_5_0_5b_qlora_assistant.py "$Q05"
  # QLoRA -> adapter -> merged full-precision model, checked against base+adapter.
  local t0=$SECONDS
  python3 -c "$CONVERT" "$WORK/wd_qwen0.5b_1gpu" "$WORK/qwen_adapter" >>"$LOG" 2>&1 \
    && python3 -c "$MERGE" "$WORK/qwen_adapter" "$Q05" "$WORK/qwen_merged" >"$WORK/merge.log" 2>&1
  local rc=$?
  tail -5 "$WORK/merge.log" >>"$LOG"
  cp "$WORK/qwen_merged/xtuner_assistant_merge.json" "$OUT/merge_check.json" 2>/dev/null
  note "merge (qwen2.5-0.5b shape, QLoRA adapter): exit $rc, $((SECONDS - t0)) s; $(tail -1 "$WORK/merge.log")"
  XA_EVALUATION_FREQ=0 train internlm2_1gpu_zero2 configs/internlm2_chat_1_8b_qlora_assistant.py "$I2" --deepspeed deepspeed_zero2
  XA_EVALUATION_FREQ=0 train qwen1.5b_1gpu_zero2 configs/qwen2_5_1_5b_qlora_assistant.py "$Q15" --deepspeed deepspeed_zero2
}

multi() {
  local I2=$(random_model internlm2-chat-1.8b) Q05=$(random_model qwen2.5-0.5b)
  NPROC_PER_NODE=2 XA_EVALUATION_FREQ=0 train internlm2_2gpu_zero2 configs/internlm2_chat_1_8b_qlora_assistant.py "$I2" --deepspeed deepspeed_zero2
  NPROC_PER_NODE=2 XA_EVALUATION_FREQ=0 train qwen0.5b_2gpu_ddp configs/qwen2_5_0_5b_qlora_assistant.py "$Q05"
}

[ "$MODE" = quick ] || random_model internlm2-chat-1.8b >/dev/null
case "$MODE" in
  quick)  # the shortest check of DeepSpeed ZeRO-2 and the flex_attention path on one GPU
    XA_EVALUATION_FREQ=0 train qwen0.5b_1gpu_zero2 configs/qwen2_5_0_5b_qlora_assistant.py \
      "$(random_model qwen2.5-0.5b)" --deepspeed deepspeed_zero2
    grep -h "flex_attention" "$WORK"/*.log | sort | uniq -c | head -3 | tee -a "$SUMMARY" ;;
  bench) bench; train internlm2_1gpu configs/internlm2_chat_1_8b_qlora_assistant.py "$WORK/internlm2-chat-1.8b" ;;
  single) single ;;
  multi) multi ;;
  speed) bench ;;
  deepspeed)  # DeepSpeed ZeRO-2: each QLoRA config on 1 GPU, InternLM2 over 2 GPUs
    XA_EVALUATION_FREQ=0 train qwen0.5b_1gpu_zero2 configs/qwen2_5_0_5b_qlora_assistant.py \
      "$(random_model qwen2.5-0.5b)" --deepspeed deepspeed_zero2
    XA_EVALUATION_FREQ=0 train qwen1.5b_1gpu_zero2 configs/qwen2_5_1_5b_qlora_assistant.py \
      "$(random_model qwen2.5-1.5b)" --deepspeed deepspeed_zero2
    [ -n "${SKIP_INTERNLM2:-}" ] || XA_EVALUATION_FREQ=0 train internlm2_1gpu_zero2 configs/internlm2_chat_1_8b_qlora_assistant.py \
      "$WORK/internlm2-chat-1.8b" --deepspeed deepspeed_zero2
    [ "$(nvidia-smi -L | wc -l)" -ge 2 ] && NPROC_PER_NODE=2 XA_EVALUATION_FREQ=0 train internlm2_2gpu_zero2 \
      configs/internlm2_chat_1_8b_qlora_assistant.py "$WORK/internlm2-chat-1.8b" --deepspeed deepspeed_zero2
    grep -h "varlen\|attention route" "$WORK"/*.log | sort | uniq -c | head -5 | tee -a "$SUMMARY" ;;
  all)  # 2 GPUs: the benchmark alone on GPU 0 while the 1-GPU runs use GPU 1; then both together.
    CUDA_VISIBLE_DEVICES=0 bench &
    CUDA_VISIBLE_DEVICES=1 single &
    wait
    multi ;;
esac
note "== done in $SECONDS s"
