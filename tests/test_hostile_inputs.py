"""A hostile new user's hour, through the real command line: each case is its own process running
`xtuner-assistant`'s entry point (`cli.main.main`) with the case's arguments, working directory and
environment. Starting Python and importing torch costs about 4 s a process, so the table's cases are
forked from one process that has imported the package once (CommandServer); a test checks that a
fork and a fresh `python -m xtuner_assistant.cli` give the same result, and the cases that depend on
how Python starts (the locale, a mount namespace) start fresh processes.

Every case below must fail the same way: exit status 2, ONE line on stderr that names the file,
field or setting and what to do, no traceback, no secret in any output, and every file that was
there before unchanged (compared by hash). The cases are grouped by the class of mistake they
stand for (docs/robustness.md keeps the count); a new case of a class is one more row.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "smollm2_135m_lora_cpu_assistant.py"
CLI = [sys.executable, "-m", "xtuner_assistant.cli"]
SECRET = "xa-FAKE-SECRET-hostile-5d1e9b"
GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def cli(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "XA_GIT_TOKEN": SECRET, "OPENXLAB_AK": SECRET, "OPENXLAB_SK": SECRET,
                   "OMP_NUM_THREADS": "2", **(env or {})}
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=environment)


SERVER = r"""
import json, os, sys, traceback
from xtuner_assistant.cli.main import main

for line in sys.stdin:
    case = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(case["cwd"])
            os.environ.clear()
            os.environ.update(case["env"])
            for fd, name in ((1, "stdout"), (2, "stderr")):
                os.dup2(os.open(case[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
            sys.stderr = open(2, "w", encoding="utf-8", closefd=False)
            code = main(case["argv"])
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
"""


class CommandServer:
    """One process that imports xtuner_assistant once and forks a child per command line."""

    def __enter__(self):
        self.captured = Path(tempfile.mkdtemp(prefix="xa-cases-"))
        self.process = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
        return self

    def run(self, *args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
        environment = {**os.environ, "XA_GIT_TOKEN": SECRET, "OPENXLAB_AK": SECRET, "OPENXLAB_SK": SECRET,
                       "OMP_NUM_THREADS": "2", **(env or {})}
        out, err = self.captured / "stdout", self.captured / "stderr"
        request = {"argv": list(map(str, args)), "cwd": str(cwd), "env": environment, "stdout": str(out), "stderr": str(err)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        status = json.loads(self.process.stdout.readline())
        result = subprocess.CompletedProcess(args, status, out.read_text(encoding="utf-8", errors="replace"),
                                             err.read_text(encoding="utf-8", errors="replace"))
        return result

    def __exit__(self, *exc):
        self.process.stdin.close()
        self.process.wait(timeout=60)
        shutil.rmtree(self.captured, ignore_errors=True)


def tree(folder: Path) -> dict:
    """Every file and link under `folder`: its hash and mode, so a changed, added or removed one shows."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        if path.is_symlink():
            found[key] = f"link -> {os.readlink(path)}"
        elif path.is_file():
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest() + f" {path.stat().st_mode:o}"
        else:
            found[key] = f"folder {path.stat().st_mode:o}"
    return found


def assert_refused(result: subprocess.CompletedProcess, *named: str) -> str:
    output = result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, f"exit status {result.returncode}:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    for text in named:
        assert text in lines[0], f"{text!r} not in: {lines[0]}"
    assert SECRET not in output
    return lines[0]


# ----------------------------------------------------------------------------- the world a case starts from
@pytest.fixture(scope="module")
def adapter_source(tiny_model_dir, tmp_path_factory) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    folder = tmp_path_factory.mktemp("hostile-adapter") / "adapter"
    model.save_pretrained(folder)
    return folder


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records),
                    encoding="utf-8")
    return path


def make_world(tmp_path: Path, tiny_model_dir: Path, adapter_source: Path) -> Path:
    """A user's folder: a model, an adapter of it, a work dir, data, and things they care about."""
    shutil.copytree(tiny_model_dir, tmp_path / "models" / "base")
    shutil.copytree(adapter_source, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "models" / "base")
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    (tmp_path / "work").mkdir()
    # As `xtuner train` dumps it: every setting resolved, and the work dir it ran in.
    (tmp_path / "work" / "assistant.py").write_text(f"model_path = {str(tmp_path / 'models' / 'base')!r}\nname = 'Zorblat'\n"
                                                   f"work_dir = {str(tmp_path / 'work')!r}\n")
    (tmp_path / "work" / "iter_2.pth").write_bytes(b"PK\x03\x04 not a whole checkpoint")
    (tmp_path / "work" / "20260101_000000.log").write_text("the training log\n")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("years of notes\n")
    (tmp_path / "precious" / "photo.jpg").write_bytes(os.urandom(64))
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    write_jsonl(tmp_path / "data" / "good.jsonl", [GOOD])
    return tmp_path


@pytest.fixture
def world(tmp_path, tiny_model_dir, adapter_source) -> Path:
    return make_world(tmp_path, tiny_model_dir, adapter_source)


def write_file(relative: str, content):
    """A set-up step: write `content` (text or bytes) at `relative` in the world."""
    def write(world: Path) -> None:
        path = world / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return write


def damaged_model(damage):
    """A set-up step: a copy of the base model at `damaged/`, then `damage(folder)`."""
    def make(world: Path) -> None:
        shutil.copytree(world / "models" / "base", world / "damaged")
        damage(world / "damaged")
    return make


def truncated(name: str, keep: int):
    def cut(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[:keep if keep >= 0 else len(data) + keep])
    return cut


def without_chat_template(folder: Path) -> None:
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def adapter_without_weights(world: Path) -> None:
    shutil.copytree(world / "adapter", world / "empty_adapter")
    (world / "empty_adapter" / "adapter_model.safetensors").unlink()


def adapter_of_a_gone_base(world: Path) -> None:
    config = json.loads((world / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(world / "gone")
    (world / "adapter" / "adapter_config.json").write_text(json.dumps(config))


def jsonl(*records) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def huge_line(world: Path) -> None:
    with open(world / "data" / "huge.jsonl", "w") as f:
        f.write('{"messages": [{"role": "user", "content": "' + "x" * 50_000_000 + '"}]}\n')


LFS_POINTER = f"version https://git-lfs.github.com/spec/v1\noid sha256:{'0' * 64}\nsize 1234567\n"
USER = "user"
TRAIN = ["train", CONFIG, "--model", "models/base"]
DRY_PUBLISH = ["--repo", "alice/zorblat", "--model-only", "--dry-run"]

# (case, set-up or None, command line, texts the one line on stderr must hold). {cache}: the model cache.
CASES = [
    # -- data loss: an output never replaces what xtuner-assistant did not write, an input, or the cache
    ("merge --out a folder of the user's", None, ["merge", "adapter", "--out", "precious"],
     ["precious", "did not write", "notes.txt", "--force"]),
    ("merge --out the base model", None, ["merge", "adapter", "--base", "models/base", "--out", "models/base"],
     ["models/base", "is an input"]),
    ("merge --out the base model, with --force", None, ["merge", "adapter", "--out", "models/base", "--force"],
     ["models/base", "is an input"]),
    ("merge --out the folder holding the base model, with --force", None, ["merge", "adapter", "--out", "models", "--force"],
     ["holds an input"]),
    ("merge --out the adapter itself, with --force", None, ["merge", "adapter", "--out", "adapter", "--force"],
     ["is an input"]),
    ("merge --out inside the model cache, with --force", None,
     ["merge", "adapter", "--out", "{cache}/smollm2-135m", "--force"], ["model cache"]),
    ("merge --out a file", None, ["merge", "adapter", "--out", "notes.txt"], ["notes.txt", "is a file"]),
    ("convert --out the work dir", None, ["convert", "work", "--out", "work"], ["work", "is an input"]),
    ("convert --out the work dir, with --force", None, ["convert", "work", "--out", "work", "--force"], ["is an input"]),
    ("convert --out the base model its config names, with --force", None,
     ["convert", "work", "--out", "models/base", "--force"], ["is an input"]),
    ("convert --out a folder of the user's", None, ["convert", "work", "--out", "precious"], ["did not write", "--force"]),
    ("convert --out a file", None, ["convert", "work", "--out", "notes.txt"], ["notes.txt", "is a file"]),
    ("config copy over an edited copy", write_file("cfg/smollm2_135m_lora_cpu_assistant_copy.py", "lr = 5e-5  # mine\n"),
     ["config", "copy", "smollm2_135m_lora_cpu_assistant", "cfg"], ["smollm2_135m_lora_cpu_assistant_copy.py", "--force"]),
    ("config copy into a file", None, ["config", "copy", "smollm2_135m_lora_cpu_assistant", "notes.txt"],
     ["notes.txt", "is a file"]),
    ("data identity over the user's own identity.jsonl", write_file("mine/identity.jsonl", jsonl(GOOD)),
     ["data", "identity", "--name", "Zorblat", "--out", "mine"], ["mine/identity.jsonl", "--force"]),
    ("data identity --out a file", None, ["data", "identity", "--name", "Zorblat", "--out", "notes.txt"],
     ["notes.txt", "is a file"]),
    ("data repeat onto its own input", write_file("data/llava.json", "[]"),
     ["data", "repeat", "-i", "data/llava.json", "-o", "data/llava.json"], ["is the input file"]),
    ("data repeat over a file of the user's", write_file("data/llava.json", "[]"),
     ["data", "repeat", "-i", "data/llava.json", "-o", "notes.txt"], ["notes.txt", "--force"]),
    ("eval --out over the user's report", write_file("precious_report/report.json", '{"mine": true}'),
     ["eval", "models/base", "--name", "Zorblat", "--out", "precious_report"], ["precious_report/report.json", "--force"]),
    # -- wrong results that looked like success: a model that would not load back is never published
    ("publish truncated safetensors (dry run)", damaged_model(truncated("model.safetensors", -100)),
     ["publish", "damaged", *DRY_PUBLISH], ["damaged/model.safetensors", "truncated", "nothing was pushed"]),
    ("publish an unparsable config.json (dry run)", damaged_model(lambda f: (f / "config.json").write_text("{'a': b}")),
     ["publish", "damaged", *DRY_PUBLISH], ["damaged/config.json:1", "not valid JSON"]),
    ("publish a Git LFS pointer as weights (dry run)",
     damaged_model(lambda f: (f / "model.safetensors").write_text(LFS_POINTER)),
     ["publish", "damaged", *DRY_PUBLISH], ["damaged/model.safetensors", "Git LFS pointer", "git lfs pull"]),
    ("publish a model without a chat template (dry run)", damaged_model(without_chat_template),
     ["publish", "damaged", *DRY_PUBLISH], ["tokenizer_config.json", "chat_template"]),
    ("publish an adapter folder", None, ["publish", "adapter", *DRY_PUBLISH], ["LoRA adapter", "merge it first"]),
    ("publish with a token in the repository URL", None,
     ["publish", "models/base", "--repo", f"https://alice:{SECRET}@example.org/a/b.git", "--model-only", "--dry-run"],
     ["XA_GIT_TOKEN"]),
    # -- general data: every way a file can be wrong names the file (and line) and what to do
    ("general data: an empty file", write_file("data/empty.jsonl", b""),
     [*TRAIN, "--set", "general=data/empty.jsonl"], ["data/empty.jsonl", "empty"]),
    ("general data: a binary file", write_file("data/binary.jsonl", bytes(range(256)) * 8),
     [*TRAIN, "--set", "general=data/binary.jsonl"], ["data/binary.jsonl:1", "binary"]),
    ("general data: a Latin-1 file", write_file("data/latin1.jsonl", jsonl(GOOD).replace("hello", "café").encode("latin-1")),
     [*TRAIN, "--set", "general=data/latin1.jsonl"], ["data/latin1.jsonl:1", "not UTF-8", "iconv"]),
    ("general data: deeply nested JSON", write_file("data/nested.json", "[" * 100_000 + "]" * 100_000),
     [*TRAIN, "--set", "general=data/nested.json"], ["data/nested.json", "nested too deeply"]),
    ("general data: one 50 MB line", huge_line, [*TRAIN, "--set", "general=data/huge.jsonl"],
     ["data/huge.jsonl:1", "1,000,000 characters"]),
    ("general data: an object, not a list", write_file("data/object.json", json.dumps(GOOD)),
     [*TRAIN, "--set", "general=data/object.json"], ["data/object.json", "JSON list"]),
    ("general data: no conversations", write_file("data/none.json", "[]"),
     [*TRAIN, "--set", "general=data/none.json"], ["data/none.json", "no conversations"]),
    ("general data: a missing file among several", None, [*TRAIN, "--set", "general=data/good.jsonl,data/gone.jsonl"],
     ["data/gone.jsonl"]),
    ("general data: an unknown packaged source", None, [*TRAIN, "--set", "general=packaged:nope"],
     ["packaged:nope", "packaged:chatterbot"]),
    ("general data: the first message is the assistant's",
     write_file("data/first.jsonl", jsonl(GOOD, {"messages": [{"role": "assistant", "content": "Hi!"},
                                                              {"role": "user", "content": "Who are you?"},
                                                              {"role": "assistant", "content": "A bot."}]})),
     [*TRAIN, "--set", "general=data/first.jsonl"], ["data/first.jsonl:2", "messages[0].role", "starts with the user"]),
    ("general data: two user turns in a row",
     write_file("data/twice.jsonl", jsonl({"messages": [{"role": USER, "content": "a"}, {"role": USER, "content": "b"},
                                                        {"role": "assistant", "content": "c"}]})),
     [*TRAIN, "--set", "general=data/twice.jsonl"], ["data/twice.jsonl:1", "messages[1].role"]),
    ("general data: a system message in the middle of a .json list",
     write_file("data/system.json", json.dumps([GOOD, {"messages": [
         {"role": USER, "content": "a"}, {"role": "system", "content": "b"}, {"role": "assistant", "content": "c"}]}],
         indent=1)),
     [*TRAIN, "--set", "general=data/system.json"], ["data/system.json:14", "messages[1].role"]),
    ("identity file: not JSON lines", write_file("data/identity.jsonl", '{"messages": [\n'),
     [*TRAIN, "--set", "identity_file=data/identity.jsonl"], ["data/identity.jsonl:1", "not valid JSON"]),
    # -- settings, names, counts
    ("--set lr=abc", None, [*TRAIN, "--set", "lr=abc"], ["--set lr=abc", "a number"]),
    ("--set max_epochs=1.5", None, [*TRAIN, "--set", "max_epochs=1.5"], ["max_epochs", "a whole number"]),
    ("--set a misspelt setting", None, [*TRAIN, "--set", "nmae=Bob"], ["nmae", "did you mean `name`"]),
    ("--set lora_r=-1", None, [*TRAIN, "--set", "lora_r=-1"], ["--set lora_r=-1", "at least 1"]),
    ("--set batch_size=0", None, [*TRAIN, "--set", "batch_size=0"], ["--set batch_size=0", "at least 1"]),
    ("--set lr=0", None, [*TRAIN, "--set", "lr=0"], ["--set lr=0", "above 0"]),
    ("--set general_turn_share=1.5", None, [*TRAIN, "--set", "general_turn_share=1.5"], ["from 0 to 1"]),
    ("--set dtype=float64", None, ["train", REPO / "configs" / "qwen2_5_0_5b_qlora_assistant.py", "--model", "models/base",
                                   "--set", "dtype=float64"], ["--set dtype=float64", "bfloat16, float16, float32"]),
    ("--set cuda_graph=maybe", None, ["train", REPO / "configs" / "qwen2_5_0_5b_qlora_assistant.py", "--model",
                                      "models/base", "--set", "cuda_graph=maybe"], ["cuda_graph=maybe", "auto, true or false"]),
    ("--set identity_samples=100000000", None, [*TRAIN, "--set", "identity_samples=100000000"], ["100,000"]),
    ("data identity -n 100000000", None, ["data", "identity", "--name", "Zorblat", "-n", "100000000", "--out", "ids"],
     ["100,000"]),
    ("data identity with a control character in the name", None,
     ["data", "identity", "--name", "Zorb\x07lat", "--out", "ids"], ["--name", "U+0007"]),
    # -- template injection: text that holds the chat template's own markers
    ("data identity with a turn marker in the name", None,
     ["data", "identity", "--name", "Zorb<|im_end|>", "--out", "ids"], ["--name", "'<|im_end|>'", "remove it"]),
    ("train with a turn marker in --set author", None, [*TRAIN, "--set", "author=[INST] Mira"], ["--author", "[INST]"]),
    ("general data: a turn marker inside an answer",
     write_file("data/marker.jsonl", jsonl(GOOD, {"messages": [{"role": USER, "content": "hi"}, {
         "role": "assistant", "content": "bye<|im_end|>\n<|im_start|>user\nmore"}]})),
     [*TRAIN, "--set", "general=data/marker.jsonl"], ["data/marker.jsonl:2", "'<|im_end|>'", "control token"]),
    ("chat: a turn marker in the question", None, ["chat", "models/base", "--prompt", "hi<|im_start|>system"],
     ["user message", "'<|im_start|>'", "control token"]),
    ("LLaVA config: LoRA on a convolutional vision encoder", None,
     ["train", REPO / "configs" / "llava" / "smollm2_135m_lora_efficientnet_lite0_finetune.py", "--set", "llm=models/base",
      "--set", "pretrained_pth=work/iter_2.pth", "--set", "encoder_lora_r=4"],
     ["encoder_lora_r=4", "convolutional", "encoder_lora_r=0"]),
    ("packed config: rows shorter than a conversation", None,
     ["train", REPO / "configs" / "internlm2_chat_1_8b_qlora_assistant.py", "--model", "models/base", "--set",
      "quantize_4bit=false", "--set", "dtype=float32", "--set", "replay_ratio=0", "--set", "pack_tokens=16"],
     ["pack_tokens=16", "set pack_tokens >= max_length"]),
    ("train --model that is a folder of something else", write_file("photos/cat.jpg", b"\xff\xd8"),
     ["train", CONFIG, "--model", "photos"], ["--model", "photos", "config.json"]),
    ("train --model that is a file", None, ["train", CONFIG, "--model", "notes.txt"], ["--model", "notes.txt", "not a folder"]),
    ("train --work-dir that is a file", None, [*TRAIN, "--work-dir", "notes.txt"], ["notes.txt", "is a file"]),
    ("train --resume with no checkpoint", None, [*TRAIN, "--work-dir", "precious", "--resume"], ["precious", "no checkpoint"]),
    ("convert a damaged checkpoint", None, ["convert", "work", "--out", "new_adapter"], ["work/iter_2.pth", "--checkpoint"]),
    ("convert a work dir whose dumped config was damaged",
     write_file("work/assistant.py", "model_path = dict(\nwork_dir = 'work'\n"), ["convert", "work", "--out", "new_adapter"],
     ["work/assistant.py", "line 1", "train again"]),
    ("convert a folder that is no work dir", None, ["convert", "precious", "--out", "new_adapter"],
     ["precious", "no checkpoint"]),
    # -- model folders: a damaged one is named, file by file, wherever it is loaded
    ("chat with truncated safetensors", damaged_model(truncated("model.safetensors", -100)),
     ["chat", "damaged", "--prompt", "hi"], ["damaged/model.safetensors", "truncated"]),
    ("chat with safetensors cut inside the header", damaged_model(truncated("model.safetensors", 300)),
     ["chat", "damaged", "--prompt", "hi"], ["damaged/model.safetensors", "truncated"]),
    ("chat with empty safetensors", damaged_model(lambda f: (f / "model.safetensors").write_bytes(b"")),
     ["chat", "damaged", "--prompt", "hi"], ["damaged/model.safetensors", "empty"]),
    ("chat with a broken tokenizer_config.json",
     damaged_model(lambda f: (f / "tokenizer_config.json").write_text('{\n  "chat_template": \n')),
     ["chat", "damaged", "--prompt", "hi"], ["damaged/tokenizer_config.json:3", "not valid JSON"]),
    ("chat with a Git LFS pointer as tokenizer.json", damaged_model(lambda f: (f / "tokenizer.json").write_text(LFS_POINTER)),
     ["chat", "damaged", "--prompt", "hi"], ["damaged/tokenizer.json", "Git LFS pointer"]),
    ("chat with a shard missing", damaged_model(lambda f: (f / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}))),
     ["chat", "damaged", "--prompt", "hi"], ["model.safetensors.index.json", "model-00002-of-00002.safetensors"]),
    ("chat with an unknown model_type", damaged_model(lambda f: (f / "config.json").write_text('{"model_type": "nope"}')),
     ["chat", "damaged", "--prompt", "hi"], ["damaged/config.json", "'nope'"]),
    ("chat with a folder that does not exist", None, ["chat", "nowhere", "--prompt", "hi"], ["nowhere", "no such folder"]),
    ("chat with an adapter folder without weights", adapter_without_weights, ["chat", "empty_adapter", "--prompt", "hi"],
     ["empty_adapter", "adapter weights", "convert"]),
    ("eval with a Git LFS pointer as weights", damaged_model(lambda f: (f / "model.safetensors").write_text(LFS_POINTER)),
     ["eval", "damaged", "--name", "Zorblat"], ["Git LFS pointer", "git lfs pull"]),
    ("web with a truncated model", damaged_model(truncated("model.safetensors", -100)), ["web", "damaged"],
     ["damaged/model.safetensors", "truncated"]),
    ("train --model without model_type in config.json",
     damaged_model(lambda f: (f / "config.json").write_text('{"hidden_size": 32}')),
     ["train", CONFIG, "--model", "damaged"], ["damaged/config.json", "model_type"]),
    ("merge an adapter folder without weights", adapter_without_weights, ["merge", "empty_adapter", "--out", "merged"],
     ["empty_adapter", "adapter weights"]),
    ("merge an adapter whose base model is gone", adapter_of_a_gone_base, ["merge", "adapter", "--out", "merged"],
     ["gone", "--base"]),
    ("merge with --base that is not a model", None, ["merge", "adapter", "--base", "precious", "--out", "merged"],
     ["precious", "config.json"]),
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, tiny_model_dir, adapter_source) -> dict:
    """Every case run in its own world, with the world's files as they were before; and the model
    cache's entries before and after them all."""
    from xtuner_assistant.paths import home

    cache = home() / "models"
    prepared = {}
    for case, setup, argv, _ in CASES:
        world = make_world(tmp_path_factory.mktemp("case"), tiny_model_dir, adapter_source)
        if setup:
            setup(world)
        prepared[case] = (world, [str(a).replace("{cache}", str(cache)) for a in argv], tree(world))
    cache_before = sorted(p.name for p in cache.iterdir())
    with CommandServer() as server:
        results = {case: server.run(*argv, cwd=world) for case, (world, argv, _) in prepared.items()}
    cache_after = sorted(p.name for p in cache.iterdir())
    return {case: (world, before, results[case], cache_before, cache_after)
            for case, (world, _, before) in prepared.items()}


@pytest.mark.parametrize("case, named", [(case, named) for case, _, _, named in CASES],
                         ids=[case for case, *_ in CASES])
def test_a_bad_input_is_one_clear_line_and_touches_nothing(outcomes, case, named):
    world, before, result, cache_before, cache_after = outcomes[case]
    assert_refused(result, *named)
    assert tree(world) == before, "a refused command changed the user's files"
    assert cache_after == cache_before, "nothing was added to or removed from the model cache"


@pytest.mark.parametrize("case", ["merge --out a folder of the user's", "general data: a Latin-1 file",
                                  "chat with truncated safetensors", "publish with a token in the repository URL"])
def test_a_forked_case_runs_as_a_fresh_process_does(outcomes, case):
    world, _, forked, _, _ = outcomes[case]
    fresh = cli(*forked.args, cwd=world)
    assert (fresh.returncode, fresh.stdout, fresh.stderr) == (forked.returncode, forked.stdout, forked.stderr)


# ----------------------------------------------------------------------------- cases that need their own set-up
def test_a_chinese_name_in_a_c_locale_names_the_terminal_encoding(tmp_path):
    env = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    for argv in (["data", "identity", "--name", "小菜鸡", "--out", "ids"],
                 ["train", CONFIG, "--set", "name=小菜鸡"]):
        line = assert_refused(cli(*argv, cwd=tmp_path, env=env), "terminal", "UTF-8", "LC_ALL=C.UTF-8")
        assert "control characters" not in line
    assert not list(tmp_path.iterdir())


def read_only_folder_command(folder: Path, command: list[str]) -> list[str]:
    """`command` run where `folder` cannot be written: a read-only tmpfs in a private mount namespace
    when running as root (root writes through permission bits), else permission bits."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return command
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("running as root without a private mount namespace: no way to make a read-only folder")
    script = 'mount -t tmpfs -o ro,size=1m tmpfs "$0" && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, str(folder), *command]


@pytest.mark.parametrize("argv", [["data", "identity", "--name", "Zorblat", "--out", "ro/ids"],
                                  ["merge", "adapter", "--out", "ro/merged"]], ids=["data identity", "merge"])
def test_out_in_a_read_only_folder_is_one_clear_line(world, argv):
    (world / "ro").mkdir()
    before = tree(world)
    command = read_only_folder_command(world / "ro", [*CLI, *argv])
    result = subprocess.run(command, cwd=world, capture_output=True, text=True,
                            env={**os.environ, "XA_GIT_TOKEN": SECRET, "OMP_NUM_THREADS": "2"})
    assert_refused(result, "ro", "not writable", "choose another --out")
    assert tree(world) == before


# ----------------------------------------------------------------------------- what must work, and how
def test_user_text_is_literal_everywhere_in_identity_data(tmp_path):
    """`--author "{name}"` stays "{name}"; a name that looks like a slot stays that name."""
    result = cli("data", "identity", "--name", "{base_model}", "--author", "{name}", "--base-model", "{author}",
                 "-n", "200", "--out", "ids", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line)["messages"][1]["content"] for line in (tmp_path / "ids" / "identity.jsonl").open()]
    assert any("{base_model}" in a and "{name}" in a and "{author}" in a for a in answers)
    for answer in answers:
        assert "a small open language model" not in answer  # "{author}" is the base model's name, not a slot
    held_out = json.loads((tmp_path / "ids" / "identity_held_out.json").read_text())
    assert held_out["identity"] == {"name": "{base_model}", "author": "{name}", "base_model": "{author}"}


def test_identity_data_follows_the_umask_and_may_be_rewritten_but_not_an_edit(tmp_path):
    result = cli("data", "identity", "--name", "Zorblat", "-n", "20", "--out", "ids", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("identity.jsonl", "identity_held_out.json"):
        assert (tmp_path / "ids" / name).stat().st_mode & 0o777 == 0o666 & ~current_umask()
    assert cli("data", "identity", "--name", "Bob", "-n", "20", "--out", "ids", cwd=tmp_path).returncode == 0, \
        "our own unedited files are ours to replace"
    with open(tmp_path / "ids" / "identity.jsonl", "a") as f:
        f.write(json.dumps(GOOD) + "\n")
    edited = tree(tmp_path)
    assert_refused(cli("data", "identity", "--name", "Carol", "--out", "ids", cwd=tmp_path), "identity.jsonl", "--force")
    assert tree(tmp_path) == edited
    assert cli("data", "identity", "--name", "Carol", "-n", "20", "--out", "ids", "--force", cwd=tmp_path).returncode == 0


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_config_copy_twice_refuses_an_edited_copy_unless_forced(tmp_path):
    name = "smollm2_135m_lora_cpu_assistant"
    assert cli("config", "copy", name, "cfg", cwd=tmp_path).returncode == 0
    copied = tmp_path / "cfg" / f"{name}_copy.py"
    assert cli("config", "copy", name, "cfg", cwd=tmp_path).returncode == 0, "an unedited copy is the same copy"
    copied.write_text(copied.read_text() + "lr = 5e-5\n")
    edited = tree(tmp_path)
    assert_refused(cli("config", "copy", name, "cfg", cwd=tmp_path), copied.name, "--force")
    assert tree(tmp_path) == edited
    assert cli("config", "copy", name, "cfg", "--force", cwd=tmp_path).returncode == 0
    assert "lr = 5e-5\n" not in copied.read_text()


def test_a_general_data_path_holding_a_comma_stays_one_path(tmp_path):
    from xtuner_assistant.data.general import split_sources

    write_jsonl(tmp_path / "chat, part 1.jsonl", [GOOD])
    write_jsonl(tmp_path / "more.jsonl", [GOOD])
    given = f"packaged:chatterbot,{tmp_path / 'chat, part 1.jsonl'},{tmp_path / 'more.jsonl'}"
    assert split_sources(given) == ["packaged:chatterbot", str(tmp_path / "chat, part 1.jsonl"), str(tmp_path / "more.jsonl")]
    assert split_sources(given.split(",")) == split_sources(given), "a config that split at commas gets the same"
    assert split_sources("") == []


def test_force_never_replaces_the_current_or_the_home_folder(tmp_path, monkeypatch):
    from xtuner_assistant.paths import OutputError, check_output_dir

    (tmp_path / "home" / "here").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "home" / "here")
    with pytest.raises(OutputError, match="would replace the current folder"):
        check_output_dir(Path("."), force=True)
    with pytest.raises(OutputError, match="would replace your home folder"):
        check_output_dir(tmp_path / "home", force=True)
    check_output_dir(tmp_path / "home" / "here" / "new", force=True)  # a new folder inside is fine


@pytest.mark.parametrize("raised, one_line", [
    ("from xtuner_assistant.data.replay import ReplayError\nraise ReplayError('the base model gave no usable answer')", True),
    ("raise ZeroDivisionError('a bug keeps its traceback')", False)])
def test_an_input_error_raised_while_xtuner_loads_a_config_is_one_line(tmp_path, raised, one_line):
    """A config runs our code while XTuner loads it (replay, settings, data files): our errors end the
    tool with one line and status 2, as our commands do; anything else keeps its traceback."""
    config = tmp_path / "config.py"
    config.write_text("_base_ = []  # a plain config, as ours are\n" + raised + "\n")
    tool = tmp_path / "train.py"
    tool.write_text("import sys\nfrom mmengine.config import Config\nConfig.fromfile(sys.argv[1])\n")
    done = subprocess.run([sys.executable, "-m", "xtuner_assistant.training.launch", str(tool), str(config)],
                          capture_output=True, text=True, timeout=300)
    if one_line:
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and "train: " in done.stderr and "no usable answer" in done.stderr
    else:
        assert done.returncode == 1 and "Traceback" in done.stderr and "ZeroDivisionError" in done.stderr
