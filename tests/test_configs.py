"""The shipped configs: they load, say what the tutorial's task asks for, can be listed and copied
like XTuner's own, and a packed config trains with plain `xtuner train` on a CPU."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

from xtuner_assistant.cli.config import base_files
from xtuner_assistant.cli.main import main as cli

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.py") if p.name != "__init__.py")
INTERNLM2 = REPO / "configs" / "internlm2_chat_1_8b_qlora_assistant.py"
QWEN_05B = REPO / "configs" / "qwen2_5_0_5b_qlora_assistant.py"
QWEN_15B = REPO / "configs" / "qwen2_5_1_5b_qlora_assistant.py"


@pytest.fixture
def settings(monkeypatch, tiny_model_dir):
    monkeypatch.setenv("XA_MODEL", str(tiny_model_dir))
    return monkeypatch


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads_and_inherits_the_one_base(path, settings, tiny_model_dir):
    cfg = Config.fromfile(str(path))
    assert cfg.model.llm.pretrained_model_name_or_path == str(tiny_model_dir)
    assert cfg.custom_imports["imports"] == ["xtuner_assistant"]  # from configs/_base_/runtime.py
    assert REPO / "configs" / "_base_" / "runtime.py" in base_files(path)


@pytest.mark.parametrize("path", [INTERNLM2, QWEN_05B, QWEN_15B], ids=lambda p: p.stem)
def test_packed_qlora_configs_carry_the_recipe_that_teaches_a_real_model(path, settings):
    """The measured recipe (docs/identity.md): nf4 QLoRA on packed rows, LoRA scaled alpha/r = 2, one row a
    optimizer step (so an epoch of the default data is ~150 steps, not ~20), the base model's replayed
    answers mixed in, the evaluation hook choosing the checkpoint, checkpoints written in the background
    and AdamW's fused step."""
    import xtuner_assistant.training.recipe as recipe

    settings.delenv("XA_REPLAY_RATIO", raising=False)  # the shipped default, not the tests' session-wide off
    settings.setattr(recipe, "base_model_replay", lambda model_path: f"{model_path}/replay.jsonl")
    cfg = Config.fromfile(str(path))
    quantization = cfg.model.llm.quantization_config
    assert (quantization.load_in_4bit, quantization.bnb_4bit_quant_type) == (True, "nf4")
    assert cfg.model.type.endswith("PackedSupervisedFinetune")
    assert cfg.model.llm.attn_implementation == "sdpa"
    assert cfg.model.flex_attention is False  # the measured path by default (docs/BENCHMARKS.md)
    assert cfg.model.lora.lora_alpha / cfg.model.lora.r == 2
    packed = cfg.train_dataloader.dataset
    assert packed.dataset.max_length == 1024  # the tutorial's edit
    assert cfg.model.longest_conversation == packed.dataset.max_length  # the CUDA graph's attention bound
    assert (packed.pack_tokens, cfg.optim_wrapper.accumulative_counts, cfg.train_cfg.max_epochs) == (3072, 1, 1)
    assert packed.dataset.replay.endswith("replay.jsonl") and packed.dataset.replay_ratio == 0.5
    assert [hook.type for hook in cfg.custom_hooks] == ["BackgroundCheckpointHook", "GraphShapeFromDataHook", "IdentityEvalHook"]
    assert cfg.custom_hooks[2].every_n_iters == cfg.default_hooks.checkpoint.interval
    assert cfg.optim_wrapper.optimizer.fused is True


@pytest.mark.parametrize("path", [INTERNLM2, QWEN_05B, QWEN_15B], ids=lambda p: p.stem)
def test_bfloat16_adapters_reach_the_model_and_train_without_a_loss_scale(path, settings):
    """A dynamic loss scale on bfloat16 LoRA weights stops the first step on CUDA (torch's scaler has no
    bfloat16 kernel there); the float32 default keeps the scale it was measured with."""
    from torch.amp import GradScaler

    cfg = Config.fromfile(str(path))
    assert (cfg.model.adapter_dtype, cfg.optim_wrapper.loss_scale) == ("float32", "dynamic")
    settings.setenv("XA_ADAPTER_DTYPE", "bfloat16")
    cfg = Config.fromfile(str(path))
    assert cfg.model.adapter_dtype == "bfloat16" and cfg.optim_wrapper.dtype == "bfloat16"
    scaler = GradScaler("cpu", **cfg.optim_wrapper.loss_scale)  # as AmpOptimWrapper builds it from a dict
    assert not scaler.is_enabled()


def test_internlm2_config_without_a_model_folder_says_what_to_set(monkeypatch):
    monkeypatch.delenv("XA_MODEL", raising=False)
    with pytest.raises(Exception, match="needs `model`.*--set model="):
        Config.fromfile(str(INTERNLM2))


def test_the_two_qwen_configs_differ_only_in_their_model(settings):
    settings.setenv("XA_BASE_MODEL", "Qwen2.5-Coder")
    assert Config.fromfile(str(QWEN_05B)).to_dict() == Config.fromfile(str(QWEN_15B)).to_dict()


def test_a_copied_config_stands_on_its_own_and_an_edit_in_place_reaches_its_wiring(tmp_path, capsys, settings):
    """As with XTuner's copy-cfg: edit PART 1 of the copy, and the model, data and optimizer follow."""
    assert cli(["config", "copy", "qwen2_5_0_5b_qlora_assistant", str(tmp_path)]) == 0
    copied = tmp_path / "qwen2_5_0_5b_qlora_assistant_copy.py"
    assert sorted(p.name for p in (tmp_path / "_base_").iterdir()) == ["runtime.py"]  # the one base it names
    text = copied.read_text(encoding="utf-8")
    text = text.replace('lr = setting("lr", 2e-4)', "lr = 1e-4").replace('pack_tokens = setting("pack_tokens", 3072)',
                                                                         "pack_tokens = 2048")
    copied.write_text(text, encoding="utf-8")
    cfg = Config.fromfile(str(copied))
    assert (cfg.lr, cfg.optim_wrapper.optimizer.lr) == (1e-4, 1e-4)
    assert (cfg.pack_tokens, cfg.train_dataloader.dataset.pack_tokens) == (2048, 2048)
    assert cfg.train_dataloader.dataset.dataset.max_length == 1024


SHIPPED = sorted(p for p in (REPO / "configs").rglob("*.py") if p.name != "__init__.py" and "_base_" not in p.parts)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_config_shows_its_wiring_as_plain_dicts(path):
    """PART 1 settings, then the model, data, optimizer and hooks a user can read and edit in place;
    the only thing inherited is the runtime (hooks, logging, seeds), named in one line."""
    text = path.read_text(encoding="utf-8")
    for part in ("PART 1  Settings", "PART 2  Model & Tokenizer", "PART 3  Dataset & Dataloader",
                 "PART 4  Scheduler & Optimizer", "PART 5  Runtime"):
        assert part in text
    for wiring in ("\ntokenizer = dict(", "\nmodel = dict(", "\ntrain_dataloader = dict(", "\noptim_wrapper = dict(",
                   "\ntrain_cfg = dict("):
        assert wiring in text, wiring
    assert "globals()" not in text
    assert [Path(base).name for base in Config._get_base_files(str(path))] in (["runtime.py"], ["llava_runtime.py"])


def test_settings_turn_a_gpu_config_into_a_cpu_one(settings):
    settings.setenv("XA_QUANTIZE_4BIT", "false")
    settings.setenv("XA_DTYPE", "float32")
    settings.setenv("XA_EVALUATION_FREQ", "0")
    cfg = Config.fromfile(str(QWEN_05B))
    assert "quantization_config" not in cfg.model.llm
    assert cfg.model.llm.torch_dtype == "torch.float32"
    assert cfg.optim_wrapper.type == "OptimWrapper"
    assert [hook.type for hook in cfg.custom_hooks] == ["BackgroundCheckpointHook", "GraphShapeFromDataHook"]  # no evaluation


def test_config_list_and_copy_mirror_xtuners_list_cfg_and_copy_cfg(tmp_path, capsys, settings):
    assert cli(["config", "list", "-p", "qwen"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("=")]
    assert listed == ["qwen2_5_0_5b_qlora_assistant", "qwen2_5_1_5b_qlora_assistant"]

    assert cli(["config", "copy", "internlm2_chat_1_8b_qlora_assistant", str(tmp_path)]) == 0
    copied = tmp_path / "internlm2_chat_1_8b_qlora_assistant_copy.py"
    assert copied.is_file() and (tmp_path / "_base_" / "runtime.py").is_file()
    assert Config.fromfile(str(copied)).model.type.endswith("PackedSupervisedFinetune")


def test_config_copy_does_not_overwrite_a_different_base_file(tmp_path, capsys):
    (tmp_path / "_base_").mkdir()
    (tmp_path / "_base_" / "runtime.py").write_text("# the user's own\n")
    assert cli(["config", "copy", "qwen2_5_0_5b_qlora_assistant", str(tmp_path)]) == 2
    assert "exists and differs" in capsys.readouterr().err
    assert (tmp_path / "_base_" / "runtime.py").read_text() == "# the user's own\n"
    assert cli(["config", "copy", "no_such_config", str(tmp_path)]) == 2
    assert "qwen2_5_0_5b_qlora_assistant" in capsys.readouterr().err


def test_packed_data_builds_before_the_model_is_imported(tmp_path, tiny_model_dir):
    """DeepSpeed's runner builds the data before the model; the packed dataset must resolve then."""
    code = (
        "import sys; from mmengine.config import Config; from mmengine.registry import DATASETS\n"
        "cfg = Config.fromfile(sys.argv[1])\n"
        "assert 'xtuner_assistant.training.packed_finetune' not in sys.modules\n"
        "rows = DATASETS.build(cfg.train_dataloader.dataset)\n"
        "print(len(rows), rows.report['samples'], max(len(rows[i]['input_ids']) for i in range(len(rows))))\n"
    )
    env = {"XA_MODEL": str(tiny_model_dir), "XA_IDENTITY_SAMPLES": "40", "XA_GENERAL": "", "XA_GENERAL_RATIO": "0",
           "XA_PACK_TOKENS": "1024", "XA_EVALUATION_FREQ": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(INTERNLM2)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows, samples, longest = map(int, done.stdout.split()[-3:])
    assert samples == 40 and 1 <= rows < samples and longest <= 1024


@pytest.mark.slow
def test_a_packed_config_trains_with_xtuner_train_on_a_cpu(tmp_path, tiny_model_dir):
    from xtuner_assistant.training.xtuner_tools import run_tool

    work_dir = tmp_path / "train"
    status = run_tool("train", [str(QWEN_05B), "--work-dir", str(work_dir)], {
        "model": str(tiny_model_dir), "quantize_4bit": "false", "dtype": "float32", "identity_samples": "48",
        "general": "", "general_ratio": "0", "max_length": "256", "pack_tokens": "512", "max_epochs": "1",
        "save_steps": "2", "evaluation_freq": "0", "lora_r": "8"})
    assert status == 0
    assert (work_dir / "last_checkpoint").is_file()
    assert list(work_dir.glob("iter_*.pth"))
    log = "".join(path.read_text() for path in work_dir.glob("*/*.log"))
    assert "GraphShapeFromDataHook: the captured step holds up to" in log, "the graph is shaped by the run's data"


def test_a_copied_configs_bases_are_pointed_at_its_own_base_folder():
    from xtuner_assistant.cli.config import with_bases_in

    text = '_base_ = ["../../_base_/runtime.py", \'./_base_/llava_runtime.py\']  # first statement\nx = 1\n'
    assert with_bases_in(text, "./_base_").splitlines()[0] == (
        '_base_ = ["./_base_/runtime.py", \'./_base_/llava_runtime.py\']  # first statement')
    assert with_bases_in("_base_ = []\n", ".") == "_base_ = []\n"


def test_a_mistyped_setting_is_refused_before_training_naming_the_known_ones(tmp_path, capsys):
    work_dir = tmp_path / "never-made"
    assert cli(["train", str(REPO / "configs" / "smollm2_135m_lora_cpu_assistant.py"), "--set", "nmae=Bob",
                "--work-dir", str(work_dir)]) == 2
    error = capsys.readouterr().err
    assert "--set nmae:" in error and "has no setting `nmae` (did you mean `name`?)" in error
    assert "its settings are: model, name, author, base_model," in error and "Traceback" not in error
    assert not work_dir.exists(), "nothing ran"


def test_settings_are_read_from_the_config_and_the_bases_it_names(tmp_path):
    from xtuner_assistant.training.settings import declared_settings

    (tmp_path / "_base_").mkdir()
    (tmp_path / "_base_" / "shared.py").write_text('_base_ = []\nfrom xtuner_assistant.training.settings import setting\n'
                                                  'seed = setting("seed", 0)\n')
    (tmp_path / "mine.py").write_text('_base_ = ["./_base_/shared.py"]\n'
                                      'from xtuner_assistant.training.settings import required_setting, setting\n'
                                      'model_path = required_setting("model", "a folder")\nlr = setting("lr", 1e-3)\n')
    # Names in the order a reader meets them, with their literal defaults (a required one has none).
    assert declared_settings(tmp_path / "mine.py") == {"model": None, "lr": 1e-3, "seed": 0}
    assert list(declared_settings(tmp_path / "mine.py")) == ["model", "lr", "seed"]


IDENTITY_CONFIGS = [p for p in CONFIGS if "identity_source(" in p.read_text(encoding="utf-8")]


@pytest.mark.parametrize("path", IDENTITY_CONFIGS, ids=[p.stem for p in IDENTITY_CONFIGS])
def test_another_model_is_not_told_it_is_built_on_the_configs_model(path, settings, tiny_model_dir):
    """`--model OTHER` (XA_MODEL): the identity and its evaluation name the model the folder holds, not the
    model the config was written for."""
    cfg = Config.fromfile(str(path))
    assert cfg.base_model == tiny_model_dir.name
    mixed = cfg.train_dataloader.dataset.get("dataset", cfg.train_dataloader.dataset)  # inside the packing, if packed
    assert mixed.identity.base_model == tiny_model_dir.name
    evaluations = [hook for hook in cfg.custom_hooks if hook.type == "IdentityEvalHook"]
    assert all(hook.base_model == tiny_model_dir.name for hook in evaluations)  # where it evaluates


def test_a_model_folders_display_name(tmp_path):
    import json

    from xtuner_assistant.models.zoo import MANIFEST, model_display_name

    fetched, hub, merged, bare = (tmp_path / name for name in ("fetched", "hub", "merged", "bare"))
    for folder in (fetched, hub, merged, bare):
        folder.mkdir()
    (fetched / MANIFEST).write_text(json.dumps({"display_name": "SmolLM2-135M-Instruct"}))
    (hub / "config.json").write_text(json.dumps({"_name_or_path": "internlm/internlm2-chat-1_8b"}))
    (merged / "config.json").write_text(json.dumps({"_name_or_path": str(fetched)}))  # as a merge saves it
    assert model_display_name(fetched) == "SmolLM2-135M-Instruct"
    assert model_display_name(hub) == "书生·浦语 InternLM2-Chat-1.8B"  # the tutorial's name for it
    assert model_display_name(merged) == "SmolLM2-135M-Instruct"
    assert model_display_name(bare) == "bare"


def test_the_identity_the_merge_record_and_the_model_card_name_a_model_folder_alike(tmp_path, monkeypatch):
    """The tutorial's /root/ft/model holding InternLM2-Chat-1.8B: the identity must not say "built on model"
    while the merged model's record and card say InternLM2 (two display names once disagreed so)."""
    import json

    from xtuner_assistant.cli import demo
    from xtuner_assistant.publish import model_card
    from xtuner_assistant.training import export

    folder = tmp_path / "ft" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "internlm/internlm2-chat-1_8b"}))
    monkeypatch.setenv("XA_MODEL", str(folder))
    identity = Config.fromfile(str(INTERNLM2)).base_model
    record_and_card = {module.model_display_name(folder) for module in (export, model_card, demo)}
    assert {identity} == record_and_card == {"书生·浦语 InternLM2-Chat-1.8B"}


def test_the_dumped_config_is_found_beside_what_deepspeed_writes(tmp_path):
    """DeepSpeed writes zero_to_fp32.py into the work dir after the config; convert must not take it."""
    import time

    from xtuner_assistant.training.work_dir import resolved_config

    (tmp_path / "assistant.py").write_text(f"lr = 0.001\nwork_dir = '{tmp_path}'\n")
    time.sleep(0.01)
    (tmp_path / "zero_to_fp32.py").write_text("from dataclasses import dataclass\n")
    assert resolved_config(tmp_path) == tmp_path / "assistant.py"


def test_a_generic_folder_is_named_from_its_config(tmp_path):
    """The tutorial copies InternLM2-Chat-1.8B to /root/ft/model, whose config.json need not name it:
    the identity must not say "built on model"."""
    import json

    from xtuner_assistant.models.zoo import model_display_name

    internlm2 = tmp_path / "ft" / "model"
    internlm2.mkdir(parents=True)
    (internlm2 / "config.json").write_text(json.dumps({
        "architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "hidden_size": 2048,
        "num_hidden_layers": 24, "vocab_size": 92544}))
    assert model_display_name(internlm2) == "书生·浦语 InternLM2-Chat-1.8B"
    other = tmp_path / "other" / "model"
    other.mkdir(parents=True)
    (other / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}))
    assert model_display_name(other) == "model"  # a shape it does not know keeps the folder's name
    named = tmp_path / "internlm2-mine"
    named.mkdir()
    (named / "config.json").write_text((internlm2 / "config.json").read_text())
    assert model_display_name(named) == "internlm2-mine"  # a telling folder name is kept


def test_every_numeric_setting_of_a_shipped_config_has_a_range():
    """A zero batch or a negative rank is refused as one line before training (settings.RANGES); a new
    numeric setting must say where its values make sense, or why any value does."""
    from importlib import resources

    from xtuner_assistant.training.settings import RANGES, declared_settings

    any_value = {"identity_samples": "its own check names the measured recipe",
                 "save_total_limit": "-1 keeps every checkpoint", "visual_select_layer": "negative counts from the end"}
    configs = resources.files("xtuner_assistant.configs")
    numeric = {}
    for config in [*configs.iterdir(), *configs.joinpath("llava").iterdir()]:
        if config.name.endswith(".py"):
            for name, default in declared_settings(config).items():
                if isinstance(default, (int, float)) and not isinstance(default, bool):
                    numeric[name] = default
    assert numeric, "no numeric settings found"
    assert set(numeric) - set(RANGES) - set(any_value) == set()
    assert set(RANGES) <= set(numeric)  # no stale names
    for name, default in numeric.items():
        assert name not in RANGES or RANGES[name].holds(default), (name, default)


def test_a_text_setting_with_fixed_choices_is_refused_outside_them_before_training():
    """`--set dtype=float64` or `--set adapter_dtype=fp16` is one line naming the choices (settings.CHOICES),
    not a traceback once the model loads; every shipped default is among its choices."""
    import pytest
    from importlib import resources

    from xtuner_assistant.training.settings import CHOICES, SettingError, check_settings, declared_settings

    configs = resources.files("xtuner_assistant.configs")
    config = configs / "internlm2_chat_1_8b_qlora_assistant.py"
    with pytest.raises(SettingError, match="--set adapter_dtype=fp16: expected one of float32, bfloat16"):
        check_settings(config, {"adapter_dtype": "fp16"})
    with pytest.raises(SettingError, match="--set dtype=float64: expected one of bfloat16, float16, float32"):
        check_settings(config, {"dtype": "float64"})
    with pytest.raises(SettingError, match="--set cuda_graph=maybe: expected auto, true or false"):
        check_settings(config, {"cuda_graph": "maybe"})
    check_settings(config, {"dtype": "float32", "adapter_dtype": "bfloat16", "cuda_graph": "False",
                            "compile_layers": "auto", "fused_kernels": "1"})
    declared = {}
    for path in [*configs.iterdir(), *configs.joinpath("llava").iterdir()]:
        if path.name.endswith(".py"):
            declared.update((name, default) for name, default in declared_settings(path).items() if name in CHOICES)
    assert set(declared) == set(CHOICES)  # no stale names
    assert all(default in CHOICES[name] for name, default in declared.items()), declared


def test_a_setting_out_of_its_range_is_refused_from_the_environment_too(monkeypatch):
    import pytest

    from xtuner_assistant.training.settings import SettingError, setting

    monkeypatch.setenv("XA_BATCH_SIZE", "0")
    with pytest.raises(SettingError, match="XA_BATCH_SIZE='0': expected a whole number of at least 1"):
        setting("batch_size", 4)
    monkeypatch.setenv("XA_BATCH_SIZE", "3")
    assert setting("batch_size", 4) == 3
