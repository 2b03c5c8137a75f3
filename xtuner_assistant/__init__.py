"""xtuner-assistant: give a small chat model its own identity with XTuner, without collapse.

Importing the package applies the compatibility fixes and registers our components with mmengine's
registries, so a config needs only `custom_imports = dict(imports=['xtuner_assistant'])`.
"""
from xtuner_assistant import compat

compat.apply()

__version__ = "0.1.0"


def register_components() -> None:
    # Imported for their @register_module side effects.
    from xtuner_assistant import identity, mixing  # noqa: F401
    from xtuner_assistant import hooks  # noqa: F401


register_components()
