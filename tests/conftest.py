import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import tiny_chat_model_dir, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return tiny_chat_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Keep each test's cache writes out of the user's ~/.cache, except the real fetched models."""
    monkeypatch.setenv("XTUNER_ASSISTANT_TEST_TMP", str(tmp_path))
