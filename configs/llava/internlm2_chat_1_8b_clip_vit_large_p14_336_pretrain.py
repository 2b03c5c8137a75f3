# The tutorial's LLaVA stage 1: InternLM2-Chat-1.8B + CLIP ViT-L/14-336, only the projector learns
# (XTuner ships this stage's result as a checkpoint; this config makes it). Every path is a setting:
#   xtuner-assistant train configs/llava/internlm2_chat_1_8b_clip_vit_large_p14_336_pretrain.py \
#       --set llm=PATH/internlm2-chat-1_8b --set visual_encoder=PATH/clip-vit-large-patch14-336 \
#       --set data_path=data/easy_vqa/captions.json --set image_folder=data/easy_vqa/images
# On a CPU add --set dtype=float32 (float16 autocast needs a GPU).
_base_ = ["./_base_/llava_runtime.py"]  # first statement: tells mmengine this is a plain (non-lazy) config

from xtuner_assistant.training.recipe import warmup_then_cosine
from xtuner_assistant.training.settings import setting

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
#                      PART 2  Model & Tokenizer                      #
#######################################################################
tokenizer = dict(type="transformers.AutoTokenizer.from_pretrained", pretrained_model_name_or_path=llm,
                 trust_remote_code=True, padding_side="right")

visual_encoder = dict(type="transformers.CLIPVisionModel.from_pretrained",
                      pretrained_model_name_or_path=visual_encoder_path)
image_processor = dict(type="transformers.CLIPImageProcessor.from_pretrained",
                       pretrained_model_name_or_path=visual_encoder_path)

model = dict(
    type="xtuner.model.LLaVAModel",
    llm=dict(type="transformers.AutoModelForCausalLM.from_pretrained", pretrained_model_name_or_path=llm,
             trust_remote_code=True, torch_dtype=f"torch.{dtype}"),
    visual_encoder=visual_encoder,
    freeze_llm=True,
    freeze_visual_encoder=True,
    visual_select_layer=visual_select_layer,
    use_activation_checkpointing=False)

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
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
if dtype != "float32":  # mixed precision in `dtype`
    optim_wrapper.update(type="AmpOptimWrapper", loss_scale="dynamic", dtype=dtype)

param_scheduler = warmup_then_cosine(max_epochs, warmup_iters)

train_cfg = dict(type="xtuner.engine.runner.TrainLoop", max_epochs=max_epochs)

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
# Hooks, logging and seeds come from _base_/llava_runtime.py; these are merged into it.
default_hooks = dict(checkpoint=dict(interval=save_steps))
randomness = dict(seed=seed)
