#!/usr/bin/env python3
"""Medians of benches/socket/run.sh results, and the flatness chart.

    python3 benches/socket/table.py [--svg docs/bench/flatness.svg] RESULTS.jsonl...

Prints, per path and connection count, each target's median server CPU µs per request
(p99 ms, errors over all runs), coregate's ratio to nginx, and for proxied paths the cost
above the zero-logic forwarder (fwd-epoll) for coregate and nginx. The SVG plots CPU per
request against connections for the proxied `small` path (and `health`), coregate and nginx.
"""
import collections
import json
import math
import statistics as st
import sys


def load(paths):
    pts = collections.defaultdict(list)
    for p in paths:
        for line in open(p):
            r = json.loads(line)
            if "error" in r or "server_cpu_us_per_req" not in r:
                continue
            if not r.get("requests"):
                # No request completed in the window (connection set-up took it all): the
                # CPU per request is a division by zero, not a cost.
                print(f"dropped: {p}: {r['target']} {r['path_kind']}@{r['conns']} "
                      "completed no request", file=sys.stderr)
                continue
            errs = (r.get("socket_errors") or 0) + (r.get("non2xx") or 0)
            pts[(r["path_kind"], r["conns"], r["target"])].append(
                (r["server_cpu_us_per_req"], r.get("p99_us", 0) / 1000, errs))
    return pts


def med(pts, key):
    v = pts.get(key)
    if not v:
        return None
    return st.median(x[0] for x in v), st.median(x[1] for x in v), sum(x[2] for x in v), len(v)


def table(pts):
    targets = sorted({k[2] for k in pts}, key=lambda t: (t != "nginx", t))
    print("| path | conns | " + " | ".join(f"{t} µs (p99 ms, errors)" for t in targets)
          + " | coregate/nginx | above floor: coregate / nginx |")
    print("|" + "---|" * (len(targets) + 4))
    for path, conns in sorted({(k[0], k[1]) for k in pts}):
        cells, m = [], {}
        for t in targets:
            r = med(pts, (path, conns, t))
            m[t] = r
            cells.append("-" if r is None else f"{r[0]:.2f} ({r[1]:.1f}, {r[2]})")
        cg, ng, fl = m.get("coregate"), m.get("nginx"), m.get("fwd-epoll")
        ratio = f"{cg[0] / ng[0]:.2f}" if cg and ng else "-"
        above = f"{cg[0] - fl[0]:.2f} / {ng[0] - fl[0]:.2f}" if cg and ng and fl else "-"
        print(f"| {path} | {conns} | " + " | ".join(cells) + f" | {ratio} | {above} |")


def svg(pts, out, paths=("small", "health")):
    series = {}
    for path in paths:
        for t in ("coregate", "nginx"):
            xs = sorted({k[1] for k in pts if k[0] == path and k[2] == t})
            ys = []
            for x in xs:
                cpu, _, errs, _ = med(pts, (path, x, t))
                ys.append((x, cpu, errs))
            if ys:
                series[f"{t} {path}"] = ys
    if not series:
        return
    W, H, L, B, T, R = 760, 420, 60, 50, 30, 170
    # Log scale: the points run from 100 to 18,000 connections.
    xmin = min(x for s in series.values() for x, _, _ in s)
    xmax = max(x for s in series.values() for x, _, _ in s)
    ymax = max(y for s in series.values() for _, y, _ in s) * 1.1
    span = math.log10(xmax) - math.log10(xmin) or 1
    sx = lambda x: L + 10 + (W - L - R - 20) * (math.log10(x) - math.log10(xmin)) / span
    sy = lambda y: H - B - (H - B - T) * y / ymax
    colors = {"coregate small": "#d62728", "nginx small": "#1f77b4",
              "coregate health": "#ff9896", "nginx health": "#aec7e8"}
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{L}" y="18" font-size="14">Server CPU µs per request vs connections (1 core, medians)</text>',
         f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
         f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
         f'<text x="{(W - R + L) / 2}" y="{H - 12}" text-anchor="middle">connections (log scale); '
         f'hollow marker: the point had socket errors or non-2xx</text>']
    step = 5 if ymax < 60 else 10
    for y in range(0, int(ymax) + 1, step):
        o.append(f'<line x1="{L - 4}" y1="{sy(y):.1f}" x2="{W - R}" y2="{sy(y):.1f}" stroke="#eee"/>')
        o.append(f'<text x="{L - 8}" y="{sy(y) + 4:.1f}" text-anchor="end">{y}</text>')
    for x in sorted({x for s in series.values() for x, _, _ in s}):
        o.append(f'<text x="{sx(x):.1f}" y="{H - B + 16}" text-anchor="middle">{x}</text>')
    for i, (name, s) in enumerate(series.items()):
        c = colors.get(name, "#555")
        d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y, _ in s)
        o.append(f'<polyline points="{d}" fill="none" stroke="{c}" stroke-width="2"/>')
        for x, y, errs in s:
            fill = "white" if errs else c
            o.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="{fill}" stroke="{c}" stroke-width="2"/>')
        o.append(f'<rect x="{W - R + 15}" y="{T + 20 * i}" width="12" height="12" fill="{c}"/>')
        o.append(f'<text x="{W - R + 32}" y="{T + 20 * i + 11}">{name}</text>')
    o.append("</svg>")
    open(out, "w").write("\n".join(o) + "\n")


def main():
    args = sys.argv[1:]
    out = None
    if args[:1] == ["--svg"]:
        out, args = args[1], args[2:]
    pts = load(args)
    table(pts)
    if out:
        svg(pts, out)


if __name__ == "__main__":
    main()
