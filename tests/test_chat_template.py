"""The chat-template contract: training labels are exactly the assistant turns as inference sees them."""
from xtuner_assistant.chat_template import (IGNORE_INDEX, encode_conversation, end_of_turn_token_ids,
                                            generation_prompt_ids)


def labelled_text(tokenizer, encoded):
    return tokenizer.decode([t for t in encoded["labels"] if t != IGNORE_INDEX])


def test_labels_cover_assistant_turns_and_end_marker_only(tokenizer):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello there"},
                {"role": "user", "content": "你是谁"}, {"role": "assistant", "content": "我是助手"}]
    encoded = encode_conversation(tokenizer, messages, max_length=1000)
    assert len(encoded["input_ids"]) == len(encoded["labels"])
    assert labelled_text(tokenizer, encoded) == "Hello there<|im_end|>\n我是助手<|im_end|>\n"
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(encoded["input_ids"]) == full


def test_training_prefix_equals_inference_prompt(tokenizer):
    messages = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "Bot."}]
    encoded = encode_conversation(tokenizer, messages, max_length=1000)
    prompt = generation_prompt_ids(tokenizer, messages[:1])
    assert encoded["input_ids"][:len(prompt)] == prompt
    assert all(label == IGNORE_INDEX for label in encoded["labels"][:len(prompt)])


def test_end_of_turn_is_the_template_marker(tokenizer):
    assert end_of_turn_token_ids(tokenizer)[0] == tokenizer.convert_tokens_to_ids("<|im_end|>")
