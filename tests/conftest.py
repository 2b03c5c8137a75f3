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


@pytest.fixture(scope="session", autouse=True)
def replay_off():
    """The tiny random model gives no usable answer to replay (ReplayError), and making the answers
    costs minutes; a test about replay turns it back on. Session-wide so module fixtures that train
    get it too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XA_REPLAY_RATIO", "0")
        yield
