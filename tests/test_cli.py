"""The verbs a user would guess all exist, including the LLaVA ones under `data` and `eval`."""
import pytest

from xtuner_assistant.cli.main import main


@pytest.mark.parametrize("argv, usage", [
    (["eval", "vqa", "--help"], "usage: xtuner-assistant vqa eval"),
    (["data", "vqa", "--help"], "usage: xtuner-assistant data vqa"),
    (["data", "repeat", "--help"], "usage: xtuner-assistant data repeat"),
    (["data", "identity", "--help"], "usage: xtuner-assistant data identity"),
    (["model", "fetch", "--help"], "usage: xtuner-assistant model fetch"),
])
def test_verbs_and_aliases_parse(argv, usage, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(usage)


def test_bad_identity_name_is_one_clear_line(tmp_path, capsys):
    assert main(["data", "identity", "--name", "bad\x07name", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xtuner-assistant data: error: --name contains control characters (U+0007)")
    assert "Traceback" not in err and not list(tmp_path.iterdir())


def test_model_list_shows_packaged_models(capsys):
    assert main(["model", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("smollm2-135m", "qwen2.5-0.5b", "qwen2.5-1.5b"):
        assert name in out
