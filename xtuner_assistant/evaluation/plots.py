"""The metrics of a training run over its iterations, as one PNG (matplotlib, no display needed)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from xtuner_assistant.paths import user_mode

SERIES = [  # (key in history.jsonl, label, line style)
    ("identity_accuracy_zh", "identity accuracy (zh, held out)", "-"),
    ("identity_accuracy_en", "identity accuracy (en, held out)", "-"),
    ("retention", "retention (agreement with base)", "-"),
    ("fact_retention", "facts kept", ":"),
    ("leakage", "leakage", "--"),
    ("repetition", "repetition", "--"),
    ("collapse", "collapse", "--"),
]


def plot_history(history: list[dict], path: str | Path, title: str, best_iter: int | None = None,
                 stopped_iter: int | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    path = Path(path)
    iterations = [h["iter"] for h in history]
    figure, axes = plt.subplots(figsize=(9, 5))
    for key, label, style in SERIES:
        points = [(i, h[key]) for i, h in zip(iterations, history) if h.get(key) is not None]
        if points:
            axes.plot(*zip(*points), style, marker="o", markersize=3, label=label)
    if best_iter is not None:
        axes.axvline(best_iter, color="green", alpha=0.5, linewidth=3, label=f"best checkpoint (iter {best_iter})")
    if stopped_iter is not None:
        axes.axvline(stopped_iter, color="red", alpha=0.5, linestyle="-.", label=f"stopped early (iter {stopped_iter})")
    axes.set(xlabel="training iteration", ylabel="share of answers (0..1)", ylim=(-0.03, 1.05), title=title)
    axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        figure.savefig(temporary, dpi=110)
        os.chmod(temporary, user_mode())  # mkstemp made it 0600 whatever the umask
        os.replace(temporary, path)
    finally:
        plt.close(figure)
        Path(temporary).unlink(missing_ok=True)
    return path

