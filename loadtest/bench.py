"""``hubbub bench``: every capability's benchmark in one table, with CSV and a plot per run.

Each ``loadtest/bench_<name>.py`` module exposes ``run(quick: bool) -> list[dict]``: rows of
figures measured in one run, typically a ratio between two set-ups measured side by side (two
gateways vs one, relay vs a direct pipe, …). ``hubbub bench`` runs every module that exists in
its own subprocess (so a crash, a hang or a leaked event loop stays inside it, bounded by
``--timeout``), then writes ``loadtest/results/<timestamp>/`` with ``bench.csv``, ``bench.md``,
``bench.png`` and one log per module, and prints the Markdown table. A module that fails becomes
a failed row; the others still make the table.

    hubbub bench --quick                 # the short version (CI-sized)
    hubbub bench --only relay spaces     # a subset
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import os
import pkgutil
import re
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


__all__ = [
    "discover",
    "main",
    "markdown_report",
    "markdown_table",
    "median_rows",
    "normalise",
    "plot",
    "run_module",
    "write_csv",
]

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MARKER = "@@hubbub-bench-rows@@ "
LABEL_KEYS = ("metric", "figure", "name", "what", "scenario", "case", "label", "test")
RATIO_KEYS = ("ratio", "speedup", "factor", "x")


def discover() -> list[str]:
    """Names (``relay`` for ``bench_relay``) of the bench modules present, sorted."""
    import loadtest

    return sorted(m.name.removeprefix("bench_") for m in pkgutil.iter_modules(loadtest.__path__)
                  if m.name.startswith("bench_") and not m.ispkg)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


def normalise(bench: str, rows: Any) -> list[dict[str, Any]]:
    """Rows as flat JSON-able dicts with ``bench`` first; anything else becomes a failed row."""
    if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
        return [failed_row(bench, f"run() returned {type(rows).__name__}, not a list of dicts")]
    if not rows:
        return [failed_row(bench, "run() returned no rows")]
    out: list[dict[str, Any]] = []
    for row in rows:
        flat: dict[str, Any] = {"bench": bench}
        for key, value in row.items():
            if str(key) != "bench":
                flat[str(key)] = _jsonable(value)
        out.append(flat)
    return out


def failed_row(bench: str, error: str) -> dict[str, Any]:
    return {"bench": bench, "status": "FAILED", "error": error.strip().splitlines()[-1][:300]
            if error.strip() else "failed"}


def _child(name: str, quick: bool) -> int:
    """Run one bench module in this (child) process; print its rows after the marker."""
    try:
        module = importlib.import_module(f"loadtest.bench_{name}")
        rows = module.run(quick)
        payload = normalise(name, rows)
    except BaseException:  # report anything, even SystemExit, as the module's failure
        payload = [failed_row(name, traceback.format_exc())]
    sys.stdout.flush()
    sys.stdout.write("\n" + MARKER + json.dumps(payload) + "\n")
    sys.stdout.flush()
    return 0


def run_module(name: str, quick: bool, timeout: float,
               log_path: Path | None = None) -> list[dict[str, Any]]:
    """Run ``loadtest.bench_<name>`` in a subprocess; its rows, or one failed row."""
    cmd = [sys.executable, "-m", "loadtest.bench", "--child", name] + (["--quick"] if quick else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, _ = proc.communicate()
        text = out.decode(errors="replace")
        _save(log_path, text)
        return [failed_row(name, f"timed out after {timeout:.0f}s")]
    finally:
        _kill_group(proc)  # whatever the module left behind (clusters it started)
    text = out.decode(errors="replace")
    _save(log_path, text)
    for line in reversed(text.splitlines()):
        if line.startswith(MARKER):
            try:
                rows = json.loads(line[len(MARKER):])
            except ValueError:
                break
            return normalise(name, rows) if rows and rows[0].get("status") != "FAILED" else rows
    tail = text.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
    return [failed_row(name, f"no rows (exit code {proc.returncode}): {tail[0]}")]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL if proc.poll() is None else signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass


def _save(path: Path | None, text: str) -> None:
    if path is not None:
        path.write_text(text)


def columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """``bench`` first, then every key in first-seen order (``status``/``error`` last)."""
    cols: list[str] = ["bench"] if any("bench" in r for r in rows) else []
    for row in rows:
        for key in row:
            if key not in cols and key not in ("status", "error"):
                cols.append(key)
    for tail in ("status", "error"):
        if any(tail in r for r in rows):
            cols.append(tail)
    return cols


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e6:
            return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def median_rows(runs: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Row by row over several runs of one module: the median of every numeric column
    (values that are not finite numbers left out), the majority of every flag, text from the
    first run. Every run must give the same rows in the same order."""
    out: list[dict[str, Any]] = []
    for rows in zip(*runs, strict=True):
        merged: dict[str, Any] = {}
        for key, first in rows[0].items():
            values = [r.get(key) for r in rows]
            if isinstance(first, bool):
                merged[key] = sum(v is True for v in values) * 2 > len(values)
            elif isinstance(first, int | float):
                nums = [v for v in values if _number(v) is not None]
                merged[key] = statistics.median(nums) if nums else first
            else:
                merged[key] = first
        out.append(merged)
    return out


def module_main(argv: Sequence[str] | None, prog: str, description: str,
                run: Callable[[bool], list[dict[str, Any]]], quick_help: str,
                judge: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> int:
    """``python -m loadtest.bench_<name> [--quick] [--runs N]``: run one module (N times:
    medians per row, re-judged by ``judge`` against their targets), print its table; 1 if a
    bar failed."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--runs", type=int, default=1, help="repeat and report medians")
    args = parser.parse_args(argv)
    runs = [run(args.quick) for _ in range(max(1, args.runs))]
    rows = median_rows(runs) if len(runs) > 1 else runs[0]
    if judge is not None and len(runs) > 1:
        rows = [judge(r) for r in rows]
    print(markdown_table(rows))
    if len(runs) > 1:
        print(f"\nmedians of {len(runs)} runs (text columns such as notes from the first run)")
    return 0 if all(r.get("ok") is not False for r in rows) else 1


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    cols = columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    cols = columns(rows)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({c: row.get(c, "") for c in cols})


def summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Every row's headline figure (its ratio, else its value) in one table; failures too."""
    lines = ["| bench | figure | ratio / value |", "|---|---|---|"]
    for r in rows:
        if r.get("status") == "FAILED":
            lines.append(f"| {r['bench']} | FAILED: {_fmt(r.get('error'))} | |")
            continue
        pv = _plot_value(r)
        if pv is None:
            continue
        is_ratio, key, num = pv
        shown = f"{_fmt(num)} ({key})" if is_ratio else f"{_fmt(num)} {key}"
        lines.append(f"| {r['bench']} | {_fmt(_label(r))} | {shown} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def markdown_report(rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary table, then one table per bench module with only the columns it uses."""
    parts: list[str] = []
    summary = summary_table(rows)
    if summary:
        parts.append(summary)
    for bench in dict.fromkeys(str(r["bench"]) for r in rows):
        mine = [{k: v for k, v in r.items() if k != "bench"} for r in rows
                if r["bench"] == bench]
        cols = columns([{"bench": bench, **r} for r in mine])[1:]
        lines = [f"**{bench}**", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in mine]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _label(row: Mapping[str, Any]) -> str:
    for key in LABEL_KEYS:
        if isinstance(row.get(key), str) and row[key]:
            return str(row[key])
    texts = [str(v) for k, v in row.items() if k != "bench" and isinstance(v, str)]
    return texts[0] if texts else str(row["bench"])


def _is_ratio_key(key: str) -> bool:
    low = key.lower()
    return (low in RATIO_KEYS or "ratio" in low or low.startswith("x_") or low.endswith("_x")
            or re.fullmatch(r"[a-z0-9_]+/[a-z0-9_]+", low) is not None)


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _plot_value(row: Mapping[str, Any]) -> tuple[bool, str, float] | None:
    """What to plot for a row: ``(is_ratio, key or unit, number)``; a ratio when it has one."""
    for key in row:
        if _is_ratio_key(key) and (num := _number(row[key])) is not None:
            return True, key, num
    if (num := _number(row.get("value"))) is not None:
        return False, str(row.get("unit") or "value"), num
    return None


def plot(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> bool:
    """A bar chart per bench module's ratios and per module and unit of its plain values (each
    with its own scale); False if nothing to plot."""
    groups: dict[str, list[tuple[str, str, float, bool]]] = {}
    for r in rows:
        pv = _plot_value(r)
        if pv is not None:
            is_ratio, key, num = pv
            group = str(r["bench"]) if is_ratio else f"{r['bench']} ({key})"
            groups.setdefault(group, []).append((_label(r), key, num, is_ratio))
    if not groups:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    heights = [0.45 * len(g) + 0.9 for g in groups.values()]
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, sum(heights) + 0.6), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (bench, points) in zip(axes[:, 0], groups.items(), strict=True):
        ratio = [p[3] for p in points]
        ax.barh(range(len(points)), [p[2] for p in points],
                color=["#4c72b0" if r else "#999999" for r in ratio])
        ax.set_yticks(range(len(points)),
                      [f"{p[0][:60]} [{p[1]}]" if p[3] else p[0][:70] for p in points],
                      fontsize=8)
        ax.invert_yaxis()
        if any(ratio):
            ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
        for i, p in enumerate(points):
            ax.annotate(_fmt(p[2]), (p[2], i), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize=7)
        ax.set_title(bench, fontsize=9, loc="left")
    fig.suptitle(f"{title}  (blue: ratio, 1.0 = parity; grey: value)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hubbub bench",
                                description="run every capability's benchmark; table, CSV, plot")
    p.add_argument("--quick", action="store_true", help="the short version of every benchmark")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these bench modules")
    p.add_argument("--out", type=Path, default=RESULTS,
                   help="results folder (a timestamped run folder is created inside)")
    p.add_argument("--timeout", type=float, default=0.0,
                   help="seconds per module (default 300 with --quick, else 1800)")
    p.add_argument("--list", action="store_true", help="list the bench modules and exit")
    p.add_argument("--render", type=Path, metavar="RUN_DIR",
                   help="re-render the table and plot of an earlier run (its bench.json)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    if args.child:
        return _child(args.child, args.quick)
    if args.render:
        return _render(args.render)
    names = discover()
    if args.list:
        print("\n".join(names) or "(no bench modules)")
        return 0
    if args.only:
        unknown = [n for n in args.only if n not in names]
        if unknown:
            sys.stderr.write(f"hubbub bench: error: no bench module {', '.join(unknown)} "
                             f"(have: {', '.join(names) or 'none'})\n")
            return 2
        names = [n for n in names if n in args.only]
    if not names:
        sys.stderr.write("hubbub bench: error: no loadtest/bench_*.py modules found\n")
        return 2
    timeout = args.timeout or (300.0 if args.quick else 1800.0)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = args.out / (stamp + ("-quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for name in names:
        started = time.monotonic()
        print(f"hubbub bench: {name} …", file=sys.stderr, flush=True)
        got = run_module(name, args.quick, timeout, out / f"{name}.log")
        rows += got
        state = "FAILED" if any(r.get("status") == "FAILED" for r in got) else "ok"
        print(f"hubbub bench: {name} {state} ({time.monotonic() - started:.0f}s, "
              f"{len(got)} rows)", file=sys.stderr, flush=True)
    title = f"hubbub bench{' --quick' if args.quick else ''} {stamp} UTC"
    (out / "bench.json").write_text(json.dumps({"title": title, "rows": rows}, indent=1))
    return _write(rows, out, title)


def _write(rows: list[dict[str, Any]], out: Path, title: str) -> int:
    table = markdown_report(rows)
    write_csv(rows, out / "bench.csv")
    (out / "bench.md").write_text(f"{title}\n\n{table}\n")
    plotted = plot(rows, out / "bench.png", title)
    print(table)
    print(f"\nresults: {out}" + ("" if plotted else " (no plot: nothing numeric or no matplotlib)"))
    return 1 if any(r.get("status") == "FAILED" for r in rows) else 0


def _render(run_dir: Path) -> int:
    try:
        saved = json.loads((run_dir / "bench.json").read_text())
        rows = [dict(r) for r in saved["rows"]]
        title = str(saved.get("title") or run_dir.name)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.stderr.write(f"hubbub bench: error: cannot read {run_dir / 'bench.json'}: {exc}\n")
        return 2
    return _write(rows, run_dir, title)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
