"""xtuner-assistant as a user installs it: the wheel (`pip wheel --no-deps`) installed into a fresh
virtual environment that has the pinned dependencies but not the source tree, used from a folder
outside the repository. The shipped configs and the web page travel inside the wheel; the user lists
and copies configs, lists models, makes identity data, trains the tests' tiny model with a shipped
config by path, asks for the web page's help, and runs stock `xtuner train` on the copied config."""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(command, cwd, env, timeout=300):
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{command} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the fresh environment's bin folder, an environment for its commands)."""
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy, so that setuptools' build/ and egg-info stay out of the source tree.
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                                                 "__pycache__", ".pytest_cache", "test-artifacts",
                                                                 "work_dirs"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", root / "dist",
         source], cwd=root, env=os.environ)
    wheel = next((root / "dist").glob("xtuner_assistant-*.whl"))
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root, env=os.environ)
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    # The pinned dependencies, without installing them again: this environment's site-packages as a
    # plain path. Its .pth files (the editable install of the source tree among them) are not read.
    (site / "pinned_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-deps",
         "--no-index", wheel], cwd=root, env=os.environ)
    # The `xtuner` command pip would have written had it installed xtuner into this environment.
    xtuner = venv / "bin" / "xtuner"
    xtuner.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom xtuner import cli\n"
                      "if __name__ == '__main__':\n    sys.exit(cli())\n")
    xtuner.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="2")
    return venv / "bin", env


@pytest.mark.slow
def test_the_wheel_works_from_a_folder_outside_the_repository(installed, tmp_path, tiny_model_dir):
    bin_dir, env = installed
    xa = bin_dir / "xtuner-assistant"
    here = tmp_path / "elsewhere"
    here.mkdir()

    where = run([bin_dir / "python", "-c", "import xtuner_assistant, sys; print(xtuner_assistant.__file__); "
                 "print(sys.prefix)"], here, env).stdout.split()
    assert where[0].startswith(str(bin_dir.parent)) and not where[0].startswith(str(REPO)), where

    listed = run([xa, "config", "list"], here, env).stdout
    assert "smollm2_135m_lora_cpu_assistant" in listed and "smollm2_135m_efficientnet_lite0_pretrain" in listed
    run([xa, "config", "copy", "smollm2_135m_lora_cpu_assistant", "."], here, env)
    assert (here / "smollm2_135m_lora_cpu_assistant_copy.py").is_file() and (here / "_base_" / "runtime.py").is_file()
    assert "smollm2-135m" in run([xa, "model", "list"], here, env).stdout
    run([xa, "data", "identity", "--name", "Zorblat", "-n", "8", "--out", "data"], here, env)
    assert len((here / "data" / "identity.jsonl").read_text(encoding="utf-8").splitlines()) == 8
    assert "usage: xtuner-assistant web" in run([xa, "web", "--help"], here, env).stdout

    shipped = run([bin_dir / "python", "-c", "from xtuner_assistant.paths import shipped; print(shipped('configs'))"],
                  here, env).stdout.strip()
    assert shipped.startswith(str(bin_dir.parent)), shipped
    settings = ["--set", "identity_file=data/identity.jsonl", "--set", "general_ratio=0", "--set", "batch_size=4",
                "--set", "max_epochs=1", "--set", "save_steps=2"]
    trained = run([xa, "train", Path(shipped) / "smollm2_135m_lora_cpu_assistant.py", "--model", tiny_model_dir,
                   "--work-dir", "by-path", *settings], here, env)
    assert (here / "by-path" / "iter_2.pth").is_file()
    assert "compiled without GPU support" not in trained.stdout + trained.stderr

    # Stock `xtuner train` on the copied config, in the activated environment: it exits 0 even when
    # training fails, so the proof is the checkpoint.
    stock_env = dict(env, XA_MODEL=str(tiny_model_dir), XA_IDENTITY_FILE="data/identity.jsonl", XA_GENERAL_RATIO="0",
                     XA_BATCH_SIZE="4", XA_MAX_EPOCHS="1", XA_SAVE_STEPS="2")
    run([bin_dir / "xtuner", "train", "smollm2_135m_lora_cpu_assistant_copy.py", "--work-dir", "stock"], here, stock_env)
    assert (here / "stock" / "iter_2.pth").is_file()
