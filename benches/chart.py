#!/usr/bin/env python3
"""Draws docs/working-set.svg: req/s against the number of distinct cached URLs (scenario 8 of load.py),
from the medians recorded in docs/benchmarks.md. Usage: python3 benches/chart.py OUT.svg N=o,n,v ..."""
import math
import sys


def chart(out, rows):
    w, h, left, right, top, bottom = 640, 360, 70, 130, 30, 50
    ns = [n for n, _ in rows]
    ymax = max(max(v) for _, v in rows) * 1.1
    x = lambda n: left + (math.log10(n) - math.log10(ns[0])) / (math.log10(ns[-1]) - math.log10(ns[0])) * (w - left - right)
    y = lambda v: top + (1 - v / ymax) * (h - top - bottom)
    names, colors = ["Outpost", "nginx", "Varnish"], ["#c0392b", "#2c7fb8", "#41ab5d"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{left}" y="18" font-size="14">1 KiB cache hits at random over N distinct URLs (req/s, 2 cores, median of 3)</text>']
    for t in range(0, int(ymax) + 1, 10000):
        parts.append(f'<line x1="{left}" x2="{w - right}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 8}" y="{y(t) + 4:.1f}" text-anchor="end">{t // 1000}k</text>')
    for n in ns:
        parts.append(f'<text x="{x(n):.1f}" y="{h - bottom + 18}" text-anchor="middle">{n:,}</text>')
    parts.append(f'<text x="{(left + w - right) / 2}" y="{h - 12}" text-anchor="middle">distinct cached URLs (log scale)</text>')
    for i, (name, color) in enumerate(zip(names, colors)):
        pts = " ".join(f"{x(n):.1f},{y(v[i]):.1f}" for n, v in rows)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2.5"/>')
        for n, v in rows:
            parts.append(f'<circle cx="{x(n):.1f}" cy="{y(v[i]):.1f}" r="3.5" fill="{color}"/>')
        parts.append(f'<text x="{w - right + 10}" y="{y(rows[-1][1][i]) + 4:.1f}" fill="{color}">{name}</text>')
    parts.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(parts) + "\n")


if __name__ == "__main__":
    rows = []
    for arg in sys.argv[2:]:
        n, vals = arg.split("=")
        rows.append((int(n), [float(v) for v in vals.split(",")]))
    chart(sys.argv[1], rows)
