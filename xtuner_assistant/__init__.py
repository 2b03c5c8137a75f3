"""xtuner-assistant: give a small chat model its own identity with XTuner, without collapse.

Importing the package applies the compatibility fixes (compat.py) and registers our components with
mmengine's registries, so a config needs only `custom_imports = dict(imports=['xtuner_assistant'])`.

The sub-packages, lowest first (a module imports only from its own layer or the ones below):
  compat, paths, progress, chat_template   the ground floor: no heavy imports
  models/      the packaged models, fetching them, loading and answering
  data/        identity data, general data, replay, the mixed dataset, packing
  evaluation/  metrics, the identity evaluation, the training hook, plots
  training/    settings and config builders, packed fine-tuning, XTuner's tools, convert/merge
  llava/       LLaVA: data, config builders, vision encoder, easy-VQA, VQA scoring, answering about images
  serve/       the terminal chat and the web page
  publish/     the model repo and its app
  cli/         `xtuner-assistant VERB`, one module per verb
"""
from xtuner_assistant import compat, old_names

compat.apply()
old_names.install()

__version__ = "0.1.0"


def register_components() -> None:
    # Imported for their @register_module side effects: IdentityConversations, MixedChatDataset,
    # PackedChatDataset (DATASETS), IdentityEvalHook, EmbeddingNoiseHook, BackgroundCheckpointHook and
    # GraphShapeFromDataHook (HOOKS).
    from xtuner_assistant.data import identity, mixed, packing  # noqa: F401
    from xtuner_assistant.evaluation import hook  # noqa: F401
    from xtuner_assistant.training import checkpoint_writer, embedding_noise, graphed_step  # noqa: F401


register_components()
