"""A trained LLaVA, outside training: checkpoint -> folder (XTuner's pth_to_hf), load it, answer
questions about images -- the one path `vqa chat` and `vqa eval` share.

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

from xtuner_assistant.llava.image_chat import is_llava_model
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


def load_llava(path: Path, device: str | None = None) -> LLaVA:
    from mmengine.config import Config
    from transformers import AutoModelForCausalLM
    from xtuner.model.modules import ProjectorModel
    from xtuner.registry import BUILDER

    from xtuner_assistant.chat_template import require_chat_template

    path = Path(path)
    config_file = path / "xtuner_config.py"
    if not is_llava_model(path):
        raise LLaVAModelError(f"{path}: not a converted LLaVA model (needs projector/ and xtuner_config.py); "
                              "make one with `xtuner-assistant vqa convert WORK_DIR --out FOLDER`")
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


@torch.inference_mode()
def image_features(model: LLaVA, images) -> torch.Tensor:
    """(batch, image tokens, LLM width): encoder -> selected layer without its class token -> projector."""
    from xtuner.dataset.utils import expand2square

    pixels = []
    for image in images:
        if model.pad_image_to_square:
            image = expand2square(image, tuple(int(x * 255) for x in model.image_processor.image_mean))
        pixels.append(model.image_processor.preprocess(image, return_tensors="pt")["pixel_values"][0])
    batch = torch.stack(pixels).to(model.device)
    hidden = model.visual_encoder(batch, output_hidden_states=True).hidden_states[model.visual_select_layer]
    return model.projector(hidden[:, 1:])


@torch.inference_mode()
def answer(model: LLaVA, images, questions: list[str], max_new_tokens: int = 64) -> list[str]:
    """Greedy answers, one per (image, question) pair, batched with left padding."""
    from xtuner.model.utils import prepare_inputs_labels_for_multimodal

    from xtuner_assistant.llava.dataset import image_prompt_ids

    features = image_features(model, images)
    embeddings = []
    for question, feature in zip(questions, features):
        ids = torch.tensor([image_prompt_ids(model.tokenizer, question.replace("<image>", "").strip())],
                           device=model.device)
        embeddings.append(prepare_inputs_labels_for_multimodal(llm=model.llm, input_ids=ids,
                                                               pixel_values=feature[None])["inputs_embeds"][0])
    width = max(e.shape[0] for e in embeddings)
    padded = torch.zeros(len(embeddings), width, embeddings[0].shape[1], dtype=embeddings[0].dtype, device=model.device)
    mask = torch.zeros(len(embeddings), width, dtype=torch.long, device=model.device)
    for row, e in enumerate(embeddings):
        padded[row, width - e.shape[0]:] = e
        mask[row, width - e.shape[0]:] = 1
    return greedy_decode(model, padded, mask, max_new_tokens)


@torch.inference_mode()
def greedy_decode(model: LLaVA, embeddings: torch.Tensor, mask: torch.Tensor, max_new_tokens: int) -> list[str]:
    """Greedy decoding from input embeddings, with a KV cache, until an end-of-turn token.

    Written out rather than `generate(inputs_embeds=...)`, which InternLM2's remote code (as shipped
    with xtuner 0.2.0) cannot run under transformers 4.48."""
    from xtuner_assistant.chat_template import end_of_turn_token_ids

    stop = torch.tensor(end_of_turn_token_ids(model.tokenizer), device=model.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    output = model.llm(inputs_embeds=embeddings, attention_mask=mask, position_ids=positions, use_cache=True)
    tokens = torch.empty(len(mask), 0, dtype=torch.long, device=model.device)
    finished = torch.zeros(len(mask), dtype=torch.bool, device=model.device)
    for _ in range(max_new_tokens):
        next_token = output.logits[:, -1].argmax(-1)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        finished |= torch.isin(next_token, stop)
        if finished.all():
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        output = model.llm(input_ids=next_token[:, None], attention_mask=mask, position_ids=positions,
                           past_key_values=output.past_key_values, use_cache=True)
    replies = []
    for row in tokens.tolist():
        ends = [i for i, t in enumerate(row) if t in stop.tolist()]
        replies.append(model.tokenizer.decode(row[:ends[0]] if ends else row, skip_special_tokens=True).strip())
    return replies
