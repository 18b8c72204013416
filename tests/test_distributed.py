"""Data-parallel K-FAC and fine-tuning (06_distributed): two CPU processes under torchrun equal one process."""
import json, subprocess, sys
from pathlib import Path
import pytest
import torch
from ortho_nbs.distributed import shard, all_reduce_sum_, all_reduce_number, init_distributed, world

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "ddp_agreement.py"


@pytest.fixture(scope="module")
def agreement(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    r = subprocess.run([sys.executable, str(SCRIPT), "--model", "tiny", "--out", str(out), "--compare", "2"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return json.loads((out / "agreement.json").read_text()), out


def test_two_processes_accumulate_the_same_factors(agreement):
    res, out = agreement
    assert res["kfac_ddp_world_size"] == 2 and res["n_layers"] == 28 and res["n_tokens"] > 0
    assert res["kfac_ddp_max_rel_diff"] <= 1e-5         # A, G and the diagonal Fisher of all 28 layers


def test_two_processes_take_the_same_finetune_steps(agreement):
    res, out = agreement
    # ||dW_2 - dW_1||_F / ||dW_1||_F over the deltas and the per-source shares (entry-wise maxima would count Adam's
    # sign flips on gradients that are ~0, which any change of summation order causes; see ddp_agreement.compare)
    assert res["finetune_ddp_max_rel_diff"] <= 1e-4 and res["finetune_ddp_max_loss_diff"] <= 1e-5
    one, two = torch.load(out / "w1.pt"), torch.load(out / "w2.pt")
    for label in ("plain", "ogd"):    # the delta is the sum of the per-source shares in both runs
        for n, d in two["runs"][label]["delta"].items():
            parts = sum(p[n] for p in two["runs"][label]["parts"].values())
            torch.testing.assert_close(parts, d, rtol=1e-5, atol=1e-7)
    # OGD changed the private share (the projection ran under torchrun too)
    n = next(iter(one["runs"]["plain"]["delta"]))
    assert (two["runs"]["ogd"]["parts"]["private"][n] - two["runs"]["plain"]["parts"]["private"][n]).abs().max() > 0


def test_one_process_is_a_no_op():
    assert world() == (0, 1) and init_distributed() == (0, 1)
    t = torch.arange(3.0); assert all_reduce_sum_([t])[0] is t and t.tolist() == [0.0, 1.0, 2.0]
    assert all_reduce_number(7) == 7 and shard(list(range(5)), 1, 2) == [1, 3]
