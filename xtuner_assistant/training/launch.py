"""`python -m xtuner_assistant.training.launch TOOL.py ARGS...` runs one of XTuner's tool scripts as
`python TOOL.py ARGS...` would, after `import xtuner_assistant`: compat.py's fixes are then in place
before XTuner imports anything (its own tools import bitsandbytes and probe bf16 before they read the
config that imports us).

Our own errors are about the user's input (a setting, a data file, a model folder, a replay that found
no usable answer), also when a config raises them while XTuner loads it: they end the tool with one
line and exit status 2, as the `xtuner-assistant` commands do. Anything else keeps its traceback."""
import os
import runpy
import sys

from xtuner_assistant import compat  # importing the package applies compat.py


def is_input_error(error: BaseException) -> bool:
    return isinstance(error, Exception) and type(error).__module__.startswith("xtuner_assistant.")


def main() -> None:
    compat.trusted_local_checkpoints()  # XTuner's tools load mmengine's runner anyway
    tool = os.path.abspath(sys.argv[1])
    sys.argv = [tool, *sys.argv[2:]]
    sys.path[0] = os.path.dirname(tool)  # as `python TOOL.py` sets it
    try:
        runpy.run_path(tool, run_name="__main__")
    except Exception as error:
        if not is_input_error(error):
            raise
        print(f"{os.path.splitext(os.path.basename(tool))[0]}: {error}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
