"""The latency curve as a picture: p50 and p99 reply latency against offered load, written as a PNG.

Bench-only: matplotlib comes with the `bench` extra (`make bench` installs it), never with the package.
Drawn with the Agg backend, so no display is needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# The targets drawn as dashed lines (the issue's: p99 <= 20 ms, p50 <= 5 ms).
P99_TARGET_MS = 20.0
P50_TARGET_MS = 5.0

Point = tuple[float, float, float]  # offered lines/s, p50 ms, p99 ms


def write_latency_plot(
    points: Mapping[str, Sequence[Point]],
    path: Path | str,
    title_lines: Sequence[str],
    *,
    maximum: float | None = None,
    footer: Sequence[str] = (),
) -> Path:
    """Draw each series' p50 and p99 (ms, log scale) against offered load (k lines/s) into the PNG `path`.

    `points` maps a series' name to its (offered lines/s, p50 ms, p99 ms), one per load; `title_lines` are
    the title, one line each; `maximum` (lines/s), when given, adds a top axis in fractions of it and marks
    each point with its fraction; `footer` (date, commit, ...) is printed small under the plot.
    Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: no display on a bench machine
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, series) in enumerate(points.items()):
        ordered = sorted(series)
        x = [p[0] / 1e3 for p in ordered]
        color = colors[i % len(colors)]
        # p50 dotted, so that it is not taken for a target's dashes
        ax.plot(x, [p[1] for p in ordered], "o:", color=color, label=f"{name}: p50")
        ax.plot(x, [p[2] for p in ordered], "s-", color=color, label=f"{name}: p99")
        if maximum:
            for p in ordered:  # the fraction beside the p99 point, the one the eye goes to
                ax.annotate(
                    f"{p[0] / maximum:.2f}",
                    (p[0] / 1e3, p[2]),
                    textcoords="offset points",
                    xytext=(6, 6),
                    fontsize=8,
                    color=color,
                )

    for target, label in ((P99_TARGET_MS, "p99 target"), (P50_TARGET_MS, "p50 target")):
        ax.axhline(target, color="0.4", linestyle=(0, (6, 4)), linewidth=1)
        # just above the line at the left edge, in axes x and data y, so it stays put whatever the data
        ax.text(
            0.01,
            target,
            f" {label} {target:g} ms",
            transform=ax.get_yaxis_transform(),
            va="bottom",
            fontsize=8,
            color="0.3",
        )

    ax.set_yscale("log")
    # plain milliseconds on the ticks (1, 10, 100 ms), not powers of ten
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylabel("reply latency, ms (log scale)")
    ax.set_xlabel("offered load, k lines/s")
    ax.set_xlim(left=0)
    if maximum:
        # the whole range up to the maximum, marked: how close to it each load is, at a glance
        largest = max((p[0] for series in points.values() for p in series), default=maximum)
        ax.set_xlim(right=max(maximum, largest) / 1e3 * 1.05)
        ax.axvline(maximum / 1e3, color="0.4", linestyle=":", linewidth=1)
        # along the line near the top, clear of the targets' labels at the bottom left
        ax.text(
            maximum / 1e3,
            0.98,
            "maximum ",
            transform=ax.get_xaxis_transform(),
            rotation=90,
            ha="right",
            va="top",
            fontsize=8,
            color="0.3",
        )
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", axis="y", alpha=0.1)
    if maximum:
        scale = 1e3 / maximum  # k lines/s to the fraction of the maximum

        def to_fraction(k: Any) -> Any:  # matplotlib passes arrays: Any, not float
            return k * scale

        def to_k(fraction: Any) -> Any:
            return fraction / scale

        top = ax.secondary_xaxis("top", functions=(to_fraction, to_k))
        top.set_xlabel(f"fraction of the maximum ({maximum / 1e3:,.0f} k lines/s)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, 0.93))
    ax.set_title("\n".join(title_lines), fontsize=10, pad=10)
    if footer:
        fig.text(0.01, 0.01, "\n".join(footer), fontsize=7, color="0.35", va="bottom")
    # room at the bottom for the footer, its lines' worth
    fig.tight_layout(rect=(0, 0.025 * len(footer), 1, 1))
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
