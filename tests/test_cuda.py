"""The CUDA paths: cuDNN's LSTM, bf16 and fp16 autocast, checkpoints that move between devices.

Skipped without a CUDA GPU; `scripts/gpu-check.sh` runs them where there is one."""

import copy
import dataclasses
import math

import pytest
import torch

from lstmkit.lm import api
from lstmkit.lm.config import preset
from lstmkit.lm.model import build_language_model
from lstmkit.lm.runs import load_lm
from lstmkit.reporting import Console

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
CUDA = torch.device("cuda")


def _config(**changes):
    return dataclasses.replace(preset("test"), **{"hidden_size": 32, "num_layers": 2,
                                                  "batch_size": 4, "num_steps": 6, **changes})


@pytest.fixture(autouse=True)
def _no_tf32(monkeypatch):
    """fp32 on the GPU as on the CPU: cuDNN would otherwise round products to TF32."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def test_cudnns_lstm_computes_the_cpus_loss_and_gradients():
    torch.manual_seed(0)
    cpu = build_language_model(_config(keep_prob=1.0), 50).train()  # cuDNN: backward in train
    gpu = copy.deepcopy(cpu).to(CUDA)
    ids, targets = torch.randint(0, 50, (4, 12)), torch.randint(0, 50, (4, 12))
    nll_cpu, state_cpu = cpu.window_nll(ids, targets, cpu.zero_state(4))
    nll_gpu, state_gpu = gpu.window_nll(ids.to(CUDA), targets.to(CUDA), gpu.zero_state(4))
    nll_cpu.backward()
    nll_gpu.backward()
    assert float(nll_gpu) == pytest.approx(float(nll_cpu), rel=1e-5)
    for a, b in zip(state_cpu, state_gpu, strict=True):
        assert torch.allclose(b.cpu(), a, atol=1e-5)
    for (name, a), b in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        assert torch.allclose(b.grad.cpu(), a.grad, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_run_trains_on_the_gpu_and_its_checkpoint_evaluates_alike_on_the_cpu(
        precision, ptb_dir, tmp_path):
    run = tmp_path / "run"
    result = api.train_ptb(_config(device="cuda", precision=precision, max_max_epoch=3),
                           ptb_dir, run, console=Console(enabled=False))
    first = result.history[0]["valid_perplexity"]
    last = result.history[-1]["valid_perplexity"]
    assert math.isfinite(result.test_perplexity) and last < first, "it learned"
    on_gpu = api.evaluate_ptb(run, ptb_dir, device="cuda", precision="fp32").value
    on_cpu = api.evaluate_ptb(run, ptb_dir, device="cpu", precision="fp32").value
    assert on_gpu == pytest.approx(on_cpu, rel=1e-4)
    saved_scale = load_lm(run).progress.loss_scale
    assert (saved_scale > 0) == (precision == "fp16"), "fp16 alone scales its loss"


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("first, then", [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_run_resumes_on_the_other_device(optimizer, first, then, ptb_dir, tmp_path):
    """Adam's moments and step count (fused on both devices) move with the checkpoint."""
    run = tmp_path / "run"
    lr = 0.01 if optimizer == "adam" else 1.0
    api.train_ptb(_config(device=first, optimizer=optimizer, learning_rate=lr,
                          max_max_epoch=1), ptb_dir, run, console=Console(enabled=False))
    result = api.train_ptb(_config(device=then, optimizer=optimizer, learning_rate=lr,
                                   max_max_epoch=2), ptb_dir, run, resume=True,
                           console=Console(enabled=False))
    epochs = [r for r in result.history if "valid_perplexity" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert epochs[1]["valid_perplexity"] < epochs[0]["valid_perplexity"], "it learned on"


def test_sampling_and_scoring_on_the_gpu_match_the_cpu(ptb_dir, tmp_path):
    run = tmp_path / "run"
    api.train_ptb(_config(device="cuda", max_max_epoch=1), ptb_dir, run,
                  console=Console(enabled=False))
    text = (ptb_dir / "ptb.valid.txt").read_text().splitlines()[0]
    gpu, cpu = api.load(run, device="cuda"), api.load(run, device="cpu")
    assert gpu.score(text, precision="fp32").nll == pytest.approx(
        cpu.score(text, precision="fp32").nll, rel=1e-4)
    sample = gpu.sample(prime="the", length=20, seed=1)
    assert sample.startswith("the") and gpu.sample(prime="the", length=20, seed=1) == sample
