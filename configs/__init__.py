"""The shipped training configs: mmengine/XTuner config files, read by `xtuner train`, not modules to
import. They ship inside the package as `xtuner_assistant.configs` (see pyproject.toml), so
`xtuner-assistant config list` and `config copy` find them in any installation."""
