"""A trained LLaVA, outside training: checkpoint -> folder (XTuner's pth_to_hf), load it, and save it
as the portable layout `publish` pushes. Answering about images is llava/image_chat.py (`answer`,
imported here too): the one path `chat --image`, `vqa chat`, `vqa eval`, the web page and the
published app share.

The folder `vqa convert` writes is XTuner's own LLaVA layout: `projector/`, `llm_adapter/` (after
stage 2) and `visual_encoder_adapter/` (when the encoder had LoRA), plus `xtuner_config.py`, the
training config, which names the LLM, the vision encoder and its image processor. So a converted
model needs no separate description, and any vision encoder a config can build loads here too.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from xtuner_assistant.llava.image_chat import PORTABLE, answer, is_llava_model, load_portable_llava  # noqa: F401
from xtuner_assistant.training.export import pth_to_hf


class LLaVAModelError(RuntimeError):
    pass


def convert_llava_checkpoint(work_dir: Path, out: Path, checkpoint: Path | None = None, force: bool = False) -> Path:
    return pth_to_hf(work_dir, out, checkpoint, expect="projector/config.json", what="a LLaVA model folder",
                     hint=". Is this the work dir of a LLaVA config (configs/llava/)?", force=force)


@dataclass
class LLaVA:
    llm: torch.nn.Module
    tokenizer: object
    visual_encoder: torch.nn.Module
    projector: torch.nn.Module
    image_processor: object
    visual_select_layer: int
    pad_image_to_square: bool
    path: Path

    @property
    def device(self):
        return self.llm.device


def describe_llava(path: Path) -> dict:
    """What a LLaVA folder is made of, for its model card: the LLM (display name, recorded licence),
    the vision encoder, and the training stage and settings its config recorded. A portable folder
    carries this in llava.json (`about`); nothing here needs the weights."""
    import json

    from mmengine.config import Config

    from xtuner_assistant.models.fetch import recorded_licence
    from xtuner_assistant.models.zoo import model_display_name

    path = Path(path)
    if not (path / "xtuner_config.py").is_file():
        try:
            return dict(json.loads((path / PORTABLE).read_text(encoding="utf-8")).get("about") or {})
        except (OSError, ValueError):
            return {}
    cfg = Config.fromfile(str(path / "xtuner_config.py"))
    llm = str(cfg.model.llm.pretrained_model_name_or_path)
    encoder = cfg.model.visual_encoder
    if str(encoder.type).endswith("EfficientNetLiteVisionTower"):
        vision = (f"EfficientNet-Lite0 (ImageNet weights), {encoder.get('image_size', 128)} px"
                  + (f", block {encoder.feature_block} joined" if encoder.get("feature_block", -1) >= 0 else ""))
    else:
        vision = f"{model_display_name(encoder.get('pretrained_model_name_or_path', '') or 'CLIP')} ({encoder.type})"
    stage = ("stage 2: LoRA on the LLM and the projector, on instruction data" if (path / "llm_adapter").is_dir()
             else "stage 1: the projector only, on captions (the LLM unchanged)")
    dataset = cfg.train_dataloader.dataset
    training = {"stage": stage, "data": Path(str(dataset.get("data_path", ""))).name,
                "epochs": cfg.get("train_cfg", {}).get("max_epochs"), "batch_size": cfg.train_dataloader.get("batch_size"),
                "learning_rate": cfg.get("optim_wrapper", {}).get("optimizer", {}).get("lr"),
                "visual_select_layer": cfg.model.get("visual_select_layer", -2)}
    return {"base_model": model_display_name(llm), "licence": recorded_licence(llm), "visual_encoder": vision,
            "training": {key: value for key, value in training.items() if value not in (None, "")}}


def load_llava(path: Path, device: str | None = None) -> LLaVA:
    from mmengine.config import Config
    from transformers import AutoModelForCausalLM
    from xtuner.model.modules import ProjectorModel
    from xtuner.registry import BUILDER

    from xtuner_assistant.chat_template import require_chat_template

    path = Path(path)
    config_file = path / "xtuner_config.py"
    if not is_llava_model(path):
        raise LLaVAModelError(f"{path}: not a converted LLaVA model (needs projector/ and xtuner_config.py, or "
                              "llava.json when published); make one with `xtuner-assistant vqa convert WORK_DIR "
                              "--out FOLDER`")
    if not config_file.is_file():  # a published one (llava.json): what the app loads, loaded the same way
        return load_portable_llava(path, device)
    cfg = Config.fromfile(str(config_file))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    llm_path = cfg.model.llm.pretrained_model_name_or_path
    if not Path(llm_path, "config.json").is_file():
        raise LLaVAModelError(f"{config_file}: its LLM folder {llm_path} is missing; fetch or copy it back there")
    tokenizer = BUILDER.build(copy.deepcopy(cfg.tokenizer))
    require_chat_template(tokenizer, llm_path)
    llm = AutoModelForCausalLM.from_pretrained(llm_path, torch_dtype=torch.float32, trust_remote_code=True)
    if (path / "llm_adapter").is_dir():
        from peft import PeftModel

        llm = PeftModel.from_pretrained(llm, path / "llm_adapter").merge_and_unload()
    encoder = BUILDER.build(copy.deepcopy(cfg.model.visual_encoder.to_dict()))
    if (path / "visual_encoder_adapter").is_dir():
        from peft import PeftModel

        encoder = PeftModel.from_pretrained(encoder, path / "visual_encoder_adapter").merge_and_unload()
    projector = ProjectorModel.from_pretrained(path / "projector", torch_dtype=torch.float32)
    dataset = cfg.train_dataloader.dataset
    return LLaVA(llm=llm.to(device).eval(), tokenizer=tokenizer, visual_encoder=encoder.float().to(device).eval(),
                 projector=projector.to(device).eval(),
                 image_processor=BUILDER.build(copy.deepcopy(dataset.image_processor.to_dict())),
                 visual_select_layer=cfg.model.get("visual_select_layer", -2),
                 pad_image_to_square=dataset.get("pad_image_to_square", False), path=path)


def save_portable_llava(model: LLaVA, out: Path) -> Path:
    """`model` as the portable layout (image_chat.PORTABLE) that `publish` pushes and the published app
    loads without XTuner: llm/ with its adapter merged and its tokenizer, projector/, visual_encoder/
    (any adapter merged, plus its image processor) and llava.json."""
    import json

    from safetensors.torch import save_file
    from transformers import CLIPVisionModel

    from xtuner_assistant.llava.vision_encoder import EfficientNetLiteVisionTower

    out = Path(out)
    encoder = model.visual_encoder
    if isinstance(encoder, EfficientNetLiteVisionTower):
        description = {"kind": "efficientnet-lite0", "image_size": encoder.config.image_size,
                       "feature_block": encoder.feature_block}
    elif isinstance(encoder, CLIPVisionModel):
        description = {"kind": "clip"}
    else:
        raise LLaVAModelError(f"{model.path}: its vision encoder is a {type(encoder).__name__}; a LLaVA model can be "
                              "published with EfficientNet-Lite0 or an HF CLIP vision encoder")
    model.llm.save_pretrained(out / "llm", safe_serialization=True)
    model.tokenizer.save_pretrained(out / "llm")
    model.projector.save_pretrained(out / "projector", safe_serialization=True)
    if description["kind"] == "clip":
        encoder.save_pretrained(out / "visual_encoder", safe_serialization=True)
    else:
        (out / "visual_encoder").mkdir(parents=True)
        save_file({key: value.contiguous() for key, value in encoder.state_dict().items()},
                  out / "visual_encoder" / "model.safetensors")
    model.image_processor.save_pretrained(out / "visual_encoder")
    layout = {"visual_encoder": description, "visual_select_layer": model.visual_select_layer,
              "pad_image_to_square": model.pad_image_to_square, "about": describe_llava(model.path)}
    (out / PORTABLE).write_text(json.dumps(layout, indent=2) + "\n", encoding="utf-8")
    return out
