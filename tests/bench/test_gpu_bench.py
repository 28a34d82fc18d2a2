"""The GPU check's code path (python -m benchmarks.gpu) at tiny size on CPU: it trains through cptlab's
pipeline with Lightning's ThroughputMonitor and reports tokens/s and FLOPs; MFU needs a known GPU peak.
The runs are slow tests (`make test-all`): they check the benchmark's own code, not cptlab's."""

import json

import pytest

from benchmarks.gpu import flops_per_batch, main


def bench(tmp_path, *flags):
    out = tmp_path / "gpu.json"
    assert main(["--size", "tiny", "--steps", "4", "--warmup", "1", "--accelerator", "cpu", "--precision", "32-true",
                 "--workdir", str(tmp_path / "work"), "--out", str(out), *flags]) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_gpu_bench_code_path_runs_on_cpu(tmp_path):
    result = bench(tmp_path)
    assert result["device"] == "cpu" and result["steps"] == 4 and result["timed_steps"] == 3
    assert result["compile"] is result["compiled"] is False
    assert result["precision"] == "32-true" and result["seq_len"] == 64
    assert result["flops_per_batch"] > 0 and result["tokens_per_sec"] > 0
    assert result["flops_per_sec"] > 0
    assert result["peak_flops"] is None and result["mfu"] is None  # no datasheet peak for a CPU


def test_flops_per_batch_is_about_six_flops_per_parameter_and_token():
    config = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=4)
    from transformers import LlamaConfig, LlamaForCausalLM

    params = sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(vocab_size=1000, **config)).parameters())
    tokens = 2 * 128
    flops = flops_per_batch(config, 1000, 2, 128)
    # 6 N T for the matmuls (the input embedding is a lookup, not a matmul), plus attention's share.
    assert 0.8 * 6 * params * tokens < flops < 1.3 * 6 * params * tokens


@pytest.mark.slow
def test_gpu_bench_compile_flag_compiles_the_model(tmp_path):
    result = bench(tmp_path, "--compile")
    assert result["compile"] is result["compiled"] is True and result["tokens_per_sec"] > 0
