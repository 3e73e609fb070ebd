"""The documented GPU benchmark command runs end to end (here on the CPU, with the tiny model)."""

import argparse
import json
import subprocess
import sys

import pytest

from cluster.bench.gpu import Variant, variant
from deployments.settings.fast_path import FastPath


def test_bench_gpu_command_runs(tiny_checkpoints, tmp_path):
    report = tmp_path / "bench-gpu.json"
    command = [sys.executable, "-m", "cluster.bench.gpu", "--model", tiny_checkpoints["edit-plus"], "--size", "64",
               "--steps", "2", "--part", "in-process", "--staged", "plain", "--staged", "attention=_native_math,lora=4",
               "--report", str(report)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["comparable"] is False  # the tiny model's working areas aren't diffusers'
    plain, math = result["staged"]
    assert math["fast_path"]["attention_backend"] == "_native_math" and plain["fast_path"]["attention_backend"] == "native"
    assert math["lora_rank"] == 4 and plain["lora_rank"] is None
    assert plain["rows_per_step"] == 2 and plain["ms_per_step"] > 0
    assert set(plain["stage_s"]) == {"encode", "denoise", "decode"}
    assert result["diffusers"]["ms_per_step"] > 0 and plain["speedup_per_step"] > 0


def test_bench_gpu_measures_batch_invariance(tiny_checkpoints, tmp_path):
    report = tmp_path / "bench-gpu.json"
    command = [sys.executable, "-m", "cluster.bench.gpu", "--model", tiny_checkpoints["edit-plus"], "--size", "64",
               "--steps", "3", "--part", "invariance", "--report", str(report)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    invariance = json.loads(report.read_text())["invariance"]
    assert invariance["dtype"] == "float32" and invariance["8_requests"]["max_rows_per_forward"] > 8
    assert all(invariance[f"{n}_requests"]["max_difference"] <= 1e-5 for n in (2, 4, 8))  # the fp32 bound


def test_a_staged_run_spec_names_what_is_allowed():
    assert variant("compile,fp8,attention=_native_cudnn,lora=64") == Variant(FastPath("_native_cudnn", compile=True, fp8=True), 64)
    assert variant("plain") == Variant()
    with pytest.raises(argparse.ArgumentTypeError, match="'fp16': a staged run is 'plain' or a comma-separated list"):
        variant("compile,fp16")


def test_the_endpoint_part_refuses_a_gpu_layout_without_gpus(tiny_checkpoints, tmp_path):
    command = [sys.executable, "-m", "cluster.bench.gpu", "--model", tiny_checkpoints["edit-plus"], "--part", "endpoint",
               "--report", str(tmp_path / "bench-gpu.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "config.one-gpu.yaml asks for GPUs" in done.stderr
