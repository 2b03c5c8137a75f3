"""Chinese identity against Chinese leakage, one point per recipe of the leak screens, as a PNG.

    python bench/leak_frontier.py OUT.png bench/results/leak_2026-12-0*_gpu/leak_answers.tgz

Each point is a recipe's five runs (`bench/gpu_session.sh leak`, scored by bench/leak_probe.py): identity,
the mean over runs of the held-out split, the questions outside the pool and those asked bare; leakage,
the share of the extra general prompts answered with the identity, punctuated and bare together. The
shaded corner is issue 13's target (identity >= 0.95 and leakage <= 0.05). Screens without the bare
sets (before 2026-12-01) are left out, as are recipes named with --skip.
"""
from __future__ import annotations

import argparse
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from leak_means import RESULT_FILE, results, summed  # noqa: E402  (run from the repository root or bench/)

IDENTITY_TARGET, LEAK_TARGET = 0.95, 0.05


def recipe_points(paths: list[str], skip: set[str]) -> dict[str, tuple[float, float]]:
    """{recipe: (zh leakage, zh identity)} over the archives' runs that carry the bare sets."""
    runs: dict[str, list[dict]] = defaultdict(list)
    for name, result in results(paths):
        recipe = RESULT_FILE.fullmatch(name)[1]
        if recipe not in skip and "identity_extra_bare_zh" in result["scores"]:
            runs[recipe].append(result["scores"])
    points = {}
    for recipe, scores in runs.items():
        identity = sum((s["identity_zh"] + s["identity_extra_zh"] + s["identity_extra_bare_zh"]) / 3
                       for s in scores) / len(scores)
        leaked, asked = summed([s[key] for s in scores for key in ("leak_extra_zh_count", "leak_extra_bare_zh_count")])
        points[recipe] = (leaked / asked, identity)
    return points


def plot(points: dict[str, tuple[float, float]], out: str) -> None:
    figure, axes = plt.subplots(figsize=(6.4, 4.8))
    axes.fill_between([0, LEAK_TARGET], IDENTITY_TARGET, 1.0, color="tab:green", alpha=0.15, label="target")
    for recipe, (leak, identity) in sorted(points.items()):
        axes.scatter(leak, identity, color="tab:blue")
        axes.annotate(recipe, (leak, identity), textcoords="offset points", xytext=(4, 3), fontsize=9)
    axes.set_xlim(-0.005, max(0.12, max(p[0] for p in points.values()) + 0.01))
    axes.set_ylim(min(0.8, min(p[1] for p in points.values()) - 0.02), 1.0)
    axes.set_xlabel("Chinese leakage (extra general prompts, punctuated + bare)")
    axes.set_ylabel("Chinese identity (held-out, outside the pool, bare: mean)")
    axes.set_title("SmolLM2-135M, CPU config, five names and seeds per recipe")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(out, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the PNG to write")
    parser.add_argument("archives", nargs="+", help="leak_answers.tgz archives or result files")
    parser.add_argument("--skip", default="", help="recipes to leave out, comma-separated")
    args = parser.parse_args(argv)
    points = recipe_points(args.archives, set(filter(None, args.skip.split(","))))
    if not points:
        parser.error("no run in these archives carries the bare sets (screens from 2026-12-01 on do)")
    plot(points, args.out)
    for recipe, (leak, identity) in sorted(points.items(), key=lambda item: item[1]):
        print(f"{recipe:4} leak zh {leak:.3f}  identity zh {identity:.3f}")


if __name__ == "__main__":
    main()
