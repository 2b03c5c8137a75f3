"""LLaVA, an LLM that sees: the LLaVA JSON dataset in the chat template (dataset), config builders
(recipe), EfficientNet-Lite0 as vision encoder (vision_encoder), easy-VQA data (easy_vqa), accuracy
by question type (vqa_eval), a converted model loaded and answering (model), and the user's images
(image_chat)."""
