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


@pytest.fixture(scope="session", autouse=True)
def isolated_home(tmp_path_factory):
    """Keep the tests' cache writes (replayed and base-model answers of random models) out of the
    user's ~/.cache, while the real fetched models and the openxlab SDK's environment (built by `make
    install`) stay shared: the test home's models/ and openxlab-sdk/ are the user's.
    Session-wide, so module fixtures and the subprocesses they start see it too."""
    from xtuner_assistant.paths import home

    test_home = tmp_path_factory.mktemp("xtuner-assistant-home")
    for shared in ("models", "openxlab-sdk"):
        (home() / shared).mkdir(parents=True, exist_ok=True)
        (test_home / shared).symlink_to(home() / shared, target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XTUNER_ASSISTANT_HOME", str(test_home))
        yield test_home


@pytest.fixture(scope="session", autouse=True)
def replay_off():
    """The tiny random model gives no usable answer to replay (ReplayError), and making the answers
    costs minutes; a test about replay turns it back on. Session-wide so module fixtures that train
    get it too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XA_REPLAY_RATIO", "0")
        yield
