# The tutorial's LLaVA stage 2: QLoRA on InternLM2-Chat-1.8B + LoRA on CLIP ViT-L/14-336, starting
# from the stage-1 projector, batch size 1 (about 24 GB of GPU memory). Every path is a setting:
#   xtuner-assistant train configs/llava/internlm2_chat_1_8b_qlora_clip_vit_large_p14_336_lora_finetune.py \
#       --set llm=PATH/internlm2-chat-1_8b --set visual_encoder=PATH/clip-vit-large-patch14-336 \
#       --set pretrained_pth=PATH/iter_2181.pth --set data_path=repeated_data.json --set image_folder=IMAGES
# The tutorial's data is one image's Q&A repeated 200 times (`xtuner-assistant vqa repeat -n 200`).
# On a CPU add --set dtype=float32 --set quantize_4bit=false (4-bit needs a GPU build of bitsandbytes).
_base_ = ["./_base_/llava_runtime.py"]  # first statement: tells mmengine this is a plain (non-lazy) config

from xtuner_assistant.training.recipe import nf4_quantization, warmup_then_cosine
from xtuner_assistant.training.settings import setting

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
    use_activation_checkpointing=gradient_checkpointing,
    pretrained_pth=pretrained_pth)  # the stage-1 projector
if quantize_4bit:
    model["llm"]["quantization_config"] = nf4_quantization(f"torch.{dtype}")
if llm_lora_r:
    model["llm_lora"] = dict(type="peft.LoraConfig", r=llm_lora_r, lora_alpha=llm_lora_alpha, lora_dropout=0.05,
                             bias="none", task_type="CAUSAL_LM")
if encoder_lora_r:
    model["visual_encoder_lora"] = dict(type="peft.LoraConfig", r=encoder_lora_r, lora_alpha=encoder_lora_alpha,
                                        lora_dropout=0.05, bias="none")

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
