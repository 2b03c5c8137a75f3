"""Questions about an image the user gives, as `chat --image`, `vqa chat`, the web page and the
published app take them: which model folders are LLaVA ones, reading the user's image with an error
that says what was wrong, and answering: image -> encoder -> projector -> image tokens spliced into
the question as the LLM's own chat template renders it -> greedy reply until the end-of-turn token.

`xtuner-assistant publish` copies this file into a LLaVA model's app (publish/app_bundle.py), so it
imports nothing of xtuner-assistant but the chat-template contract (copied beside it), and only
torch, transformers, safetensors and PIL; `llava/model.py` loads a converted folder with XTuner and
answers through the same functions. A published model repo is the portable layout of `PORTABLE`.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

IMAGE_TYPES = ("png", "jpg", "jpeg")
IMAGE_PLACEHOLDER = "<image>"  # XTuner's DEFAULT_IMAGE_TOKEN, where the image tokens go
# The published layout: llm/ (merged, with its tokenizer and chat template), projector/,
# visual_encoder/ (weights + image processor) and this file, which says how they fit.
PORTABLE = "llava.json"


def is_llava_model(path: str | Path) -> bool:
    """The layout `vqa convert` writes (XTuner's pth_to_hf for LLaVA: projector/ + xtuner_config.py),
    or the portable one a publish writes (llava.json + projector/)."""
    path = Path(path)
    return (path / "projector").is_dir() and ((path / "xtuner_config.py").is_file() or (path / PORTABLE).is_file())


def read_image(source: str | Path | bytes, name: str | None = None):
    """An RGB PIL image from a file path or uploaded bytes; ValueError/FileNotFoundError naming it otherwise."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, bytes):
        name, opened = name or "the uploaded file", io.BytesIO(source)
    else:
        name, opened = name or str(source), Path(source)
        if not opened.is_file():
            raise FileNotFoundError(f"{name}: no such image file")
    try:
        with Image.open(opened) as image:
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise ValueError(f"{name}: not an image (no image format recognised in it); give a PNG or JPEG file") from None
    except OSError as error:  # recognised but truncated or corrupt
        raise ValueError(f"{name}: a broken image ({error}); give a PNG or JPEG file") from None


def expand_to_square(image, background):
    """The image centred on a square of `background` (what XTuner's expand2square does; written here so
    that the published app needs no XTuner)."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def efficientnet_feature_map(backbone, pixel_values, feature_block: int = -1):
    """(B, width, H/32, W/32): EfficientNet-Lite's last feature map, plus (with `feature_block` >= 0)
    that block's output average-pooled onto the same grid. ImageNet's last layer keeps colour poorly;
    a stride-16 block keeps it (docs/llava.md)."""
    import torch

    x = backbone._swish(backbone._bn0(backbone._conv_stem(pixel_values)))
    middle = None
    for index, block in enumerate(backbone._blocks):
        x = block(x)
        if index == feature_block:
            middle = x
    x = backbone._swish(backbone._bn1(backbone._conv_head(x)))
    if middle is not None:
        x = torch.cat([x, torch.nn.functional.adaptive_avg_pool2d(middle, x.shape[-2:])], dim=1)
    return x


def efficientnet_token_sequence(feature_map):
    """(B, 1 + patches, width): the patches preceded by their mean, in the place of CLIP's class token."""
    import torch

    patches = feature_map.flatten(2).transpose(1, 2)
    return torch.cat([patches.mean(dim=1, keepdim=True), patches], dim=1)


def image_pixels(image, processor, pad_to_square: bool):
    """One image as the encoder's pixel_values (C, H, W), the same in training (llava/dataset.py) and
    answering: centred on a square of the processor's mean colour first when the config says so."""
    if pad_to_square:
        image = expand_to_square(image, tuple(int(x * 255) for x in processor.image_mean))
    return processor.preprocess(image, return_tensors="pt")["pixel_values"][0]


def image_features(model, images):
    """(batch, image tokens, LLM width): encoder -> selected layer without its class token -> projector."""
    import torch

    pixels = [image_pixels(image, model.image_processor, model.pad_image_to_square) for image in images]
    encoder_dtype = next(model.visual_encoder.parameters()).dtype
    batch = torch.stack(pixels).to(model.device, encoder_dtype)
    with torch.inference_mode():
        hidden = model.visual_encoder(batch, output_hidden_states=True).hidden_states[model.visual_select_layer]
        projector_dtype = next(model.projector.parameters()).dtype
        return model.projector(hidden[:, 1:].to(projector_dtype))


def image_prompt_pieces(tokenizer, question: str) -> tuple[list[int], list[int]]:
    """Token ids before and after the image for one question about one image: the user turn
    `<image>\nquestion` rendered by the chat template with the generation prompt, as training renders
    it (llava/dataset.py)."""
    from xtuner_assistant.chat_template import render

    messages = [{"role": "user", "content": IMAGE_PLACEHOLDER + "\n" + question.replace(IMAGE_PLACEHOLDER, "").strip()}]
    before, after = render(tokenizer, messages, add_generation_prompt=True).split(IMAGE_PLACEHOLDER)
    return tuple(tokenizer.encode(text, add_special_tokens=False) if text else [] for text in (before, after))


def prompt_embeddings(model, question: str, features):
    """The LLM's input embeddings for one question about one image, its image tokens (`features`)
    in the placeholder's place."""
    import torch

    embed = model.llm.get_input_embeddings()
    before, after = (embed(torch.tensor(ids, dtype=torch.long, device=model.device))
                     for ids in image_prompt_pieces(model.tokenizer, question))
    return torch.cat([before, features.to(before.dtype), after])


def answer(model, images, questions: list[str], max_new_tokens: int = 64) -> list[str]:
    """Greedy answers, one per (image, question) pair, batched with left padding."""
    import torch

    with torch.inference_mode():
        features = image_features(model, images)
        embeddings = [prompt_embeddings(model, question, feature) for question, feature in zip(questions, features)]
        width = max(e.shape[0] for e in embeddings)
        padded = torch.zeros(len(embeddings), width, embeddings[0].shape[1], dtype=embeddings[0].dtype,
                             device=model.device)
        mask = torch.zeros(len(embeddings), width, dtype=torch.long, device=model.device)
        for row, e in enumerate(embeddings):
            padded[row, width - e.shape[0]:] = e
            mask[row, width - e.shape[0]:] = 1
        return greedy_decode(model, padded, mask, max_new_tokens)


def greedy_decode(model, embeddings, mask, max_new_tokens: int) -> list[str]:
    """Greedy decoding from input embeddings, with a KV cache, until an end-of-turn token.

    Written out rather than `generate(inputs_embeds=...)`, which InternLM2's remote code (as shipped
    with xtuner 0.2.0) cannot run under transformers 4.48."""
    import torch

    from xtuner_assistant.chat_template import end_of_turn_token_ids

    stop = torch.tensor(end_of_turn_token_ids(model.tokenizer), device=model.device)
    with torch.inference_mode():
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


def load_portable_llava(path: str | Path, device: str | None = None, dtype=None):
    """A published LLaVA folder (llava.json, llm/, projector/, visual_encoder/), with only torch and
    transformers (+ efficientnet-lite-pytorch for that encoder): what `answer` needs, as attributes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor

    path = Path(path)
    layout = json.loads((path / PORTABLE).read_text(encoding="utf-8"))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or torch.float32
    tokenizer = AutoTokenizer.from_pretrained(path / "llm")
    if not getattr(tokenizer, "chat_template", None):
        raise RuntimeError(f"{path / 'llm'}: the tokenizer has no chat template")
    llm = AutoModelForCausalLM.from_pretrained(path / "llm", torch_dtype=dtype)
    encoder = visual_encoder(path / "visual_encoder", layout["visual_encoder"], dtype)
    return SimpleNamespace(llm=llm.to(device).eval(), tokenizer=tokenizer, visual_encoder=encoder.to(device).eval(),
                           projector=projector(path / "projector", dtype).to(device).eval(),
                           image_processor=CLIPImageProcessor.from_pretrained(path / "visual_encoder"),
                           visual_select_layer=int(layout["visual_select_layer"]),
                           pad_image_to_square=bool(layout["pad_image_to_square"]), device=torch.device(device),
                           path=path)


def visual_encoder(folder: Path, description: dict, dtype):
    """The vision encoder of a published LLaVA: an HF CLIP vision model, or EfficientNet-Lite0 as
    `EfficientNetLiteVisionTower` runs it (llava/vision_encoder.py), from its saved weights."""
    import torch
    from safetensors.torch import load_file

    if description["kind"] == "clip":
        from transformers import CLIPVisionModel

        return CLIPVisionModel.from_pretrained(folder, torch_dtype=dtype)
    if description["kind"] != "efficientnet-lite0":
        raise RuntimeError(f"{folder}: unknown vision encoder kind {description['kind']!r}")
    from efficientnet_lite_pytorch import EfficientNet
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    class EfficientNetLiteTokens(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = EfficientNet.from_name("efficientnet-lite0", image_size=description["image_size"])
            self.backbone._fc = torch.nn.Identity()
            self.backbone.set_swish(memory_efficient=False)

        def forward(self, pixel_values, output_hidden_states=True):
            sequence = efficientnet_token_sequence(
                efficientnet_feature_map(self.backbone, pixel_values, description["feature_block"]))
            return BaseModelOutputWithPooling(last_hidden_state=sequence, pooler_output=sequence[:, 0],
                                              hidden_states=(sequence,))

    encoder = EfficientNetLiteTokens()
    encoder.load_state_dict(load_file(folder / "model.safetensors"))
    return encoder.to(dtype)


def projector(folder: Path, dtype):
    """XTuner's ProjectorModel (Linear, then act + Linear per extra depth) from its config and weights."""
    import torch
    from safetensors.torch import load_file
    from transformers.activations import ACT2FN

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    layers = [torch.nn.Linear(config["visual_hidden_size"], config["llm_hidden_size"], bias=config["bias"])]
    for _ in range(1, config["depth"]):
        layers += [ACT2FN[config["hidden_act"]],
                   torch.nn.Linear(config["llm_hidden_size"], config["llm_hidden_size"], bias=config["bias"])]
    sequential = torch.nn.Sequential(*layers)
    sequential.load_state_dict({key.removeprefix("model."): value
                                for key, value in load_file(folder / "model.safetensors").items()})
    return sequential.to(dtype)
