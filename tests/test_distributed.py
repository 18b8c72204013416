"""Data-parallel K-FAC and fine-tuning (06_distributed): two CPU processes under torchrun equal one process."""
import json, os, subprocess, sys
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


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    "FSDP2 fine-tunes and K-FAC layers owned by ranks (issue #39), two CPU processes against one."
    out = tmp_path_factory.mktemp("fsdp")
    r = subprocess.run([sys.executable, str(SCRIPT), "--model", "tiny", "--out", str(out), "--sharding", "fsdp", "--shard-kfac",
                        "--compare", "2"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return json.loads((out / "agreement.json").read_text()), out


def test_fsdp_finetunes_equal_one_process_with_the_weights_split(sharded):
    res, out = sharded
    assert res["fsdp_world_size"] == 2 and res["fsdp_max_rel_diff"] <= 1e-4 and res["fsdp_max_loss_diff"] <= 1e-5
    assert res["fsdp_alg1_rel_diff"] <= 1e-4       # Algorithm 1's projection on each rank's rows (sgen_projector.on_rows)
    # rank 0 held about half of every parameter (rows split ceil(d/2) / floor(d/2)), not a whole copy
    assert 0.45 <= res["fsdp_rank0_parameter_share"] <= 0.55
    two = torch.load(out / "w2.pt")
    n = next(iter(two["runs"]["ogd"]["delta"]))
    assert two["runs"]["ogd"]["delta"][n].shape == torch.load(out / "w1.pt")["runs"]["ogd"]["delta"][n].shape   # gathered whole
    for label in ("ogd", "alg1"):     # both projections ran under FSDP
        assert (two["runs"][label]["parts"]["private"][n] - two["runs"]["plain"]["parts"]["private"][n]).abs().max() > 0


def test_kfac_layers_owned_by_ranks_equal_one_process(sharded):
    res, out = sharded
    assert res["kfac_sharded_world_size"] == 2 and res["kfac_sharded_layers"] == 28
    assert 0 < res["kfac_sharded_owned_by_rank0"] < 28          # both ranks own layers
    assert res["kfac_sharded_factor_rel_diff"] <= 1e-5 and res["kfac_sharded_eigenvalue_rel_diff"] <= 1e-5
    owners = torch.load(out / "w2.pt")["sharded_kfac"]["owners"]
    from ortho_nbs.kfac import kfac_owners
    from ortho_nbs.models import tiny_model
    from ortho_nbs.training import linear_modules
    assert owners == kfac_owners(linear_modules(tiny_model()), 2)   # the owners every rank computes by itself


def test_one_process_is_a_no_op():
    assert world() == (0, 1) and init_distributed() == (0, 1)
    t = torch.arange(3.0); assert all_reduce_sum_([t])[0] is t and t.tolist() == [0.0, 1.0, 2.0]
    assert all_reduce_number(7) == 7 and shard(list(range(5)), 1, 2) == [1, 3]


# ---- issue #36: ranks given different batches refuse to accumulate; a rank that does not answer times out ----

WORKER = r"""
import os, sys, time, torch
from ortho_nbs.distributed import init_distributed, all_reduce_number
from ortho_nbs.models import tiny_model, tiny_tokenizer
from ortho_nbs.training import lm_batches
from ortho_nbs.kfac import kfac_factors
rank, world = init_distributed()
if sys.argv[1] == "batches":            # rank 0 has 8 batches, rank 1 has 4: the issue's case
    tok = tiny_tokenizer()
    b = lm_batches(tok, ["the quick brown fox jumps over the lazy dog " * 4] * 16, seq_len=12, batch_size=2)
    try: f = kfac_factors(tiny_model(), b[:8] if rank == 0 else b[:4], progress=False); print("N", next(iter(f.values()))["n"])
    except ValueError as e: print("REFUSED", e)
else:                                   # rank 1 hangs: rank 0 must give up after the timeout
    if rank == 1: time.sleep(120)
    t0 = time.time()
    try: all_reduce_number(1); print("NO TIMEOUT")
    except RuntimeError as e: print("TIMED OUT", round(time.time() - t0, 1), str(e)[:200])
sys.stdout.flush(); os._exit(0)
"""


def _two_ranks(mode: str, timeout: float, **env) -> list[subprocess.Popen]:
    import socket
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    base = dict(os.environ, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **env)
    return [subprocess.Popen([sys.executable, "-c", WORKER, mode], env=base | dict(RANK=str(r), LOCAL_RANK=str(r)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]


def test_ranks_with_different_batches_refuse_to_accumulate():
    procs = _two_ranks("batches", 120)
    outs = [p.communicate(timeout=180)[0] for p in procs]
    for o in outs:
        assert "REFUSED the ranks were given different batches (rank 0: 8 batches; rank 1: 4 batches)" in o, outs


def test_a_hung_rank_times_out_after_the_timeout_a_user_sets():
    procs = _two_ranks("hang", 120, ORTHO_NBS_DIST_TIMEOUT="3")
    try: out = procs[0].communicate(timeout=60)[0]
    finally:
        for p in procs: p.kill(); p.communicate()
    assert "TIMED OUT" in out, out
    assert float(out.split("TIMED OUT")[1].split()[0]) < 10


def test_default_timeout_is_five_minutes(monkeypatch):
    from ortho_nbs.distributed import collective_timeout
    monkeypatch.delenv("ORTHO_NBS_DIST_TIMEOUT", raising=False)
    assert collective_timeout() == 300
    monkeypatch.setenv("ORTHO_NBS_DIST_TIMEOUT", "42"); assert collective_timeout() == 42
    monkeypatch.setenv("ORTHO_NBS_DIST_TIMEOUT", "-1")
    with pytest.raises(ValueError, match="ORTHO_NBS_DIST_TIMEOUT = '-1': give a number of seconds > 0"): collective_timeout()
