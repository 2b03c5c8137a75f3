# Runtime shared by the LLaVA configs: the package-wide runtime, plus this package's LLaVA parts.
_base_ = ["../../_base_/runtime.py"]  # first statement: tells mmengine this is a plain (non-lazy) config
custom_imports = dict(imports=["xtuner_assistant", "xtuner_assistant.llava.vision_encoder",
                               "xtuner_assistant.llava.dataset"], allow_failed_imports=False)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(max_keep_ckpts=2))
