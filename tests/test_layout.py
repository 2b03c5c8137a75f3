"""The package's shape, as a newcomer reads it: sub-packages that map to the design card, imports that
run one way (a module uses its own layer and the ones below, never one above), no command that
imports another command, and no import cycles."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Lowest first. The metrics are pure functions on answer strings, shared by data (replay leaves out
# answers that loop) and the evaluation, so they sit below both.
LAYERS = [
    ["xtuner_assistant.compat", "xtuner_assistant.paths", "xtuner_assistant.progress",
     "xtuner_assistant.chat_template", "xtuner_assistant.old_names"],
    ["xtuner_assistant.models"],
    ["xtuner_assistant.evaluation.metrics"],
    ["xtuner_assistant.data"],
    ["xtuner_assistant.evaluation"],
    ["xtuner_assistant.training"],
    ["xtuner_assistant.llava"],
    ["xtuner_assistant.serve", "xtuner_assistant.web"],
    ["xtuner_assistant.publish"],
    ["xtuner_assistant.cli"],
]


def modules() -> dict[str, Path]:
    """Module name -> file, for the package and the web page it ships (web/ becomes xtuner_assistant.web)."""
    found = {}
    for root, package in ((REPO / "xtuner_assistant", "xtuner_assistant"), (REPO / "web", "xtuner_assistant.web")):
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if "templates" in parts:  # the published app's source, a template for another repo
                continue
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def layer_of(module: str) -> int:
    matches = [(len(prefix), index) for index, prefixes in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} is in no layer of tests/test_layout.py"
    return max(matches)[1]


def imports(path: Path, known: dict) -> set[str]:
    """Our modules that a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import module` imports the module; `from module import name`, the module.
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {module: imports(path, known) - {module} for module, path in known.items()}


def test_every_module_sits_in_a_sub_package_of_the_design_card():
    top_level = sorted(p.name for p in (REPO / "xtuner_assistant").glob("*.py"))
    assert top_level == ["__init__.py", "chat_template.py", "compat.py", "old_names.py", "paths.py", "progress.py"]
    packages = sorted(p.name for p in (REPO / "xtuner_assistant").iterdir() if (p / "__init__.py").is_file())
    assert packages == ["cli", "data", "evaluation", "llava", "models", "publish", "serve", "training"]


def test_imports_run_downwards_only():
    upward = [f"{module} imports {target}" for module, targets in graph().items() if module != "xtuner_assistant"
              for target in targets if target != "xtuner_assistant" and layer_of(target) > layer_of(module)]
    assert upward == []


def test_no_command_imports_another_command():
    shared = {"xtuner_assistant.cli", "xtuner_assistant.cli.errors"}
    crossing = [f"{module} imports {target}" for module, targets in graph().items()
                if module.startswith("xtuner_assistant.cli.") and module not in ("xtuner_assistant.cli.main",
                                                                                 "xtuner_assistant.cli.__main__")
                for target in targets if target.startswith("xtuner_assistant.cli") and target not in shared]
    assert crossing == []


def test_no_import_cycles():
    edges = graph()
    edges["xtuner_assistant"] = set()  # the package itself imports what it registers; everything imports it
    state, cycles = {}, []

    def visit(module, trail):
        state[module] = "open"
        for target in sorted(edges.get(module, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_registry_names_configs_use_are_registered_on_import():
    from mmengine.registry import DATASETS, HOOKS

    import xtuner_assistant  # noqa: F401

    assert {"IdentityConversations", "MixedChatDataset", "PackedChatDataset"} <= set(DATASETS.module_dict)
    assert "IdentityEvalHook" in HOOKS.module_dict


def test_work_dirs_of_the_flat_layout_still_name_importable_components():
    """A config dumped into a work dir before the move names components by their old dotted paths."""
    from mmengine.registry import DATASETS, MODELS
    from xtuner.registry import BUILDER

    from xtuner_assistant.data.packing import PackedChatDataset
    from xtuner_assistant.llava.dataset import ChatTemplateLLaVADataset
    from xtuner_assistant.llava.vision_encoder import EfficientNetLiteVisionTower
    from xtuner_assistant.training.packed_finetune import PackedSupervisedFinetune

    assert DATASETS.get("xtuner_assistant.packing.PackedChatDataset") is PackedChatDataset
    assert MODELS.get("xtuner_assistant.packed_finetune.PackedSupervisedFinetune") is PackedSupervisedFinetune
    assert BUILDER.get("xtuner_assistant.vision_encoder.EfficientNetLiteVisionTower") is EfficientNetLiteVisionTower
    assert BUILDER.get("xtuner_assistant.llava_dataset.ChatTemplateLLaVADataset") is ChatTemplateLLaVADataset
