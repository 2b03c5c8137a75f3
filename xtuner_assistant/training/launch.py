"""`python -m xtuner_assistant.training.launch TOOL.py ARGS...` runs one of XTuner's tool scripts as
`python TOOL.py ARGS...` would, after `import xtuner_assistant`: compat.py's fixes are then in place
before XTuner imports anything (its own tools import bitsandbytes and probe bf16 before they read the
config that imports us)."""
import os
import runpy
import sys

from xtuner_assistant import compat  # importing the package applies compat.py

if __name__ == "__main__":
    compat.trusted_local_checkpoints()  # XTuner's tools load mmengine's runner anyway
    tool = os.path.abspath(sys.argv[1])
    sys.argv = [tool, *sys.argv[2:]]
    sys.path[0] = os.path.dirname(tool)  # as `python TOOL.py` sets it
    runpy.run_path(tool, run_name="__main__")
