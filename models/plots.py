"""Figures for evaluation reports (matplotlib; training side, never on the device)."""
from __future__ import annotations

from heron.runtime.metrics import StreamResult


def plot_det(curves: dict[str, list[StreamResult]], path: str, title: str = "DET") -> None:
    """FRR vs FA/h for each named curve, written as PNG (needs matplotlib: pip install heron[train])."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("the DET plot needs matplotlib: pip install 'heron[train]'") from e
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    for name, curve in curves.items():
        pts = [(r.fa_per_hour, 100 * r.frr) for r in sorted(curve, key=lambda r: -r.threshold)]
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", marker=".", label=name)
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("false accepts per hour")
    ax.set_ylabel("false reject rate (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
