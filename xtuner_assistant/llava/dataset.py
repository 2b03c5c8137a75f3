"""XTuner's LLaVA JSON, encoded with the LLM's own chat template (the one contract of chat_template.py).

Stock `LLaVADataset` formats turns with a hand-written `PROMPT_TEMPLATE` and adds the tokenizer's
bos/eos around them, which for ChatML models (SmolLM2, Qwen2.5) differs from what the tokenizer's
chat template renders, and so from what `vqa chat` and `vqa eval` feed the model. This subclass
keeps everything else of `LLaVADataset` (image loading, padding to square, the image processor) and
only replaces the text encoding: the conversation is rendered by the template, the `<image>`
placeholder becomes XTuner's IMAGE_TOKEN_INDEX, and labels cover exactly the assistant turns.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from PIL import Image

from xtuner.dataset import LLaVADataset
from xtuner.registry import BUILDER
from xtuner.utils import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX

from xtuner_assistant.chat_template import ChatTemplateError, encode_conversation, require_chat_template
from xtuner_assistant.llava.image_chat import image_pixels, image_prompt_pieces
from xtuner_assistant.paths import read_json_list

ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


class LLaVADataError(ValueError):
    pass


def encode_with_image(tokenizer, text: str) -> list[int]:
    """Token ids of `text`, where each `<image>` becomes IMAGE_TOKEN_INDEX (LLaVA splices the
    projected image features in at that position)."""
    ids: list[int] = []
    for i, chunk in enumerate(text.split(DEFAULT_IMAGE_TOKEN)):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        if chunk:
            ids += tokenizer.encode(chunk, add_special_tokens=False)
    return ids


def llava_messages(conversations: list[dict], where: str) -> list[dict]:
    messages = []
    for turn in conversations:
        role = ROLES.get(turn.get("from"))
        if role is None or not isinstance(turn.get("value"), str):
            raise LLaVADataError(f"{where}: each turn needs \"from\" (human, gpt or system) and a \"value\" "
                                 f"string; got {json.dumps(turn, ensure_ascii=False)[:120]}")
        content = turn["value"]
        if role == "user" and DEFAULT_IMAGE_TOKEN in content:
            # LLaVA's own convention (llava_map_fn): the image first, then the text.
            content = DEFAULT_IMAGE_TOKEN + "\n" + content.replace(DEFAULT_IMAGE_TOKEN, "").strip()
        messages.append({"role": role, "content": content})
    return messages


def encode_image_conversation(tokenizer, messages: list[dict], max_length: int) -> dict:
    """input_ids/labels like chat_template.encode_conversation, with image placeholders kept."""
    return encode_conversation(tokenizer, messages, max_length, encode_prompt=encode_with_image)


def image_prompt_ids(tokenizer, question: str) -> list[int]:
    """What the model sees at inference for one question about one image (image_chat, which answers)."""
    before, after = image_prompt_pieces(tokenizer, question)
    return before + [IMAGE_TOKEN_INDEX] + after


@BUILDER.register_module()
class ChatTemplateLLaVADataset(LLaVADataset):
    def __init__(self, data_path: str, image_folder: str, tokenizer, image_processor, max_length: int = 2048,
                 pad_image_to_square: bool = False, max_dataset_length: int | None = None):
        tokenizer = BUILDER.build(tokenizer) if isinstance(tokenizer, dict) else tokenizer
        require_chat_template(tokenizer, f"the tokenizer of {data_path}")
        path = Path(data_path)
        records = read_json_list(path, '{"image", "conversations"} records', LLaVADataError,
                                 "no such data file; make one with `xtuner-assistant vqa data`")
        self.text_data = []
        for index, record in enumerate(records[:max_dataset_length]):
            where = f"{path} record {index}"
            try:
                encoded = encode_image_conversation(
                    tokenizer, llava_messages(record.get("conversations", []), where), max_length)
            except ChatTemplateError as error:
                raise LLaVADataError(f"{where}: {error}") from None
            if not any(label != IGNORE_INDEX for label in encoded["labels"]):
                raise LLaVADataError(f"{where}: no assistant answer left within max_length={max_length}")
            encoded["image"] = record.get("image")
            self.text_data.append(encoded)
        self.image_folder = image_folder
        self.image_processor = BUILDER.build(image_processor) if isinstance(image_processor, dict) else image_processor
        self.pad_image_to_square = pad_image_to_square

    def __getitem__(self, index):
        record = dict(self.text_data[index])  # a copy, so pixel values are not kept in memory
        processor = self.image_processor
        if record.get("image"):
            image = Image.open(os.path.join(self.image_folder, record["image"])).convert("RGB")
            record["pixel_values"] = image_pixels(image, processor, self.pad_image_to_square)
        else:
            size = getattr(processor, "crop_size", None) or processor.size
            record["pixel_values"] = torch.zeros(3, size["height"], size["width"])
        return record
