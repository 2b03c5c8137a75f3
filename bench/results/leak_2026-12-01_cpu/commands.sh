#!/usr/bin/env bash
# identity_samples=768 with the shipped recipe (NEFTune 15), two names/seeds, each alone, then the probe
cd /work/main; source .venv/bin/activate
MODEL=$(python -c "from xtuner_assistant.training.recipe import packaged_model; print(packaged_model('smollm2-135m')())")
for spec in "小菜鸡|0|xiaocaiji" "Kestrel|1|Kestrel"; do
  IFS='|' read -r name seed tag <<<"$spec"
  W=/work/scratch/exp768_$tag; rm -rf $W
  start=$SECONDS
  xtuner-assistant train configs/smollm2_135m_lora_cpu_assistant.py --work-dir $W --set name=$name --set author= \
    --set seed=$seed --set identity_samples=768 > $W.train.log 2>&1
  echo "$tag train exit $? in $((SECONDS-start)) s"
  last=$(ls $W/iter_*.pth | sed 's/.*iter_//; s/[.]pth//' | sort -n | tail -1)
  start=$SECONDS
  python bench/leak_probe.py --work-dir $W --checkpoint iter_$last.pth --base $MODEL --name $name --author '' \
    --seed $seed --device cpu --out /work/scratch/leak_768_${tag}_seed$seed.json > $W.probe.log 2>&1
  echo "$tag probe exit $? in $((SECONDS-start)) s (iter_$last)"
done
