#!/usr/bin/python3
"""Draws the results of bench/python_bench.py --json PATH.

One column per CPU placement; rows: churn by name and churn by pickled array (arrays/s, log
scale, a group of bars per size, one bar per method), and the seed runs (seconds per run,
shmbroker next to multiprocessing.shared_memory).

    /usr/bin/python3 bench/python_bench.py --json /tmp/pb.json
    /usr/bin/python3 bench/plot.py /tmp/pb.json --out bench/results.png

Needs matplotlib (Debian: apt-get install python3-matplotlib).
"""

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

METHOD_ORDER = ["shmbroker", "shmbroker-refcount", "shmbroker-ahead", "stdlib", "pickled-pipe",
                "bare-pipe"]
COLORS = {"shmbroker": "tab:blue", "shmbroker-refcount": "tab:cyan",
          "shmbroker-ahead": "tab:purple", "stdlib": "tab:orange", "pickled-pipe": "tab:green",
          "bare-pipe": "tab:gray"}
TITLES = {"churn-name": "Churn by name", "churn-pickle": "Churn by pickled array"}
PLACEMENTS = {"one": "one CPU", "across": "across CPUs", "apart": "daemon on its own CPU"}


def size_label(size):
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"


def fmt_seconds(t):
    return f"{t:.2f} s" if t >= 1 else f"{t * 1e3:.1f} ms"


def draw_churn(ax, rows, title):
    sizes = sorted({r["size"] for r in rows})
    methods = [m for m in METHOD_ORDER if any(r["method"] == m for r in rows)]
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        by_size = {r["size"]: r for r in rows if r["method"] == m}
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(sizes))]
        ys = [by_size[s]["per_s"] if s in by_size else 0 for s in sizes]
        label = next(r["label"] for r in rows if r["method"] == m)
        bars = ax.bar(xs, ys, width, label=label, color=COLORS.get(m))
        ax.bar_label(bars, labels=[f"{y:,.0f}" for y in ys], fontsize=6, rotation=90,
                     padding=2)
    ax.set_yscale("log")
    ax.set_xticks(range(len(sizes)), [size_label(s) for s in sizes])
    ax.set_ylabel("arrays/s (higher is better)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", ncols=2)


def draw_seed(ax, seed, title):
    runs = seed["runs"]
    xs = range(len(runs))
    w = 0.38
    for k, (key, label, color) in enumerate((
            ("shmbroker_s", "shmbroker", COLORS["shmbroker"]),
            ("stdlib_s", "multiprocessing.shared_memory", COLORS["stdlib"]))):
        ys = [r[key] for r in runs]
        bars = ax.bar([x + (k - 0.5) * w for x in xs], ys, w, label=label, color=color)
        ax.bar_label(bars, labels=[fmt_seconds(y) for y in ys], fontsize=7, padding=2)
    ax.set_xticks(list(xs), [f"run {r['run']}\nshmbroker ÷ stdlib: {r['ratio']:.2f}"
                             for r in runs], fontsize=8)
    ax.set_ylabel("seconds (lower is better)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", ncols=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", help="the file written by python_bench.py --json")
    ap.add_argument("--out", default=os.path.join(HERE, "results.png"),
                    help="the PNG to write (default bench/results.png)")
    args = ap.parse_args()
    with open(args.json) as f:
        data = json.load(f)
    placements = data["placements"]
    if not placements:
        raise SystemExit(f"{args.json} holds no results")
    kinds = [k for k in ("churn-name", "churn-pickle", "seed")
             if any(k in p for p in placements)]

    fig, axes = plt.subplots(len(kinds), len(placements), squeeze=False,
                             figsize=(6.5 * len(placements), 4.2 * len(kinds)), sharey="row")
    for col, p in enumerate(placements):
        where = PLACEMENTS.get(p["placement"], p["placement"])
        for row, kind in enumerate(kinds):
            ax = axes[row][col]
            if kind not in p:
                ax.set_axis_off()
                continue
            if kind == "seed":
                n = p["seed"]["n"]
                draw_seed(ax, p["seed"], f"Seed: a child checks {n:,} float64 "
                          f"({n * 8 / 1e6:,.0f} MB), {where}")
            else:
                items = p[kind][0]["items"]
                draw_churn(ax, p[kind], f"{TITLES[kind]}, {where} (median of {items})")
    # The rows share their y axis: limits from every panel of the row, with room on top for the
    # bar labels and the legend.
    for row, kind in enumerate(kinds):
        if kind == "seed":
            top = max(max(r["shmbroker_s"], r["stdlib_s"])
                      for p in placements if kind in p for r in p[kind]["runs"])
            axes[row][0].set_ylim(0, top * 1.35)
        else:
            rates = [r["per_s"] for p in placements if kind in p for r in p[kind]]
            axes[row][0].set_ylim(min(rates) / 2, max(rates) * 30)
    meta = data.get("meta", {})
    fig.suptitle(f"shmbroker Python benchmark ({meta.get('time', '')}; "
                 f"shmbrokerd {meta.get('daemon_version', '?')}, "
                 f"Python {meta.get('python', '?')}, NumPy {meta.get('numpy', '?')}, "
                 f"{meta.get('cpus', '?')} CPUs)", fontsize=11)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
