"""The LLaVA story: easy-VQA images and questions -> LLaVA JSON -> stage 1 (projector) and stage 2
(LoRA) through the real `xtuner train` -> convert -> ask a question about an image.

The LLMs and CLIP encoders here are tiny random ones built in the test; EfficientNet-Lite0 is the
real one from PyPI. Whether a real model learns to see is measured in docs/BENCHMARKS.md.
"""
import argparse
import json
from pathlib import Path

import pytest
import torch

from xtuner_assistant.cli import train as train_command
from xtuner_assistant.cli import vqa as vqa_command
from xtuner_assistant.llava.dataset import encode_image_conversation, image_prompt_ids
from xtuner_assistant.llava.easy_vqa import (ANSWER_INSTRUCTION, describe_images, easy_vqa_split, question_type,
                                       write_easy_vqa)
from xtuner_assistant.llava.vqa_eval import answer_word

REPO = Path(__file__).resolve().parent.parent
LLAVA_CONFIGS = REPO / "configs" / "llava"


def cli(*argv) -> int:
    """`xtuner-assistant train|vqa ...`, through the same register/run functions the CLI uses."""
    parser = argparse.ArgumentParser(prog="xtuner-assistant")
    verbs = parser.add_subparsers(dest="command", required=True)
    train_command.register(verbs)
    vqa_command.register(verbs)
    args = parser.parse_args([str(a) for a in argv])
    return args.run(args)


@pytest.fixture(scope="module")
def easy_vqa(tmp_path_factory) -> dict:
    return write_easy_vqa(tmp_path_factory.mktemp("easy_vqa"), train_images=6, test_images=2, seed=1)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    from xtuner_assistant.models.stand_ins import random_clip_vision

    return random_clip_vision(tmp_path_factory.mktemp("clip") / "clip", real_shape=False)


def test_easy_vqa_becomes_llava_json_with_captions_and_a_held_out_test(easy_vqa):
    train_questions, _ = easy_vqa_split("train")
    captions = json.loads(easy_vqa["captions"].read_text())
    train = json.loads(easy_vqa["train"].read_text())
    test = json.loads(easy_vqa["test"].read_text())
    images = easy_vqa["image_folder"]

    # Captions say what the image's own "what colour / what shape" answers say.
    assert len(captions) >= 5
    for record in captions:
        image_id = int(Path(record["image"]).stem)
        direct = {a for q, a, i in train_questions if i == image_id and q.startswith("what")}
        words = set(record["conversations"][1]["value"].rstrip(".").lower().split()) - {"a", "shape"}
        assert words and direct <= words | {"shape"}, (record, direct)
        assert (images / record["image"]).is_file()

    # Stage 2: every question of the 6 images, the image placeholder once, in the first turn.
    assert sum(len(r["conversations"]) // 2 for r in train) == easy_vqa["train_questions"] > 6 * 5
    for record in train:
        human = [t["value"] for t in record["conversations"] if t["from"] == "human"]
        assert human[0].startswith("<image>\n") and all("<image>" not in h for h in human[1:])
        assert all(h.endswith(ANSWER_INSTRUCTION) for h in human)

    # The test split is the package's held-out one: other images, every question typed.
    test_questions, _ = easy_vqa_split("test")
    ids = {int(Path(r["image"]).stem) for r in test}
    assert all(r["image"].startswith("test/") for r in test) and len(ids) == 2
    assert sorted((r["question"], r["answer"]) for r in test) == sorted((q, a) for q, a, i in test_questions if i in ids)
    assert all(r["question_type"] == question_type(r["answer"]) for r in test)
    assert sum(easy_vqa["test_by_type"].values()) == len(test) == easy_vqa["test_questions"]


def test_captions_read_negated_questions_right():
    questions = [("is there not a red shape?", "no", 7), ("does the image contain a circle?", "yes", 7),
                 ("is there a blue shape?", "no", 7)]
    assert describe_images(questions)[7] == {"color": "red", "shape": "circle"}


def test_repeat_is_the_tutorials_and_says_what_it_does(easy_vqa, tmp_path, capsys):
    one = json.loads(easy_vqa["train"].read_text())[:1]
    (tmp_path / "one.json").write_text(json.dumps(one))
    assert cli("vqa", "repeat", "-i", tmp_path / "one.json", "-o", tmp_path / "repeated.json", "-n", 200) == 0
    repeated = json.loads((tmp_path / "repeated.json").read_text())
    assert len(repeated) == 200 and len({r["id"] for r in repeated}) == 200
    assert all(r["conversations"] == one[0]["conversations"] for r in repeated)
    assert "warning: repeating 1 distinct conversation(s) 200 times" in capsys.readouterr().err


def test_scoring_takes_the_first_answer_word():
    assert answer_word("Yes, there is a circle.") == "yes"
    assert answer_word("It is grey") == "gray"
    assert answer_word("I cannot tell") is None


def test_training_and_inference_render_the_same_prompt(tokenizer):
    from xtuner.utils import IGNORE_INDEX, IMAGE_TOKEN_INDEX

    messages = [{"role": "user", "content": "<image>\nwhat color is the shape?"}, {"role": "assistant", "content": "red"}]
    encoded = encode_image_conversation(tokenizer, messages, max_length=512)
    assert encoded["input_ids"].count(IMAGE_TOKEN_INDEX) == 1
    answer_ids = [i for i, label in zip(encoded["input_ids"], encoded["labels"]) if label != IGNORE_INDEX]
    assert tokenizer.decode(answer_ids).startswith("red<|im_end|>")
    prompt = image_prompt_ids(tokenizer, "what color is the shape?")
    assert encoded["input_ids"][:len(prompt)] == prompt and encoded["labels"][len(prompt)] != IGNORE_INDEX


def test_efficientnet_lite0_serves_as_llava_vision_encoder(tiny_model_dir, easy_vqa):
    """The real EfficientNet-Lite0 inside XTuner's LLaVAModel: image tokens in, a loss out, and only
    the projector learns in stage 1 (its batch-norm statistics stay ImageNet's)."""
    from mmengine.config import ConfigDict
    from xtuner.dataset.collate_fns import default_collate_fn
    from xtuner.model import LLaVAModel

    from xtuner_assistant.llava.dataset import ChatTemplateLLaVADataset
    from xtuner_assistant.llava.vision_encoder import EfficientNetLiteVisionTower, efficientnet_image_processor

    torch.manual_seed(0)
    tower = EfficientNetLiteVisionTower(image_size=64)
    model = LLaVAModel(llm=ConfigDict(type="transformers.AutoModelForCausalLM.from_pretrained",
                                      pretrained_model_name_or_path=str(tiny_model_dir)),
                       visual_encoder=tower, freeze_llm=True, freeze_visual_encoder=True, visual_select_layer=-1,
                       use_activation_checkpointing=False)
    dataset = ChatTemplateLLaVADataset(str(easy_vqa["captions"]), str(easy_vqa["image_folder"]),
                                       dict(type="transformers.AutoTokenizer.from_pretrained",
                                            pretrained_model_name_or_path=str(tiny_model_dir)),
                                       efficientnet_image_processor(64))
    batch = default_collate_fn([dataset[0], dataset[1]])
    pixels = batch["data"]["pixel_values"]
    assert pixels.shape == (2, 3, 64, 64)

    hidden = tower(pixels).hidden_states[-1]
    assert hidden.shape == (2, 1 + 2 * 2, 1280)  # 64 px / 32 = 2x2 image tokens after the pooled one
    assert torch.allclose(hidden[:, 1:], tower.backbone.extract_features(pixels).flatten(2).transpose(1, 2))

    with_block = EfficientNetLiteVisionTower(image_size=64, feature_block=8)  # + a stride-16 block's 112 channels
    assert with_block(pixels).hidden_states[-1].shape == (2, 5, 1280 + 112) and with_block.config.hidden_size == 1392
    from accelerate import init_empty_weights

    with init_empty_weights():  # how `xtuner convert pth_to_hf` builds the model
        assert EfficientNetLiteVisionTower(image_size=64, feature_block=8).config.hidden_size == 1392

    model.train()
    assert not tower.backbone.training  # frozen: no batch-norm updates, no stochastic depth
    assert torch.equal(tower(pixels).hidden_states[-1], hidden)
    loss = model(batch["data"], mode="loss")["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    learning = {name.split(".")[0] for name, p in model.named_parameters() if p.grad is not None}
    assert learning == {"projector"}


def train(config: str, work_dir: Path, **settings) -> Path:
    args = ["train", LLAVA_CONFIGS / config, "--work-dir", work_dir]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    assert cli(*args) == 0, f"xtuner train {config} failed"
    return sorted(work_dir.glob("iter_*.pth"), key=lambda p: int(p.stem.split("_")[1]))[-1]


@pytest.mark.slow
def same_question_other_answers(records: list[dict]) -> list[tuple[str, str, str]]:
    """Two (image, question, answer) of the training data that ask the same question of two images
    and get different answers."""
    seen = {}
    for record in records:
        turns = record["conversations"]
        for ask, answer in zip(turns[::2], turns[1::2]):
            question = ask["value"].replace("<image>\n", "")
            first = seen.setdefault(question, (record["image"], answer["value"]))
            if first[1] != answer["value"] and first[0] != record["image"]:
                return [(first[0], question, first[1]), (record["image"], question, answer["value"])]
    raise AssertionError("no question asked of two images with different answers")


def test_two_stages_with_xtuner_train_then_it_answers_about_the_image(tiny_model_dir, easy_vqa, tmp_path, capsys):
    """The tutorial's workflow on a tiny LLM and the real EfficientNet-Lite0: pretrain the projector on
    captions, fine-tune on a question repeated (`vqa repeat`), convert, and ask it again. The same
    question about two images with different answers: each image gets its own answer, so the answer
    comes from the image."""
    data = easy_vqa["image_folder"]
    common = dict(llm=tiny_model_dir, image_size=64, image_folder=data, seed=0)
    stage1 = train("smollm2_135m_efficientnet_lite0_pretrain.py", tmp_path / "stage1", data_path=easy_vqa["captions"],
                   batch_size=3, **common)

    pairs = same_question_other_answers(json.loads(easy_vqa["train"].read_text()))
    records = [{"id": str(i), "image": image, "conversations": [{"from": "human", "value": "<image>\n" + question},
                                                                 {"from": "gpt", "value": answer}]}
               for i, (image, question, answer) in enumerate(pairs)]
    (tmp_path / "two.json").write_text(json.dumps(records))
    assert cli("vqa", "repeat", "-i", tmp_path / "two.json", "-o", tmp_path / "repeated.json", "-n", 48) == 0
    train("smollm2_135m_lora_efficientnet_lite0_finetune.py", tmp_path / "stage2", pretrained_pth=stage1,
          data_path=tmp_path / "repeated.json", batch_size=4, lr=1e-2, warmup_iters=2, max_epochs=6,
          llm_lora_r=8, **common)

    assert cli("vqa", "convert", tmp_path / "stage2", "--out", tmp_path / "hf") == 0
    assert {p.name for p in (tmp_path / "hf").iterdir()} >= {"projector", "llm_adapter", "xtuner_config.py"}
    answers = []
    for image, question, _ in pairs:
        capsys.readouterr()
        assert cli("vqa", "chat", tmp_path / "hf", "--image", data / image, "--prompt", question,
                   "--max-new-tokens", 8) == 0
        answers.append(capsys.readouterr().out.strip())
    assert answers == [answer for _, _, answer in pairs]

    assert cli("vqa", "eval", tmp_path / "hf", "--test", easy_vqa["test"], "--per-type", 2,
               "--out", tmp_path / "report.json") == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["by_type"]) == {"shape", "color", "yes/no"} and report["questions"] == 6
    assert 0.0 <= report["overall"] <= 1.0 and "majority_baseline" in report


@pytest.mark.slow
def test_tutorial_internlm2_clip_configs_build_and_train(tiny_model_dir, tiny_clip, easy_vqa, tmp_path, capsys):
    """The tutorial pair (InternLM2-Chat + CLIP, QLoRA + LoRA) with stand-in weights of a small shape;
    on a CPU without 4-bit kernels the LLM is LoRA-tuned in float32 instead of QLoRA."""
    from xtuner_assistant.models.stand_ins import random_internlm2_chat

    internlm2 = random_internlm2_chat(tmp_path / "internlm2", tiny_model_dir, real_shape=False)
    common = dict(llm=internlm2, visual_encoder=tiny_clip, image_folder=easy_vqa["image_folder"], dtype="float32",
                  batch_size=4, max_length=512)
    stage1 = train("internlm2_chat_1_8b_clip_vit_large_p14_336_pretrain.py", tmp_path / "stage1",
                   data_path=easy_vqa["captions"], **common)
    train("internlm2_chat_1_8b_qlora_clip_vit_large_p14_336_lora_finetune.py", tmp_path / "stage2",
          pretrained_pth=stage1, data_path=easy_vqa["train"], quantize_4bit="false", llm_lora_r=8, llm_lora_alpha=16,
          encoder_lora_r=4, **common)
    assert cli("vqa", "convert", tmp_path / "stage2", "--out", tmp_path / "hf") == 0
    capsys.readouterr()
    image = easy_vqa["image_folder"] / json.loads(easy_vqa["test"].read_text())[0]["image"]
    assert cli("vqa", "chat", tmp_path / "hf", "--image", image, "--prompt", "what shape is in the image?",
               "--max-new-tokens", 4) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_a_llava_record_holding_a_template_marker_is_named_by_record(tokenizer, tmp_path):
    from xtuner_assistant.llava.dataset import ChatTemplateLLaVADataset, LLaVADataError

    path = tmp_path / "llava.json"
    path.write_text(json.dumps([{"image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat shape is it?"}, {"from": "gpt", "value": "A circle<|im_end|>"}]}]))
    with pytest.raises(LLaVADataError, match=r"llava.json record 0: the assistant message 2 contains '<\|im_end\|>'"):
        ChatTemplateLLaVADataset(str(path), str(tmp_path), tokenizer, image_processor=None)
