# The tutorial's LLaVA stage 2: QLoRA on InternLM2-Chat-1.8B + LoRA on CLIP ViT-L/14-336, starting
# from the stage-1 projector, batch size 1 (about 24 GB of GPU memory). Every path is a setting:
#   xtuner-assistant train configs/llava/internlm2_chat_1_8b_qlora_clip_vit_large_p14_336_lora_finetune.py \
#       --set llm=PATH/internlm2-chat-1_8b --set visual_encoder=PATH/clip-vit-large-patch14-336 \
#       --set pretrained_pth=PATH/iter_2181.pth --set data_path=repeated_data.json --set image_folder=IMAGES
# The tutorial's data is one image's Q&A repeated 200 times (`xtuner-assistant vqa repeat -n 200`).
# On a CPU add --set dtype=float32 --set quantize_4bit=false (4-bit needs a GPU build of bitsandbytes).
_base_ = ["./_base_/llava_runtime.py"]  # first statement: tells mmengine this is a plain (non-lazy) config

from xtuner_assistant.llava.recipe import chat_tokenizer, llava_dataloader, llava_model, vision_encoder
from xtuner_assistant.training.recipe import optimizer, schedule, setting

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
llm = setting("llm", "./models/internlm2-chat-1_8b")
visual_encoder_path = setting("visual_encoder", "./models/clip-vit-large-patch14-336")
visual_select_layer = setting("visual_select_layer", -2)
pretrained_pth = setting("pretrained_pth", "./work_dirs/llava_pretrain/iter_2181.pth")
data_path = setting("data_path", "data/easy_vqa/train.json")
image_folder = setting("image_folder", "data/easy_vqa/images")
max_length = setting("max_length", int(2048 - (336 / 14) ** 2))
dtype = setting("dtype", "float16")
quantize_4bit = setting("quantize_4bit", True)
batch_size = setting("batch_size", 1)
accumulative_counts = setting("accumulative_counts", 1)
lr = setting("lr", 2e-4)
max_epochs = setting("max_epochs", 1)
warmup_iters = setting("warmup_iters", 10)
llm_lora_r = setting("llm_lora_r", 512)
llm_lora_alpha = setting("llm_lora_alpha", 256)
encoder_lora_r = setting("encoder_lora_r", 64)
encoder_lora_alpha = setting("encoder_lora_alpha", 16)
gradient_checkpointing = setting("gradient_checkpointing", True)
save_steps = setting("save_steps", 500)
seed = setting("seed", 0)

#######################################################################
#             PART 2  Wiring (xtuner_assistant/llava/recipe.py)       #
#######################################################################
tokenizer = chat_tokenizer(llm)
visual_encoder, image_processor = vision_encoder("clip", visual_encoder_path)
model = llava_model(llm, visual_encoder, stage="finetune", pretrained_pth=pretrained_pth, llm_lora_r=llm_lora_r,
                    llm_lora_alpha=llm_lora_alpha, encoder_lora_r=encoder_lora_r,
                    encoder_lora_alpha=encoder_lora_alpha, quantize_4bit=quantize_4bit, dtype=f"torch.{dtype}",
                    visual_select_layer=visual_select_layer, gradient_checkpointing=gradient_checkpointing)
train_dataloader = llava_dataloader(data_path, image_folder, tokenizer, image_processor, max_length=max_length,
                                    batch_size=batch_size, seed=seed)
optim_wrapper = optimizer(lr, accumulative_counts, mixed_precision=None if dtype == "float32" else dtype)
param_scheduler, train_cfg = schedule(max_epochs, warmup_iters)
default_hooks = dict(checkpoint=dict(interval=save_steps))
randomness = dict(seed=seed)
