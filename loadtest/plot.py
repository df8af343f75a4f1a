"""A PNG per scenario: latency against offered load, baseline and tokenproxy side by side.

wrk is closed-loop (no rate control), so the offered load is the number of connections,
each keeping one request in flight: the left panel is p50 and p99 latency against it, the
right one the throughput that load achieved. Scenarios without a sweep (a cold start, a
rotation) plot their measured rounds, all at one connection count.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loadtest.harness import RoundResult, ScenarioReport


def plot_report(report: ScenarioReport, out_dir: Path) -> Path:
    """Write ``<out_dir>/<scenario>.png``; return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points: list[RoundResult] = report.sweep or report.rounds
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, color in ((report.baseline, "tab:blue"), (report.candidate, "tab:red")):
        mine = sorted((p for p in points if p.target == name), key=lambda p: p.connections)
        xs = [p.connections for p in mine]
        style = "o-" if report.sweep else "o"
        lat.plot(xs, [p.p50_ms for p in mine], style, color=color, label=f"{name} p50")
        lat.plot(xs, [p.p99_ms for p in mine], style.replace("-", "--"), color=color,
                 alpha=0.6, label=f"{name} p99")
        thr.plot(xs, [p.requests_per_s for p in mine], style, color=color, label=name)
    for ax in (lat, thr):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("offered load: connections, one request in flight each (wrk)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    lat.set_yscale("log")
    lat.set_ylabel("latency (ms)")
    thr.set_ylabel("requests/s achieved")
    fig.suptitle(f"{report.scenario}: {report.summary}", fontsize=10)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{report.scenario}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
