#!/usr/bin/env python3
"""Compare the runs of a tuning/experiment results directory.

Usage: compare.py OUTDIR

Reads OUTDIR/runs.tsv, OUTDIR/meta.tsv, OUTDIR/load-args.txt and, for each
run, RUNDIR/summary.json and RUNDIR/stages.jsonl as written by
`coregate load --out RUNDIR`. Writes OUTDIR/comparison.json and
OUTDIR/comparison.md.

Metrics per run
  rps         summary "max_rps", else the highest stage "rps"
  p50/p99/p999_ms
              latency of the peak stage (the stage with the highest rps);
              summary fields of the same name are used when there are no
              stages
  error_rate  sum(failed_requests) / sum(total_requests) over the stages
              (or the summary's own counters when there are no stages)
  client_limits_hit
              the summary's "client_limits": for an object, the keys whose
              value is true / non-zero / non-empty; for a list, its items

Noise: the first profile (the reference) is run N times. For each metric
the noise band is max(max - min, 2 * sample stdev) over those runs. A
profile's difference from the reference mean "exceeds noise" when
|delta| > band. With fewer than two successful reference runs the noise is
unknown and nothing is flagged.

Standard library only.
"""

import json
import math
import os
import statistics
import sys

METRICS = [
    # key, label, unit, higher_is_better
    ("rps", "RPS", "req/s", True),
    ("p50_ms", "p50", "ms", False),
    ("p99_ms", "p99", "ms", False),
    ("p999_ms", "p99.9", "ms", False),
    ("error_rate", "errors", "", False),
]


def num(v):
    """A finite float from v, or None."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        f = float(v)
    elif isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return None
    else:
        return None
    return f if math.isfinite(f) else None


def first(d, *names):
    for n in names:
        if isinstance(d, dict) and n in d:
            v = num(d[n])
            if v is not None:
                return v
    return None


def read_tsv(path):
    rows = []
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        for line in fh:
            line = line.rstrip("\n")
            if line:
                rows.append(dict(zip(header, line.split("\t"))))
    return rows


def read_meta(path):
    meta = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                k, _, v = line.rstrip("\n").partition("\t")
                if k:
                    meta[k] = v
    return meta


def load_json(path, notes):
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as e:
        notes.append(f"{os.path.basename(path)} unreadable: {e}")
        return None


def load_stages(path, notes):
    stages = []
    if not os.path.exists(path):
        return stages
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                notes.append(f"stages.jsonl line {n} unreadable: {e}")
                continue
            if isinstance(obj, dict):
                stages.append(obj)
    return stages


def limits_hit(v):
    """Names of the client limits that were hit, from summary['client_limits'].

    Accepts an explicit list ({"hit": [...]}, or a bare list), booleans
    ({"nofile": true, "ephemeral_ports": false}) and nested objects with a
    truthy "hit"/"reached"/"limited" field. Plain numbers (configured limits)
    are not hits; the raw object is kept in comparison.json either way.
    """
    if v is None:
        return []
    if isinstance(v, str):
        return [v] if v else []
    if isinstance(v, list):
        return [x if isinstance(x, str) else json.dumps(x, sort_keys=True) for x in v]
    if not isinstance(v, dict):
        return ["yes"] if v is True else []
    for explicit in ("hit", "limits_hit", "reached"):
        if isinstance(v.get(explicit), list):
            return [str(x) for x in v[explicit]]
    hit = []
    for k, x in v.items():
        if isinstance(x, bool):
            if x:
                hit.append(str(k))
        elif isinstance(x, dict):
            if x.get("hit") or x.get("reached") or x.get("limited"):
                hit.append(str(k))
    return hit


def run_metrics(rundir):
    notes = []
    summary = load_json(os.path.join(rundir, "summary.json"), notes)
    stages = load_stages(os.path.join(rundir, "stages.jsonl"), notes)
    m = {k: None for k, *_ in METRICS}
    if summary is None and not stages:
        notes.append("no summary.json and no stages.jsonl")
    s = summary if isinstance(summary, dict) else {}

    stage_rps = [(first(st, "rps"), i) for i, st in enumerate(stages)]
    stage_rps = [(r, i) for r, i in stage_rps if r is not None]
    peak = stages[max(stage_rps)[1]] if stage_rps else None

    m["rps"] = first(s, "max_rps")
    if m["rps"] is None and stage_rps:
        m["rps"] = max(stage_rps)[0]
    for key in ("p50_ms", "p99_ms", "p999_ms"):
        m[key] = first(peak, key) if peak is not None else None
        if m[key] is None:
            m[key] = first(s, key)

    failed = total = 0.0
    counted = False
    for st in stages:
        f, t = first(st, "failed_requests"), first(st, "total_requests")
        if t is not None:
            total += t
            failed += f or 0.0
            counted = True
    if not counted:
        f, t = first(s, "failed_requests"), first(s, "total_requests")
        if t is not None:
            failed, total, counted = (f or 0.0), t, True
    if counted and total > 0:
        m["error_rate"] = failed / total
    elif counted:
        m["error_rate"] = 0.0 if failed == 0 else None

    return {
        "metrics": m,
        "failed_requests": failed if counted else None,
        "total_requests": total if counted else None,
        "client_limits": s.get("client_limits"),
        "client_limits_hit": limits_hit(s.get("client_limits")),
        "peak_stage": stages.index(peak) if peak is not None else None,
        "stages": [
            {k: st.get(k) for k in ("rps", "p50_ms", "p99_ms", "p999_ms", "failed_requests", "total_requests") if k in st}
            for st in stages
        ],
        "notes": notes,
    }


def agg(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    out = {"n": len(vals), "mean": statistics.fmean(vals), "min": min(vals), "max": max(vals), "values": vals}
    out["stdev"] = statistics.stdev(vals) if len(vals) > 1 else None
    return out


def fmt(key, v):
    if v is None:
        return "n/a"
    if key == "error_rate":
        return f"{v * 100:.3f}%"
    if key == "rps":
        return f"{v:,.0f}"
    return f"{v:.3f}"


def fmt_delta(key, d, pct):
    if d is None:
        return "n/a"
    sign = "+" if d >= 0 else "−"
    if key == "error_rate":
        s = f"{sign}{abs(d) * 100:.3f} pp"
    elif key == "rps":
        s = f"{sign}{abs(d):,.0f}"
    else:
        s = f"{sign}{abs(d):.3f} ms"
    if pct is not None:
        s += f" ({sign}{abs(pct):.1f}%)"
    return s


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = argv[1]
    runs_tsv = os.path.join(out, "runs.tsv")
    if not os.path.exists(runs_tsv):
        print(f"compare.py: {runs_tsv} not found", file=sys.stderr)
        return 1
    meta = read_meta(os.path.join(out, "meta.tsv"))
    load_args = []
    la = os.path.join(out, "load-args.txt")
    if os.path.exists(la):
        with open(la, encoding="utf-8") as fh:
            load_args = [line.rstrip("\n") for line in fh]

    rows = read_tsv(runs_tsv)
    order, runs = [], []
    for row in rows:
        name = row["profile"]
        if name not in order:
            order.append(name)
        r = run_metrics(os.path.join(out, row["dir"]))
        ok = row.get("apply_exit") == "0" and row.get("load_exit") == "0"
        if not ok:
            r["notes"].append(f"apply exit {row.get('apply_exit')}, load exit {row.get('load_exit')}")
        runs.append({
            "index": int(row["index"]),
            "profile": name,
            "repeat": int(row["repeat"]),
            "dir": row["dir"],
            "apply_exit": int(row["apply_exit"]),
            "load_exit": int(row["load_exit"]),
            "revert_exit": int(row["revert_exit"]),
            "ok": ok,
            **r,
        })
    ref = meta.get("reference") or (order[0] if order else None)

    profiles = {}
    for name in order:
        mine = [r for r in runs if r["profile"] == name]
        good = [r for r in mine if r["ok"]]
        hit = sorted({h for r in mine for h in r["client_limits_hit"]})
        profiles[name] = {
            "runs": len(mine),
            "ok_runs": len(good),
            "metrics": {k: agg([r["metrics"][k] for r in good]) for k, *_ in METRICS},
            "client_limits_hit": hit,
        }

    noise = {}
    refp = profiles.get(ref)
    for key, *_ in METRICS:
        a = refp["metrics"][key] if refp else None
        if a is None or a["n"] < 2:
            noise[key] = {"band": None, "n": a["n"] if a else 0, "note": "needs >= 2 successful reference runs"}
            continue
        band = max(a["max"] - a["min"], 2 * (a["stdev"] or 0.0))
        noise[key] = {
            "band": band,
            "band_pct": (band / abs(a["mean"]) * 100) if a["mean"] else None,
            "n": a["n"],
            "range": a["max"] - a["min"],
            "stdev": a["stdev"],
        }

    comparison = {}
    for name in order:
        if name == ref:
            continue
        comparison[name] = {}
        for key, _label, _unit, higher_better in METRICS:
            base = refp["metrics"][key] if refp else None
            mine = profiles[name]["metrics"][key]
            entry = {"reference": base["mean"] if base else None, "value": mine["mean"] if mine else None}
            if base is None or mine is None:
                entry.update(delta=None, delta_pct=None, exceeds_noise=None, verdict="n/a")
            else:
                d = mine["mean"] - base["mean"]
                pct = (d / abs(base["mean"]) * 100) if base["mean"] else None
                band = noise[key]["band"]
                exceeds = None if band is None else abs(d) > band
                if exceeds is None:
                    verdict = "noise unknown"
                elif not exceeds:
                    verdict = "within noise"
                else:
                    verdict = "better" if (d > 0) == higher_better else "worse"
                entry.update(delta=d, delta_pct=pct, noise_band=band, exceeds_noise=exceeds, verdict=verdict)
            comparison[name][key] = entry

    result = {
        "reference": ref,
        "repeat_reference": int(meta.get("repeat_reference", "0") or 0),
        "meta": meta,
        "load_args": load_args,
        "noise_rule": "band = max(max - min, 2 * stdev) of the reference runs; a difference exceeds noise when |delta| > band",
        "profiles": profiles,
        "noise": noise,
        "comparison": comparison,
        "runs": runs,
    }
    with open(os.path.join(out, "comparison.json"), "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2, sort_keys=False)
        fh.write("\n")

    md = []
    md.append("# coregate tuning experiment")
    md.append("")
    md.append(f"- host: {meta.get('host', '?')}, kernel {meta.get('kernel', '?')}, {meta.get('cpus', '?')} CPUs")
    md.append(f"- started {meta.get('started', '?')}, finished {meta.get('finished', '?')}")
    md.append(f"- load: `coregate load --out RUNDIR {' '.join(load_args)}`".rstrip())
    md.append(f"- reference profile: **{ref}**, run {profiles.get(ref, {}).get('runs', 0)} time(s)")
    md.append("")
    md.append("## Results per profile")
    md.append("")
    md.append("Means over the successful runs of each profile; latency is taken from each run's peak-RPS stage.")
    md.append("")
    md.append("| profile | runs ok | RPS | p50 ms | p99 ms | p99.9 ms | errors | client limits hit |")
    md.append("|---|---|---|---|---|---|---|---|")
    for name in order:
        p = profiles[name]
        cells = []
        for key, *_ in METRICS:
            a = p["metrics"][key]
            cells.append(fmt(key, a["mean"] if a else None))
        limits = ", ".join(p["client_limits_hit"]) or "none"
        md.append(f"| {name} | {p['ok_runs']}/{p['runs']} | " + " | ".join(cells) + f" | {limits} |")
    md.append("")
    md.append(f"## Run-to-run noise ({ref} repeated)")
    md.append("")
    md.append("| metric | runs | min | max | stdev | noise band |")
    md.append("|---|---|---|---|---|---|")
    for key, label, *_ in METRICS:
        a = refp["metrics"][key] if refp else None
        nz = noise[key]
        band = fmt(key, nz["band"]) if nz["band"] is not None else "unknown"
        if nz["band"] is not None and nz.get("band_pct") is not None:
            band += f" ({nz['band_pct']:.1f}%)"
        md.append(
            f"| {label} | {a['n'] if a else 0} | {fmt(key, a['min'] if a else None)} | {fmt(key, a['max'] if a else None)} | "
            f"{fmt(key, a['stdev']) if a and a['stdev'] is not None else 'n/a'} | {band} |"
        )
    md.append("")
    md.append("Noise band = max(max − min, 2 × stdev) over the reference runs.")
    md.append("")
    md.append(f"## Differences from {ref}")
    md.append("")
    if not comparison:
        md.append("No other profile was run.")
    else:
        md.append("| profile | metric | " + ref + " | profile | delta | verdict |")
        md.append("|---|---|---|---|---|---|")
        for name, per in comparison.items():
            for key, label, *_ in METRICS:
                e = per[key]
                verdict = e["verdict"]
                if e.get("exceeds_noise"):
                    verdict = f"**{verdict}** (beyond noise)"
                md.append(
                    f"| {name} | {label} | {fmt(key, e['reference'])} | {fmt(key, e['value'])} | "
                    f"{fmt_delta(key, e.get('delta'), e.get('delta_pct'))} | {verdict} |"
                )
        md.append("")
        flagged = [
            f"{name} {label} ({comparison[name][key]['verdict']})"
            for name in comparison
            for key, label, *_ in METRICS
            if comparison[name][key].get("exceeds_noise")
        ]
        md.append("Differences beyond run-to-run noise: " + ("; ".join(flagged) if flagged else "none") + ".")
    md.append("")
    md.append("## Runs")
    md.append("")
    md.append("| # | profile | repeat | apply | load | revert | RPS | p99 ms | errors | notes |")
    md.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        m = r["metrics"]
        md.append(
            f"| {r['index']} | {r['profile']} | {r['repeat']} | {r['apply_exit']} | {r['load_exit']} | {r['revert_exit']} | "
            f"{fmt('rps', m['rps'])} | {fmt('p99_ms', m['p99_ms'])} | {fmt('error_rate', m['error_rate'])} | "
            f"{'; '.join(r['notes']) or ''} |"
        )
    md.append("")
    with open(os.path.join(out, "comparison.md"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
