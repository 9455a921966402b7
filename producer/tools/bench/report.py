"""``embedq bench``'s reports: a Markdown table, the JSON of every number, and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..local import model_label
from .measure import Cell


def fmt(cell: Cell) -> str:
    s = cell.summary()
    return (
        f"{s['mode']:6} t={s['threads']} {s['length']:5} bs={s['batch']:2} conc={s['concurrency']:2} | "
        f"avg={s['avg_ms']:.1f} p50={s['p50_ms']:.1f} p95={s['p95_ms']:.1f} max={s['max_ms']:.1f} ms | "
        f"{s['per_text_ms']:.1f} ms/text, {s['texts_per_s']:.0f} texts/s ({s['requests']} req)"
    )


TARGETS = (
    ("t1_throughput_ratio", ">=", 0.95, "1. throughput, 10 producers / in-process batch-8"),
    ("t2_p95_ratio", "<=", 0.5, "2. p95 at concurrency 10 / naive-concurrent p95"),
    ("t3_idle_extra_ms", "<=", 2.0, "3. one request at idle: p50 - in-process batch-1 p50 (ms)"),
    ("idle_ratio", "<=", 1.0, "3b. one request at idle: p50 / in-process batch-1 p50"),
)
"""The queue's own targets (the in-process baselines are torch). The onnx backend's goals from its
issue: throughput >= 1.5x and idle <= 0.5x; a cached query: p50 <= 1 ms."""


def markdown(result: dict[str, Any]) -> str:
    """The report: machine, targets per policy, then the sweep."""
    m, t = result["machine"], result["targets"]
    lines = [
        f"# embedq bench: {model_label(result['model'])}",
        "",
        f"{m['cpu']}, {m['cores']} cores; Python {m['python']}, torch {m['torch']}, "
        f"sentence-transformers {m['sentence_transformers']}, redis-py {m['redis_py']}; {m['date']}.",
        "",
        "## Targets (2 threads, short texts)",
        "",
        f"Baselines: in-process batch-1 p50 {t['inproc_bs1']['p50_ms']:.1f} ms; in-process batch-8 "
        f"{t['inproc_bs8']['texts_per_s']:.0f} texts/s; naive concurrent (10 threads) p95 "
        f"{t['naive_c10']['p95_ms']:.1f} ms.",
        "",
        "Columns: the batching policies on torch, then each other backend (adaptive policy), then "
        "the query cache on the last one, its texts repeating at the stated hit ratio (`+cache`). "
        "Baselines are in-process torch.",
        "",
        "| target | goal | " + " | ".join(t["policies"]) + " |",
        "|---|---|" + "---|" * len(t["policies"]),
    ]
    for key, op, goal, label in TARGETS:
        row = [
            "-" if p.get(key) is None else f"{p[key]:.2f}{'' if ok(p[key], op, goal) else ' ✗'}"
            for p in t["policies"].values()
        ]
        lines.append(f"| {label} | {op} {goal:g} | " + " | ".join(row) + " |")
    ov = t["overhead"]
    lines += [
        f"| 4. worker time per batch of 8 besides encode, p50 (ms) | <= 1 | {ov['p50_ms']:.2f} "
        f"(p95 {ov['p95_ms']:.2f}; all policies) |" + " |" * (len(t["policies"]) - 1),
        "",
        "| variant | backend | policy | cache hit ratio | idle p50 | idle p95 | 10 producers: texts/s "
        "| p50 | p95 | max | cached query p50 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in t["policies"].items():
        i, c = p["idle"], p["c10"]
        hit = p.get("cache_hit_idle")
        lines.append(
            f"| {name} | {p.get('backend', 'torch')} | {p.get('policy', name)} | "
            f"{p.get('cache_hit_ratio', 0.0):.0%} | {i['p50_ms']:.1f} ms | {i['p95_ms']:.1f} ms | "
            f"{c['texts_per_s']:.0f} | {c['p50_ms']:.1f} ms | {c['p95_ms']:.1f} ms | {c['max_ms']:.1f} ms | "
            f"{'-' if hit is None else format(hit['p50_ms'], '.2f') + ' ms'} |"
        )
    lines += [
        "",
        "## Sweep",
        "",
        "inproc: one encode at a time; naive: N threads encoding at once; queue: N producers sending "
        "one text per request through Redis to one worker (adaptive policy). Latency per request (one "
        "encode call, or one round trip); per-text cost = wall time / texts.",
        "",
        "| mode | threads | texts | batch | concurrency | requests | avg ms | p50 ms | p95 ms | max ms "
        "| ms/text | texts/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result["sweep"]:
        lines.append(
            f"| {s['mode']} | {s['threads']} | {s['length']} | {s['batch']} | {s['concurrency']} | "
            f"{s['requests']} | {s['avg_ms']:.1f} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | "
            f"{s['max_ms']:.1f} | {s['per_text_ms']:.1f} | {s['texts_per_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def ok(value: float, op: str, goal: float) -> bool:
    return value >= goal if op == ">=" else value <= goal


def chart(result: dict[str, Any], path: Path) -> None:
    """Latency vs concurrency per mode, and per-text cost vs batch size (threads=2 where present)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = result["sweep"]
    threads = 2 if any(s["threads"] == 2 for s in sweep) else sweep[0]["threads"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for length, style in (("short", "-"), ("long", "--")):
        for mode, color in (("naive", "tab:red"), ("queue", "tab:blue")):
            # naive at concurrency 1 is the in-process cell
            pts = sorted(
                (s["concurrency"], s["p95_ms"])
                for s in sweep
                if (s["mode"] == mode or (mode == "naive" and s["mode"] == "inproc"))
                and s["threads"] == threads
                and s["length"] == length
                and s["batch"] == 1
            )
            if len(pts) > 1:
                xs, ys = zip(*pts, strict=True)
                left.plot(xs, ys, style, color=color, marker="o", label=f"{mode} ({length})")
        pts = sorted(
            (s["batch"], s["per_text_ms"])
            for s in sweep
            if s["mode"] == "inproc" and s["threads"] == threads and s["length"] == length
        )
        if pts:
            right.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                style,
                color="tab:green",
                marker="o",
                label=f"in-process ({length})",
            )
    left.set(
        xlabel="concurrent requests",
        ylabel="p95 latency per request (ms)",
        title=f"p95 latency vs concurrency (1 text per request, {threads} threads)",
    )
    left.legend()
    right.set(
        xlabel="batch size (texts per encode)",
        ylabel="ms per text",
        title=f"per-text cost vs batch size ({threads} threads)",
    )
    right.legend()
    fig.suptitle(f"embedq bench: {model_label(result['model'])} on {result['machine']['cpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(result: dict[str, Any], out: Path) -> list[Path]:
    """results.md, results.json and chart.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    md, js, png = out / "results.md", out / "results.json", out / "chart.png"
    md.write_text(markdown(result), encoding="utf-8")
    js.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    chart(result, png)
    return [md, js, png]
