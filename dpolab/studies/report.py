"""Small building blocks for markdown reports: tables, number formatting, line plots (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def versions() -> Dict[str, str]:
    """python, dpolab, torch, transformers, peft and accelerate versions (see :mod:`dpolab.studies.provenance`)."""
    from .provenance import versions as _versions

    return _versions()


def plot_lines(
    path: Path,
    panels: Sequence[Tuple[str, str, Mapping[str, Tuple[List[float], List[float]]]]],
    *,
    xlabel: str = "step",
    title: Optional[str] = None,
) -> Path:
    """One PNG with a panel per (title, ylabel, {series name: (xs, ys)})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (ptitle, ylabel, series) in zip(axes[0], panels):
        for name, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o", markersize=3, label=name)
        ax.set_title(ptitle)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
