# The tutorial's LLaVA stage 1: InternLM2-Chat-1.8B + CLIP ViT-L/14-336, only the projector learns
# (XTuner ships this stage's result as a checkpoint; this config makes it). Every path is a setting:
#   xtuner-assistant train configs/llava/internlm2_chat_1_8b_clip_vit_large_p14_336_pretrain.py \
#       --set llm=PATH/internlm2-chat-1_8b --set visual_encoder=PATH/clip-vit-large-patch14-336 \
#       --set data_path=data/easy_vqa/captions.json --set image_folder=data/easy_vqa/images
# On a CPU add --set dtype=float32 (float16 autocast needs a GPU).
_base_ = ["./_base_/llava_runtime.py"]  # first statement: tells mmengine this is a plain (non-lazy) config

from xtuner_assistant.llava.recipe import chat_tokenizer, llava_dataloader, llava_model, vision_encoder
from xtuner_assistant.training.recipe import optimizer, schedule, setting

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
llm = setting("llm", "./models/internlm2-chat-1_8b")
visual_encoder_path = setting("visual_encoder", "./models/clip-vit-large-patch14-336")
visual_select_layer = setting("visual_select_layer", -2)
data_path = setting("data_path", "data/easy_vqa/captions.json")
image_folder = setting("image_folder", "data/easy_vqa/images")
max_length = setting("max_length", int(2048 - (336 / 14) ** 2))
dtype = setting("dtype", "float16")  # float16 + autocast on a GPU; float32 on a CPU
batch_size = setting("batch_size", 32)
accumulative_counts = setting("accumulative_counts", 1)
lr = setting("lr", 1e-3)
max_epochs = setting("max_epochs", 1)
warmup_iters = setting("warmup_iters", 10)
save_steps = setting("save_steps", 500)
seed = setting("seed", 0)

#######################################################################
#             PART 2  Wiring (xtuner_assistant/llava/recipe.py)       #
#######################################################################
tokenizer = chat_tokenizer(llm)
visual_encoder, image_processor = vision_encoder("clip", visual_encoder_path)
model = llava_model(llm, visual_encoder, stage="pretrain", dtype=f"torch.{dtype}",
                    visual_select_layer=visual_select_layer)
train_dataloader = llava_dataloader(data_path, image_folder, tokenizer, image_processor, max_length=max_length,
                                    batch_size=batch_size, seed=seed)
optim_wrapper = optimizer(lr, accumulative_counts, mixed_precision=None if dtype == "float32" else dtype)
param_scheduler, train_cfg = schedule(max_epochs, warmup_iters)
default_hooks = dict(checkpoint=dict(interval=save_steps))
randomness = dict(seed=seed)
