"""The module names of the flat layout (before the sub-packages), still resolving to their modules.

`xtuner train` dumps the resolved config into the work dir, and `vqa convert` copies it into a LLaVA
folder; those files name our components by dotted path (e.g. `xtuner_assistant.packing.PackedChatDataset`)
and list modules in `custom_imports`. So that work dirs and converted models made before the move
still convert and load, importing an old name gives the module that now holds its components.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

OLD_TO_NEW = {
    "xtuner_assistant.packing": "xtuner_assistant.data.packing",
    "xtuner_assistant.packed_finetune": "xtuner_assistant.training.packed_finetune",
    "xtuner_assistant.vision_encoder": "xtuner_assistant.llava.vision_encoder",
    "xtuner_assistant.llava_dataset": "xtuner_assistant.llava.dataset",
}


class OldNameFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in OLD_TO_NEW else None

    def create_module(self, spec):
        return importlib.import_module(OLD_TO_NEW[spec.name])

    def exec_module(self, module):
        pass  # the module under its new name is already imported


def install() -> None:
    if not any(isinstance(finder, OldNameFinder) for finder in sys.meta_path):
        sys.meta_path.append(OldNameFinder())
