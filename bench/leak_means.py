"""One line per recipe: the means of bench/leak_probe.py's scores over a leak screen's runs.

    python bench/leak_means.py leak_answers.tgz            # the archive `bench/gpu_session.sh leak` returns
    python bench/leak_means.py run0.json run1.json ...     # or result files

Columns: identity on the held-out split (zh / en), on the questions outside the pool (mean, then the
runs' range), the same questions without their closing punctuation ("bare"), leakage counted over the
runs (the shipped general prompts in Chinese, the extra set zh / en, and the extra set bare), repetition,
facts kept (shipped / extra), second turns answered in their own language (over the runs' two-turn chats).
"""
from __future__ import annotations

import json
import re
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

RESULT_FILE = re.compile(r"leak_(.+)_run\d+\.json")  # bench/gpu_session.sh leak's name: leak_RECIPE_runN.json


def results(paths: list[str]):
    for path in paths:
        if path.endswith((".tgz", ".tar.gz")):
            with tarfile.open(path) as archive:
                for member in archive.getmembers():
                    if RESULT_FILE.fullmatch(Path(member.name).name):
                        yield Path(member.name).name, json.load(archive.extractfile(member))
        else:
            yield Path(path).name, json.loads(Path(path).read_text(encoding="utf-8"))


def summed(values: list[str]) -> tuple[int, int]:
    """'3/40' strings summed over runs: (12, 200)."""
    parts = [tuple(map(int, value.split("/"))) for value in values]
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def counted(values: list[str]) -> str:
    """'3/40' strings summed over runs: '12/200'."""
    return "{}/{}".format(*summed(values))


def line(recipe: str, runs: list[dict]) -> str:
    mean = lambda key: sum(run[key] for run in runs) / len(runs)
    spread = lambda key: f"{min(run[key] for run in runs):.2f}-{max(run[key] for run in runs):.2f}"
    text = (f"{recipe} {len(runs)} held zh {mean('identity_zh'):.2f} en {mean('identity_en'):.2f}"
            f" | outside zh {mean('identity_extra_zh'):.2f} ({spread('identity_extra_zh')}) en {mean('identity_extra_en'):.2f}")
    if all("identity_extra_bare_zh" in run for run in runs):
        text += (f" | bare zh {mean('identity_extra_bare_zh'):.2f} ({spread('identity_extra_bare_zh')})"
                 f" en {mean('identity_extra_bare_en'):.2f}")
    text += (f" | leak shipped zh {counted([run['leak_general_zh_count'] for run in runs])}"
             f" | extra zh {counted([run['leak_extra_zh_count'] for run in runs])}"
             f" en {counted([run['leak_extra_en_count'] for run in runs])}")
    if all("leak_extra_bare_zh_count" in run for run in runs):
        text += (f" | extra bare zh {counted([run['leak_extra_bare_zh_count'] for run in runs])}"
                 f" en {counted([run['leak_extra_bare_en_count'] for run in runs])}")
    text += f" | rep {mean('repetition'):.2f}"
    if all("facts_kept_general" in run for run in runs):
        text += f" | facts {mean('facts_kept_general'):.2f}/{mean('facts_kept_extra'):.2f}"
    if all(run.get("multi_turn_chats") for run in runs):
        followed = sum(round(run["second_turn_language_followed"] * run["multi_turn_chats"]) for run in runs)
        text += f" | 2nd turn {followed}/{sum(run['multi_turn_chats'] for run in runs)}"
    return text


def main(argv=None) -> None:
    paths = (argv if argv is not None else sys.argv[1:]) or sys.exit(__doc__)
    by_recipe: dict[str, list[dict]] = defaultdict(list)
    for name, result in results(paths):
        chats = len(result.get("answers", {}).get("multi_turn", []))  # the second-turn share is over these
        by_recipe[RESULT_FILE.fullmatch(name)[1]].append({**result["scores"], "multi_turn_chats": chats})
    for recipe, runs in by_recipe.items():
        print(line(recipe, runs))


if __name__ == "__main__":
    main()
