"""The CPU leaderboard on tiny inputs: Pareto fronts, report structure, skipped entries, CLI.
(No timing thresholds: speed lives in benchmarks/.)"""
import json

import pytest

import convformer

from convformer.bench.leaderboard import (DEFAULT_ENTRIES, Entry, _top1, entry_for, format_leaderboard, markdown_table,
                                          missing_reason, pareto_front, run_leaderboard, write_leaderboard)
from convformer.cli import main

TINY = dict(img_size=32, batch=2, repeats=1, warmup=1, threads=1)


def test_pareto_front_drops_dominated_points_and_keeps_ties():
    points = {"fast": (100.0, 75.0), "accurate": (10.0, 83.0), "middle": (50.0, 80.0),
              "dominated": (40.0, 79.0),      # middle is faster and more accurate
              "same_speed_worse": (50.0, 78.0),  # as fast as middle, less accurate
              "twin_a": (5.0, 84.0), "twin_b": (5.0, 84.0)}  # identical: neither beats the other
    assert pareto_front(points) == {"fast", "accurate", "middle", "twin_a", "twin_b"}
    assert pareto_front({}) == set()


def test_latency_front_uses_lower_is_better():
    # latency is negated for the front: 5 ms at 80% dominates 9 ms at 79%
    assert pareto_front({"a": (-5.0, 80.0), "b": (-9.0, 79.0), "c": (-20.0, 83.0)}) == {"a", "c"}


def test_default_entries_have_sourced_top1_and_unique_specs():
    specs = [e.spec for e in DEFAULT_ENTRIES]
    assert len(specs) == len(set(specs))
    assert {"lowformer_b0", "lowformer_b3@fast", "convformer_s18", "poolformerv2_s12@fast",
            "timm:resnet50"} <= set(specs)
    for e in DEFAULT_ENTRIES:
        top1, source = _top1(e)
        assert 70 < top1 < 90 and source, e.spec
        name = e.spec.removeprefix("timm:").partition("@")[0]
        if name in convformer.list_models():  # ours, and timm's ports of them: the figure is the card's
            assert e.top1 is None and top1 == convformer.model_card(name).metrics["in1k_224"]
            assert source == f"convformer model card {name}"


def test_missing_models_are_reported_not_raised():
    assert missing_reason("convformer_nano@fast") is None and missing_reason("timm:resnet18") is None
    assert "registry" in missing_reason("no_such_model")
    assert "no model" in missing_reason("onnx:timm:no_such_model")


@pytest.fixture(scope="module")
def report():
    entries = [entry_for("convformer_nano"), Entry("timm:resnet18", 69.8, "ResNet (timm)", "test value"),
               entry_for("caformer_s18"), Entry("no_such_model@fast", 80.0, "missing", "test value")]
    return run_leaderboard(entries, **TINY)


def test_report_structure_fronts_and_json_round_trip(report, tmp_path):
    assert report["skipped"] == [{"spec": "no_such_model@fast", "reason": missing_reason("no_such_model")}]
    by = {r["spec"]: r for r in report["entries"]}
    assert list(by) == ["convformer_nano", "timm:resnet18", "caformer_s18"]
    for key in ("cpu", "cores", "threads", "torch", "timm", "onnxruntime", "date"):
        assert key in report["machine"]
    assert report["settings"]["batch"] == 2 and report["settings"]["img_size"] == [32, 32]
    for r in by.values():
        assert r["params"] > 0 and r["macs"] > 0 and r["images_per_s"] > 0 and r["latency_ms"] > 0
    assert by["caformer_s18"]["top1"] == 83.6 and "model card" in by["caformer_s18"]["top1_source"]
    assert by["convformer_nano"]["top1"] is None and by["convformer_nano"]["pareto_throughput"] is None
    # of two rated entries, the more accurate one is always on both fronts, whatever the timings
    assert by["caformer_s18"]["pareto_throughput"] and by["caformer_s18"]["pareto_latency"]
    write_leaderboard(report, tmp_path / "lb.json", tmp_path / "lb.png", tmp_path / "lb.md")
    assert json.loads((tmp_path / "lb.json").read_text()) == report
    assert (tmp_path / "lb.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "lb.md").read_text()
    assert "| `caformer_s18` | 83.6 |" in md and "Skipped `no_such_model@fast`" in md
    table = format_leaderboard(report)
    assert table.splitlines()[0].split()[:3] == ["model", "top-1", "params"]
    assert "skipped no_such_model@fast" in table and markdown_table(report).count("\n| `") == 3


def test_cli_leaderboard_prints_a_table(tmp_path, capsys):
    out = tmp_path / "cli.json"
    code = main(["bench", "--leaderboard", "--models", "convformer_nano,caformer_s18", "--models", "no_such_model",
                 "--img-size", "32", "--batch", "2", "--repeats", "1", "--threads", "1", "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 0
    assert "caformer_s18" in captured.out and "pareto" in captured.out and "skipped no_such_model" in captured.out
    assert [r["spec"] for r in json.loads(out.read_text())["entries"]] == ["convformer_nano", "caformer_s18"]
    assert (tmp_path / "cli.png").exists()


def test_cli_without_specs_or_leaderboard_is_a_one_line_error(capsys):
    assert main(["bench"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--leaderboard" in err and "\n" not in err


def test_benchmark_script_writes_json_png_and_markdown(tmp_path):
    from conftest import load_benchmark
    script = load_benchmark("leaderboard")
    out = tmp_path / "leaderboard.json"
    script.main(["--models", "convformer_nano", "poolformerv2_s12", "--img-size", "32", "--batch", "2",
                 "--repeats", "1", "--threads", "1", "--output", str(out)])
    assert [r["spec"] for r in json.loads(out.read_text())["entries"]] == ["convformer_nano", "poolformerv2_s12"]
    assert (tmp_path / "leaderboard.png").exists() and "| `poolformerv2_s12` | 78.0 |" in (
        tmp_path / "leaderboard.md").read_text()
