"""The documented GPU benchmark command runs end to end (here on the CPU, with the tiny model)."""

import json
import subprocess
import sys


def test_bench_gpu_command_runs(tiny_checkpoints, tmp_path):
    report = tmp_path / "bench-gpu.json"
    command = [sys.executable, "-m", "cluster.bench_gpu", "--model", tiny_checkpoints["edit-plus"], "--size", "64",
               "--steps", "2", "--part", "in-process", "--report", str(report)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["comparable"] is False  # the tiny model's working areas aren't diffusers'
    assert result["staged"]["rows_per_step"] == 2 and result["staged"]["ms_per_step"] > 0
    assert set(result["staged"]["stage_s"]) == {"encode", "denoise", "decode"}
    assert result["diffusers"]["ms_per_step"] > 0 and result["speedup_per_step"] > 0


def test_the_endpoint_part_refuses_a_gpu_layout_without_gpus(tiny_checkpoints, tmp_path):
    command = [sys.executable, "-m", "cluster.bench_gpu", "--model", tiny_checkpoints["edit-plus"], "--part", "endpoint",
               "--report", str(tmp_path / "bench-gpu.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "config.one-gpu.yaml asks for GPUs" in done.stderr
