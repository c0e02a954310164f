"""``hubbub bench``: rendering, isolation of failing modules, results folder."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from loadtest import bench


ROWS: list[dict[str, Any]] = [
    {"bench": "relay", "metric": "throughput, 8 pairs", "relay": 812.5, "direct": 1650.0,
     "unit": "MB/s", "ratio": 0.49},
    {"bench": "spaces", "metric": "joins/s, 2 gateways vs 1", "value": 1234.0, "ratio": 1.8},
    {"bench": "media", "status": "FAILED", "error": "boom"},
]


def test_normalise_flattens_and_rejects_bad_shapes() -> None:
    rows = bench.normalise("x", [{"a": 1.5, "b": float("nan"), "c": [1, 2], "bench": "y"}])
    assert rows == [{"bench": "x", "a": 1.5, "b": "nan", "c": "[1, 2]"}]
    assert bench.normalise("x", "oops")[0]["status"] == "FAILED"
    assert bench.normalise("x", [])[0]["status"] == "FAILED"
    assert bench.normalise("x", [1, 2])[0]["status"] == "FAILED"


def test_markdown_table_has_every_column_and_failed_rows_last() -> None:
    table = bench.markdown_table(ROWS)
    header = table.splitlines()[0]
    assert header.startswith("| bench | metric |")
    assert header.rstrip(" |").endswith("status | error")
    assert "| relay | throughput, 8 pairs | 812 | 1,650 | MB/s | 0.49 |" in table
    assert "FAILED" in table and "boom" in table
    assert len(table.splitlines()) == 2 + len(ROWS)


def test_report_has_one_table_per_bench_with_its_own_columns() -> None:
    report = bench.markdown_report(ROWS)
    assert "**relay**\n\n| metric | relay | direct | unit | ratio |" in report
    assert "**spaces**\n\n| metric | value | ratio |" in report
    assert "**media**\n\n| status | error |\n|---|---|\n| FAILED | boom |" in report


def test_csv_and_plot(tmp_path: Path) -> None:
    bench.write_csv(ROWS, tmp_path / "b.csv")
    with open(tmp_path / "b.csv") as f:
        got = list(csv.DictReader(f))
    assert [r["bench"] for r in got] == ["relay", "spaces", "media"]
    assert got[1]["ratio"] == "1.8"
    assert bench.plot(ROWS, tmp_path / "b.png", "t")
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not bench.plot([{"bench": "x", "metric": "words only"}], tmp_path / "n.png", "t")


def test_child_reports_a_crashing_module_as_a_failed_row(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fake = types.ModuleType("loadtest.bench_fakecrash")

    def run(quick: bool) -> list[dict[str, Any]]:
        raise RuntimeError("the cluster did not start")

    fake.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "loadtest.bench_fakecrash", fake)
    assert bench._child("fakecrash", True) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith(bench.MARKER)][-1]
    rows = json.loads(line[len(bench.MARKER):])
    assert rows[0]["status"] == "FAILED"
    assert "the cluster did not start" in rows[0]["error"]


def test_run_module_isolates_a_missing_module(tmp_path: Path) -> None:
    rows = bench.run_module("does_not_exist", True, 60, tmp_path / "log")
    assert rows[0]["bench"] == "does_not_exist"
    assert rows[0]["status"] == "FAILED"
    assert "No module named" in rows[0]["error"]
    assert (tmp_path / "log").exists()


def test_main_writes_the_results_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench, "discover", lambda: ["good", "bad"])

    def fake_run(name: str, quick: bool, timeout: float, log: Path | None) -> list[dict[str, Any]]:
        assert quick and timeout == 300.0
        if name == "bad":
            return [bench.failed_row(name, "Traceback...\nValueError: broken")]
        return bench.normalise(name, [{"metric": "m", "value": 2.0, "ratio": 2.0}])

    monkeypatch.setattr(bench, "run_module", fake_run)
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "**good**" in out and "| m | 2 | 2 |" in out and "ValueError: broken" in out
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.endswith("-quick")
    assert {p.name for p in run_dir.iterdir()} >= {"bench.csv", "bench.md", "bench.png",
                                                    "bench.json"}
    (run_dir / "bench.png").unlink()
    assert bench.main(["--render", str(run_dir)]) == 1
    assert (run_dir / "bench.png").exists()
    assert bench.main(["--render", str(tmp_path / "missing")]) == 2
    assert bench.main(["--only", "nope", "--out", str(tmp_path)]) == 2


def test_bench_command_lists_modules() -> None:
    proc = subprocess.run([sys.executable, "-m", "hubbub", "bench", "--list"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.split() == bench.discover() or proc.stdout.strip() == "(no bench modules)"


def test_summary_table_has_each_headline_figure() -> None:
    summary = bench.summary_table(ROWS)
    assert "| relay | throughput, 8 pairs | 0.49 (ratio) |" in summary
    assert "| spaces | joins/s, 2 gateways vs 1 | 1.8 (ratio) |" in summary
    assert "| media | FAILED: boom | |" in summary
    assert bench.summary_table([{"bench": "x", "metric": "words"}]) == ""
    assert bench.markdown_report(ROWS).startswith("| bench | figure | ratio / value |")


def test_median_rows_over_several_runs() -> None:
    runs = [[{"case": "a", "value": v, "p50": p, "ok": ok, "note": n}]
            for v, p, ok, n in ((3.0, 1, True, "first"), (1.0, None, False, "second"),
                                (2.0, float("nan"), True, "third"))]
    assert bench.median_rows(runs) == [{"case": "a", "value": 2.0, "p50": 1, "ok": True,
                                        "note": "first"}]
    with pytest.raises(ValueError):
        bench.median_rows([[{"a": 1}], []])


def test_module_main_reports_medians_judged_again(capsys: pytest.CaptureFixture[str]) -> None:
    values = iter([5.0, 1.0, 2.0])

    def run(quick: bool) -> list[dict[str, Any]]:
        v = next(values)
        return [{"case": "c", "value": v, "ok": v <= 2.0}]

    def judge(row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "ok": row["value"] <= 2.0}

    assert bench.module_main(["--runs", "3"], "p", "d", run, "q", judge) == 0
    out = capsys.readouterr().out
    assert "| c | 2 | yes |" in out and "medians of 3 runs" in out
