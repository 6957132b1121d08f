"""The benchmark runner on a tiny input: every candidate kind runs and the report is consistent.
(No timing thresholds: speed lives in benchmarks/.)"""
import importlib.util
import json

import convformer
from convformer.bench.measure import interleaved
from convformer.bench.runner import format_table, run_benchmark, write_report
from convformer.cli import main


def test_interleaved_runs_in_round_robin_order():
    calls = []
    timings = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-up each, then alternate
    assert len(timings["a"].seconds) == 3 and timings["b"].median >= 0


def test_interleaved_lets_the_previous_runtime_settle_untimed():
    """A pause (outside the timing) before every timed call, so spinning ONNX Runtime threads left from
    one candidate do not slow the next."""
    import time
    stamps = []

    def record():
        stamps.append(time.perf_counter())
    timings = interleaved({"a": record, "b": record}, warmup=0, repeats=2, settle=0.05)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert len(stamps) == 4 and min(gaps) >= 0.05
    assert max(timings["a"].seconds + timings["b"].seconds) < 0.05  # the pause is not in the timing


def test_runner_reports_every_candidate(tmp_path):
    specs = ["convformer_nano", "convformer_nano@fast", "onnx:convformer_nano"]
    report = run_benchmark(specs, img_size=32, batch=2, repeats=2, warmup=1, threads=1, train=True)
    by_spec = {r["spec"]: r for r in report["results"]}
    assert list(by_spec) == specs
    card = convformer.model_card("convformer_nano")
    for r in by_spec.values():
        assert r["params"] == card.params and r["macs"] == card.macs  # same network, three runtimes
        assert r["throughput"] > 0 and r["latency_ms"] > 0 and 0 < r["flops_fraction"] < 1.5
    assert by_spec["convformer_nano"]["train_throughput"] > 0
    assert "train_throughput" not in by_spec["onnx:convformer_nano"]
    assert report["matmul_ceiling_gflops"] > 0
    assert "convformer_nano@fast" in format_table(report)
    write_report(report, tmp_path / "r.json", tmp_path / "r.png")
    assert json.loads((tmp_path / "r.json").read_text())["settings"]["batch"] == 2
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_variant_is_a_clear_error(capsys):
    assert main(["bench", "convformer_nano@warp", "--img-size", "32", "--batch", "1"]) == 2
    assert "unknown benchmark variant" in capsys.readouterr().err


def test_peak_memory_is_measured_in_a_child_process_and_grows_with_batch():
    from convformer.bench.memory import measure_peak_memory
    small = measure_peak_memory("convformer_nano", img_size=64, batch=1, train=True, threads=1)
    big = measure_peak_memory("convformer_nano", img_size=64, batch=64, train=True, threads=1)
    assert small["exact"] and big["exact"]  # Linux: the peak counter was reset after building the model
    # 64 samples of saved activations (tens of MB) must show up above a single sample's
    assert big["peak_mb"] > small["peak_mb"] + 10


def test_memory_of_a_broken_candidate_is_reported_not_raised():
    from convformer.bench.memory import measure_peak_memory
    out = measure_peak_memory("no_such_model", img_size=32, batch=1)
    assert out["peak_mb"] != out["peak_mb"] and "no_such_model" in out["error"]  # NaN + the child's message


def test_benchmark_script_runs_on_a_tiny_input_and_reports_the_target_ratios(tmp_path, capsys):
    from conftest import load_benchmark
    script = load_benchmark("metaformer_speed")
    out = tmp_path / "speed.json"
    variants = ["{m}", "{m}@fast", "{m}@ort", "timm:{m}", "onnx:timm:{m}"]
    if importlib.util.find_spec("openvino"):
        variants.append("ov:timm:{m}")
    script.main(["--models", "convformer_s18", "--img-size", "32", "--batch", "2", "--repeats", "1", "--threads", "1",
                 "--variants", *variants, "--no-memory", "--train", "--output", str(out)])
    report = json.loads(out.read_text())
    assert [r["spec"] for r in report["results"]] == [v.format(m="convformer_s18") for v in variants]
    by = {r["spec"]: r for r in report["results"]}
    assert by["convformer_s18"]["train_throughput"] > 0 and by["timm:convformer_s18"]["train_throughput"] > 0
    assert by["convformer_s18"]["macs"] == by["timm:convformer_s18"]["macs"]  # same network counted alike
    assert by["convformer_s18@ort"]["macs"] == by["convformer_s18"]["macs"]
    printed = capsys.readouterr().out
    # the ratio line names the fastest of our runtimes and the fastest peer it was divided by
    line = next(x for x in printed.splitlines() if "fp32 b2: ours" in x)
    ours = max(by[s]["throughput"] for s in ("convformer_s18@fast", "convformer_s18@ort"))
    peer = max(by[s]["throughput"] for s in by if s.startswith(("timm:", "onnx:timm", "ov:timm")))
    assert f"= {ours / peer:.2f}x (target >= 1.15)" in line
    assert (tmp_path / "speed.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_runtime_flag_runs_our_plain_candidates_in_that_runtime(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "convformer_nano", "timm:resnet18", "--runtime", "onnxruntime", "--img-size", "32",
                 "--batch", "2", "--repeats", "1", "--warmup", "1", "--threads", "1", "--no-memory",
                 "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["spec"] for r in report["results"]] == ["convformer_nano@ort", "timm:resnet18"]  # peers untouched
    assert report["results"][0]["throughput"] > 0
    assert main(["bench", "convformer_nano", "--runtime", "tvm"]) == 2
    assert "--runtime must be one of" in capsys.readouterr().err
