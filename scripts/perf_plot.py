#!/usr/bin/env python3
"""Latency against catalogue size, from a `snapshop bench --catalogue N` JSON report.

    .venv/bin/python scripts/perf_plot.py target/bench/catalogue.json docs/img/latency-vs-catalogue.png

Left: the first pass (top N) at each checkpoint, unfiltered and with each tag filter, p50 with the
p99 as a thin line above. Right: the whole search for the small and the 12 MP photo, with and
without the re-rank, p50. The figure's title names the machine and the model from the report, so
the picture never travels without them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    report = json.loads(Path(argv[0]).read_text())
    cps = report["checkpoints"]
    if not cps:
        print(f"error: {argv[0]} has no checkpoints", file=sys.stderr)
        return 2
    sizes = [c["images"] for c in cps]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, name in enumerate(f["filter"] for f in cps[0]["first_pass"]):
        rows = [next(f for f in c["first_pass"] if f["filter"] == name) for c in cps]
        share = rows[-1]["passing_fraction"] * 100
        label = "unfiltered" if name == "none" else f"{name} ({share:.1f}% pass)"
        line, = left.plot(sizes, [r["p50_ms"] for r in rows], marker="o", label=label)
        left.plot(sizes, [r["p99_ms"] for r in rows], color=line.get_color(), lw=0.6, ls=":")
    left.set_title("first pass: p50 (dotted: p99)")
    left.set_yscale("log")
    for photo in ("small", "12mp"):
        for rerank in (True, False):
            rows = [next(s for s in c["searches"] if s["photo"] == photo and s["rerank"] == rerank) for c in cps]
            right.plot(sizes, [r["p50_ms"]["total"] for r in rows], marker="o",
                       ls="-" if rerank else "--", label=f"{photo} photo, re-rank {'on' if rerank else 'off'}")
    right.set_title("whole search, one at a time: p50")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("catalogue images")
        ax.set_ylabel("ms")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"snapshop bench --catalogue {sizes[-1]}: {report['machine']}, {report['device']}, "
                 f"{report['model_version']}", fontsize=9)
    fig.tight_layout()
    out = Path(argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
