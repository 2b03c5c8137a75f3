"""Registered mmengine hooks (imported by xtuner_assistant.register_components)."""
from xtuner_assistant.hooks.collapse import IdentityEvalHook  # noqa: F401
