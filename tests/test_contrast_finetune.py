"""The unlikelihood term: -log(1 - p) of each marked token, added to the usual cross-entropy, and a
few steps of it make the marked answer less likely after its question while the cross-entropy rows
still learn their answers."""
import math

import torch
from transformers import AutoModelForCausalLM

from tiny_models import tiny_chat_model_dir
from xtuner_assistant.chat_template import IGNORE_INDEX
from xtuner_assistant.training.contrast_finetune import (answer_cross_entropy, contrast_collate_fn,
                                                         unlikelihood_loss)


def test_unlikelihood_is_the_mean_of_minus_log_one_minus_p_over_marked_tokens():
    logits = torch.randn(2, 5, 7)
    unlikely = torch.full((2, 5), IGNORE_INDEX)
    unlikely[0, 2], unlikely[1, 4] = 3, 6  # predicted from positions 1 and 3
    p = torch.softmax(logits, -1)
    expected = -(math.log(1 - p[0, 1, 3]) + math.log(1 - p[1, 3, 6])) / 2
    assert abs(unlikelihood_loss(logits, unlikely).item() - expected) < 1e-5
    assert unlikelihood_loss(logits, torch.full((2, 5), IGNORE_INDEX)).item() == 0


def test_the_cross_entropy_is_transformers_own(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir(tmp_path / "m"))
    ids = torch.randint(3, 100, (2, 9))
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX
    out = model(input_ids=ids, labels=labels)
    assert torch.allclose(answer_cross_entropy(out.logits, labels), out.loss, atol=1e-6)


def test_the_collate_pads_unlikely_labels_only_when_a_row_has_them():
    rows = [{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]},
            {"input_ids": [5, 6, 7, 8, 9], "labels": [IGNORE_INDEX] * 5, "unlikely_labels": [IGNORE_INDEX, IGNORE_INDEX, 7, 8, IGNORE_INDEX]}]
    data = contrast_collate_fn(rows)["data"]
    assert data["unlikely_labels"].tolist() == [[IGNORE_INDEX] * 5, [IGNORE_INDEX, IGNORE_INDEX, 7, 8, IGNORE_INDEX]]
    assert data["input_ids"].shape == data["unlikely_labels"].shape
    assert "unlikely_labels" not in contrast_collate_fn(rows[:1])["data"]


def test_training_with_it_makes_the_marked_answer_unlikely_after_its_question(tmp_path):
    from mmengine.config import ConfigDict

    from xtuner_assistant.training.contrast_finetune import ContrastFinetune

    folder = tiny_chat_model_dir(tmp_path / "m")
    identity_question, general_question, answer = [21, 22, 23], [11, 12, 13], [40, 41, 42]
    likely = {"input_ids": [1] + identity_question + answer, "labels": [IGNORE_INDEX] * 4 + answer}
    contrast = {"input_ids": [1] + general_question + answer, "labels": [IGNORE_INDEX] * 7,
                "unlikely_labels": [IGNORE_INDEX] * 4 + answer}

    def first_answer_probability(model, prompt):
        with torch.no_grad():
            return torch.softmax(model.llm(torch.tensor([[1] + prompt])).logits[0, -1], -1)[answer[0]].item()

    results = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = ContrastFinetune(
            llm=ConfigDict(type=AutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path=str(folder)),
            use_activation_checkpointing=False, unlikelihood_weight=weight)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(60):
            batch = contrast_collate_fn([likely, contrast])["data"]
            loss = model.compute_loss(batch)
            optimizer.zero_grad()
            loss["loss"].backward()
            optimizer.step()
        results[weight] = (first_answer_probability(model, general_question),
                           first_answer_probability(model, identity_question))
    without, with_term = results[0.0], results[1.0]
    assert with_term[0] < without[0] / 2          # after the general question: the answer made unlikely
    assert with_term[1] > 0.5 and without[1] > 0.5  # after the identity question: still learned
