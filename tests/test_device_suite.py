"""benchmarks/device_suite.py: the accelerator suite's harness, at toy sizes on the CPU."""

import dataclasses
import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed

from benchmarks import device_suite  # noqa: E402


@pytest.mark.slow  # nine XLA compiles (dreams, a CMA-ES generation, V and M training): ~1 min
def test_tiny_suite_writes_every_measurement(tmp_path):
    record = device_suite.main(["--tiny", "--out-dir", str(tmp_path), "--name", "tiny"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.json", "tiny.md"]  # no temp files
    saved = json.loads((tmp_path / "tiny.json").read_text())
    assert saved["complete"] and saved["errors"] == {} and saved["skipped"] == []
    assert saved["suite"] == "tiny" and saved == json.loads(json.dumps(record))
    assert {"jax_backend", "jax_devices", "cpu_model"} <= set(saved["machine"])
    peak = saved["peak"]
    assert min(peak["peak_gflops"], peak["jax_gflops_float32_highest"]) > 0
    assert peak["jax_gflops_bfloat16"] > 0
    for game in ("doom", "car_racing"):
        rows = saved["dream"][game]["rows"]
        assert {(row["impl"], row["batch"]) for row in rows} == {
            ("wm_jax:dream", 2),
            ("wm_jax:batched", 2),
        }
        for row in rows:
            assert row["steps_per_s"] > 0 and row["fraction_of_peak"] > 0 and row["compile_s"] > 0
    cma = saved["cma"]
    assert (cma["population"], cma["rollouts_per_member"]) == (4, 2)
    assert cma["seconds_per_generation"] > 0
    assert saved["vae"]["2"]["wm_jax"]["images_per_s"] > 0
    for game in ("car_racing", "doom"):
        assert saved["mdn"]["2"][game]["wm_jax"]["timesteps_per_s"] > 0
    chosen = saved["kernels"]  # both implementations of each backend-chosen kernel
    assert chosen["auto"] == {
        "vae_layers": "fast",
        "lstm": "fused",
        "es_blas_threads": 1,
        "vae_library": "eigen",
    }
    for option in ("vae_layers=fast", "vae_layers=flax"):
        assert chosen[option]["wm_jax"]["images_per_s"] > 0
    for option in ("lstm=fused", "lstm=scan"):
        assert chosen[option]["doom"]["wm_jax"]["timesteps_per_s"] > 0
    markdown = Path(saved["files"]["md"]).read_text()
    assert markdown.startswith("# wm_jax device suite: tiny")
    titles = ("Matmul peak", "Dream steps/s, doom", "CMA-ES generation", "V training", "M ")
    for title in titles + ("Kernel choices",):
        assert title in markdown


def test_a_failure_or_the_budget_loses_only_that_measurement(tmp_path, monkeypatch):
    def broken(suite):
        time.sleep(0.3)  # past the budget: nothing after it starts
        raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")

    monkeypatch.setattr(device_suite, "measure_peak", broken)
    suite = dataclasses.replace(device_suite.TINY, budget_s=0.2)
    record = device_suite.run(suite, out_dir=tmp_path, name="cut")
    assert record["peak"] is None and record["complete"]
    assert record["errors"] == {"peak": "RuntimeError: RESOURCE_EXHAUSTED: out of memory"}
    # Past the budget every later measurement is skipped, and the record says so.
    assert "cma doom generation" in record["skipped"] and "vae batch 2" in record["skipped"]
    markdown = (tmp_path / "cut.md").read_text()
    assert "RESOURCE_EXHAUSTED" in markdown and "skipped, time budget spent" in markdown
