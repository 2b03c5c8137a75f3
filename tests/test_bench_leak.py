"""The leak screens' summaries (bench/leak_means.py, bench/leak_frontier.py): what they average and count,
from result files shaped like bench/leak_probe.py's, loose and in the archive a GPU call returns."""
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import leak_frontier  # noqa: E402
import leak_means  # noqa: E402


def scores(identity, outside, bare, leaked, leaked_bare, **extra):
    return {"identity_zh": identity, "identity_en": 1.0, "identity_extra_zh": outside, "identity_extra_en": 1.0,
            "identity_extra_bare_zh": bare, "identity_extra_bare_en": 1.0,
            "leak_general_zh_count": "0/14", "leak_extra_zh_count": f"{leaked}/40", "leak_extra_en_count": "0/40",
            "leak_extra_bare_zh_count": f"{leaked_bare}/40", "leak_extra_bare_en_count": "1/40",
            "repetition": 0.1, "facts_kept_general": 1.0, "facts_kept_extra": 0.5,
            "second_turn_language_followed": 0.75, **extra}


def archive(path: Path, files: dict) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, result in files.items():
            data = json.dumps(result).encode()
            member = tarfile.TarInfo(f"leak/{name}")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return path


def test_frontier_points_average_the_three_identity_sets_and_pool_both_leak_counts(tmp_path):
    runs = {"leak_A_run0.json": {"scores": scores(1.0, 0.9, 0.8, 2, 0)},
            "leak_A_run1.json": {"scores": scores(0.8, 0.7, 0.6, 1, 1)},
            "leak_B7_run0.json": {"scores": scores(0.5, 0.5, 0.5, 0, 0)},
            "leak_J_run0.json": {"scores": scores(1.0, 1.0, 1.0, 40, 40)}}
    before_bare = scores(1.0, 1.0, 1.0, 0, 0)
    del before_bare["identity_extra_bare_zh"]
    loose = tmp_path / "leak_O_run0.json"
    loose.write_text(json.dumps({"scores": before_bare}))
    points = leak_frontier.recipe_points([str(archive(tmp_path / "a.tgz", runs)), str(loose)], skip={"J"})
    assert set(points) == {"A", "B7"}  # J skipped, O has no bare sets
    assert points["A"] == pytest.approx((4 / 160, (0.9 + 0.7) / 2))
    assert points["B7"] == pytest.approx((0.0, 0.5))
    out = tmp_path / "frontier.png"
    leak_frontier.plot(points, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_frontier_refuses_archives_without_bare_sets(tmp_path, capsys):
    before_bare = scores(1.0, 1.0, 1.0, 0, 0)
    del before_bare["identity_extra_bare_zh"]
    loose = tmp_path / "leak_O_run0.json"
    loose.write_text(json.dumps({"scores": before_bare}))
    with pytest.raises(SystemExit):
        leak_frontier.main([str(tmp_path / "out.png"), str(loose)])
    assert "bare sets" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


def test_means_sum_counts_over_runs_and_second_turns_over_each_runs_chats(tmp_path, capsys):
    line = leak_means.line("A", [scores(1.0, 0.9, 0.8, 2, 0, multi_turn_chats=8),
                                 scores(0.8, 0.7, 0.6, 1, 1, multi_turn_chats=8)])
    assert line.startswith("A 2 held zh 0.90 en 1.00 | outside zh 0.80 (0.70-0.90)")
    assert "extra zh 3/80 en 0/80" in line and "extra bare zh 1/80 en 2/80" in line
    assert line.endswith("2nd turn 12/16")
    chats = lambda n: [{"turns": ["你好", "Hi"], "answers": ["你好", "Hello"]}] * n
    runs = {"leak_A_run0.json": {"scores": scores(1.0, 1.0, 1.0, 0, 0), "answers": {"multi_turn": chats(4)}},
            "leak_A_run1.json": {"scores": scores(1.0, 1.0, 1.0, 0, 0), "answers": {"multi_turn": chats(12)}}}
    leak_means.main([str(archive(tmp_path / "a.tgz", runs))])
    assert capsys.readouterr().out.strip().endswith("2nd turn 12/16")  # 0.75 of 4, then of 12
