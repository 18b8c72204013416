"""Data-parallel K-FAC and fine-tuning (torch.distributed) against one process over the same data.

One rank set (the worker), launched by torchrun, writes what it computed to OUT/w<world size>.pt:

    torchrun --standalone --nproc_per_node 2 benchmarks/ddp_agreement.py --model smollm2-135m-instruct --out /tmp/ddp

`--compare W` runs the worker in one plain process and under torchrun with W processes (gloo on CPU, NCCL on GPUs),
then compares them and prints one JSON line (also written to OUT/agreement.json):

    python benchmarks/ddp_agreement.py --model tiny --out /tmp/ddp --compare 2

What runs: K-FAC factors (empirical, with the diagonal Fisher) of every linear layer over `--sequences` public-text
sequences, then `30_ogd`'s plain and OGD fine-tunes (`libortho_finetunes`: per-source Adam moments, the OGD
projection from those factors) and Algorithm 1's fine-tune (`libortho_v2`, S_gen = the `--alg1-k` flattest Kronecker
directions) of the MLP up/down projections of the last `--train-blocks` blocks, on token windows of the public text
and on canary texts. Factors: max |x_W - x_1| / max |x_1| per tensor, the largest over tensors.
Fine-tunes: ||dW_W - dW_1||_F / ||dW_1||_F, the largest over the deltas and per-source shares; beside it the same
numbers for one process run with one thread, the size of float rounding's effect without any distribution. In
`--compare` the later runs take the OGD eigenbasis from the one-process run's factors (`--factors-from`), so that the
fine-tunes are compared on equal terms; the factors themselves are compared separately.

Sharded (issue #39): `--sharding fsdp` fine-tunes a model under FSDP2 (`fsdp_shard`: weights, gradients, Adam moments
and per-source shares split across the ranks; no frozen prefix, in the one-process reference too); `--shard-kfac`
gives every linear layer an owner (`kfac_owners`, balanced by d_in^3 + d_out^3): its factors are reduced onto the owner,
which alone eigendecomposes them, and the peak memory of that stage (process RSS above its start, sampled every ms) is
measured per rank against every rank computing every layer, in the same run. The factors and eigenvalues are gathered
to rank 0 afterwards only to be compared with one process:

    python benchmarks/ddp_agreement.py --model smollm2-135m-instruct --out /tmp/fsdp --sharding fsdp --shard-kfac --compare 2
"""
from __future__ import annotations
import argparse, json, os, shutil, subprocess, sys, time
from pathlib import Path
import torch


def peak_rss_mb(fn):
    "(fn(), peak process RSS above the start, in MB): `ortho_nbs.costs.peak_memory` on the CPU."
    from ortho_nbs.costs import peak_memory
    out, _, peak = peak_memory(fn, "cpu")
    return out, peak / 2 ** 20


def kfac_stage(model, batches, owners, seed):
    "Factors of every linear layer and the eigenbases of this rank's layers (all of them when `owners` is None), timed."
    from ortho_nbs.kfac import kfac_factors, kronecker_eigenbasis
    t0 = time.perf_counter()
    factors = kfac_factors(model, batches, diagonal=True, seed=seed, owners=owners, progress=False)
    t1 = time.perf_counter()
    bases = {n: kronecker_eigenbasis(f["A"], f["G"]) for n, f in factors.items()}
    return factors, bases, t1 - t0, time.perf_counter() - t1


def worker(a) -> None:
    from ortho_nbs.distributed import init_distributed, rank_device
    from ortho_nbs.models import load_model, tiny_model, tiny_tokenizer, set_seed
    from ortho_nbs.data import public_documents, canaries
    from ortho_nbs.hooks import decoder_layers
    from ortho_nbs.kfac import kfac_factors
    from ortho_nbs.training import lm_batches, linear_modules
    from ortho_nbs.ogd import libortho_finetunes, libortho_v2
    from ortho_nbs.kfac import kfac_owners
    from ortho_nbs.distributed import fsdp_shard, broadcast_from_owners, all_reduce_number
    rank, world = init_distributed()
    set_seed(a.seed)
    dev = rank_device()
    if a.model == "tiny": model, tok = tiny_model(seed=a.seed).to(dev), tiny_tokenizer()
    else: model, tok = load_model(a.model, device=dev, progress=False)
    batches = lm_batches(tok, public_documents(split="train"), a.seq_len, a.batch_size, a.sequences)
    t0 = time.perf_counter()
    factors = kfac_factors(model, batches, diagonal=True, seed=a.seed, progress=False)
    t_kfac = time.perf_counter() - t0
    sharded_kfac = {}
    if a.shard_kfac and not a.tag:    # layers owned by ranks, against every rank doing every layer, measured in the same run
        every = linear_modules(model); owners = kfac_owners(every, world)
        # sharded first: allocations a first call makes once count against it, not against every rank doing all layers
        (own_f, own_b, t_acc, t_eigh), peak = peak_rss_mb(lambda: kfac_stage(model, batches, owners, a.seed))
        lam = {n: dict(lam_A=b["lam_A"], lam_G=b["lam_G"]) for n, b in own_b.items()}
        del own_b
        if world > 1: (_, _, _, t_eigh_all), peak_all = peak_rss_mb(lambda: kfac_stage(model, batches, None, a.seed))
        else: t_eigh_all, peak_all = t_eigh, peak      # one process owns every layer: the reference eigenvalues
        got = broadcast_from_owners({n: {k: v for k, v in f.items() if torch.is_tensor(v)} for n, f in own_f.items()}, owners, sorted(every))
        lam = broadcast_from_owners(lam, owners, sorted(every))
        mx = lambda x: all_reduce_number(float(x), "max")
        sharded_kfac = dict(owners=owners, factors=got, lam=lam, peak_mb=mx(peak), peak_mb_all=mx(peak_all), eigh_s=mx(t_eigh),
                            eigh_s_all=mx(t_eigh_all), n_owned=len(own_f), accumulate_s=mx(t_acc))
        del own_f, got
    L = len(decoder_layers(model))
    mods = linear_modules(model, include=["mlp.up_proj", "mlp.down_proj", "mlp.c_fc", "mlp.c_proj"],
                          layers=list(range(L - a.train_blocks, L)))
    # the OGD projection's eigenbasis: from this run's factors, or (--factors-from) from another run's, so that a
    # comparison of fine-tunes is not also a comparison of eigenbases (eigenvectors of near-equal eigenvalues rotate
    # under any 1e-7 change of the factors, and the S_gen mask cuts through such clusters)
    src = {n: {k: v.to(dev) for k, v in f.items()} for n, f in torch.load(a.factors_from)["factors"].items()} if a.factors_from else factors
    windows = torch.cat([b["input_ids"] for b in batches])
    texts = [c["text"] for c in canaries(a.canaries, seed=a.seed)]
    fsdp = a.sharding == "fsdp"
    held = None      # the share of the model's parameters this rank holds (1 unsharded; ~1/W under FSDP)
    if fsdp and world > 1:
        fsdp_shard(model)
        held = sum(p.to_local().numel() for p in model.parameters()) / sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()     # 30_ogd's own pair of fine-tunes: plain, then OGD with the private share projected
    ft = libortho_finetunes(model, tok, texts, windows, batches, mods, 0.5, a.steps, a.lr,
                            dict(public=a.batch_size, private=a.batch_size), a.seed, factors={n: src[n] for n in mods},
                            frozen_below=0 if fsdp else None, cache=False, progress=False)
    runs = {l: dict(delta=ft[l]["delta"], parts=ft[l]["parts"], losses=ft[l]["losses"]) for l in ("plain", "ogd")}
    # Algorithm 1 (libortho_v2): S_gen = the k flattest Kronecker directions, every step projected out of it (under FSDP
    # on each rank's rows: sgen_projector's on_rows, one all-reduce of the small C per layer and step)
    v2 = libortho_v2(model, tok, dict(public=windows, private=texts), {n: src[n] for n in mods}, mods, a.alg1_k, steps=a.steps,
                     lr=a.lr, batch_size=a.batch_size, seed=a.seed, frozen_below=0 if fsdp else None, cache=False, progress=False)
    runs["alg1"] = dict(delta=v2["delta"], parts=v2["parts"], losses=v2["losses"])
    t_ft = time.perf_counter() - t0
    if rank == 0:
        out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
        cpu = lambda t: t.detach().cpu()
        torch.save(dict(world=world, sharding=a.sharding, held_share=held, sharded_kfac=sharded_kfac, kfac_s=t_kfac, finetune_s=t_ft, n_tokens=next(iter(factors.values()))["n"],
                        factors={n: {k: cpu(v) for k, v in f.items() if torch.is_tensor(v)} for n, f in factors.items()},
                        runs={l: dict(delta={n: cpu(d) for n, d in r["delta"].items()},
                                      parts={s: {n: cpu(d) for n, d in p.items()} for s, p in r["parts"].items()},
                                      losses=r["losses"]) for l, r in runs.items()}),
                   out / f"w{world}{a.tag}.pt")
    if world > 1: torch.distributed.destroy_process_group()


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    "max |a - b| / max |b| (b the one-process reference)."
    if a.shape != b.shape: raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300)).item()


def delta_rel_diff(a: dict, b: dict) -> float:
    "||a - b||_F / ||b||_F over all layers of two {layer: delta} dicts together (b the reference)."
    num = sum((a[n].double() - b[n].double()).pow(2).sum().item() for n in b)
    return (num / max(sum(b[n].double().pow(2).sum().item() for n in b), 1e-300)) ** 0.5


def finetune_diffs(x: dict, ref: dict) -> tuple[float, float, float]:
    "(relative Frobenius difference of every delta and per-source share, largest entry difference / largest entry, loss difference)."
    runs = [(x["runs"][l]["delta"], ref["runs"][l]["delta"]) for l in ref["runs"]] + \
           [(x["runs"][l]["parts"][s], ref["runs"][l]["parts"][s]) for l in ref["runs"] for s in ref["runs"][l]["parts"]]
    fro = max(delta_rel_diff(a, b) for a, b in runs)
    entry = max(max_rel_diff(a[n], b[n]) for a, b in runs for n in b)
    loss = max(abs(u - v) for l in ref["runs"] for s in ref["runs"][l]["losses"]
               for u, v in zip(x["runs"][l]["losses"][s], ref["runs"][l]["losses"][s]))
    return fro, entry, loss


def compare(out: Path, world: int) -> dict:
    """W processes against one, and -- the yardstick for "float rounding" -- one process with one thread against one
    with the default threads: the fine-tunes' Adam steps divide by sqrt(v), so a gradient entry that is ~0 flips sign
    under any change of summation order and moves that weight by ~lr. Entry-wise maxima show those flips; the relative
    Frobenius difference of the deltas is the agreement measure."""
    one, many, threads = torch.load(out / "w1.pt"), torch.load(out / f"w{world}.pt"), torch.load(out / "w1_1thread.pt")
    kf = max(max_rel_diff(many["factors"][n][k], one["factors"][n][k]) for n in one["factors"] for k in one["factors"][n])
    kf_t = max(max_rel_diff(threads["factors"][n][k], one["factors"][n][k]) for n in one["factors"] for k in one["factors"][n])
    fro, entry, loss = finetune_diffs(many, one)
    fro_t, entry_t, loss_t = finetune_diffs(threads, one)
    by_run = {l: finetune_diffs(dict(runs={l: many["runs"][l]}), dict(runs={l: one["runs"][l]}))[0] for l in one["runs"]}
    if many.get("sharding") == "fsdp":
        out = dict(fsdp_world_size=many["world"], fsdp_max_rel_diff=fro, fsdp_max_loss_diff=loss, fsdp_plain_rel_diff=by_run["plain"],
                   fsdp_ogd_rel_diff=by_run["ogd"], fsdp_alg1_rel_diff=by_run["alg1"], fsdp_threads_rel_diff=fro_t, fsdp_finetune_s_one=one["finetune_s"],
                   fsdp_finetune_s=many["finetune_s"], fsdp_rank0_parameter_share=many.get("held_share"))
    else:
        out = dict(kfac_ddp_world_size=many["world"], kfac_ddp_max_rel_diff=kf, finetune_ddp_max_rel_diff=fro,
                   finetune_ddp_max_entry_diff=entry, finetune_ddp_max_loss_diff=loss,
                   finetune_ddp_plain_rel_diff=by_run["plain"], finetune_ddp_ogd_rel_diff=by_run["ogd"], finetune_ddp_alg1_rel_diff=by_run["alg1"],
                   kfac_threads_max_rel_diff=kf_t, finetune_threads_rel_diff=fro_t, finetune_threads_max_entry_diff=entry_t,
                   finetune_threads_max_loss_diff=loss_t, kfac_s_one=one["kfac_s"], kfac_s_ddp=many["kfac_s"],
                   finetune_s_one=one["finetune_s"], finetune_s_ddp=many["finetune_s"])
    out.update(n_layers=len(one["factors"]), n_tokens=one["n_tokens"])
    sk, sk1 = many.get("sharded_kfac") or {}, one.get("sharded_kfac") or {}
    if sk and sk1:      # owned layers: factors and eigenvalues against one process's, the peak against every rank doing all
        fac = max(max_rel_diff(sk["factors"][n][k], one["factors"][n][k]) for n in one["factors"] for k in one["factors"][n])
        lam = max(max_rel_diff(sk["lam"][n][k], sk1["lam"][n][k]) for n in sk1["lam"] for k in ("lam_A", "lam_G"))
        out.update(kfac_sharded_world_size=many["world"], kfac_sharded_max_rel_diff=max(fac, lam), kfac_sharded_factor_rel_diff=fac,
                   kfac_sharded_eigenvalue_rel_diff=lam, kfac_sharded_peak_mb_per_rank=sk["peak_mb"],
                   kfac_unsharded_peak_mb_per_rank=sk["peak_mb_all"], kfac_sharded_eigh_s_per_rank=sk["eigh_s"],
                   kfac_unsharded_eigh_s_per_rank=sk["eigh_s_all"], kfac_sharded_layers=len(sk["owners"]),
                   kfac_sharded_owned_by_rank0=sk["n_owned"])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help="'tiny' (random, tests only), a packaged model name, or a model directory")
    p.add_argument("--out", required=True)
    p.add_argument("--sequences", type=int, default=8); p.add_argument("--seq-len", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=2); p.add_argument("--steps", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3); p.add_argument("--canaries", type=int, default=8)
    p.add_argument("--alg1-k", type=int, default=64, help="Algorithm 1's k (Kronecker directions in S_gen per layer)")
    p.add_argument("--train-blocks", type=int, default=2); p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", type=int, default=0, metavar="W", help="run 1 process and W processes, then compare")
    p.add_argument("--sharding", choices=["replicate", "fsdp"], default="replicate",
                   help="fine-tunes: whole copies on every rank (data parallel) or FSDP2 (weights, gradients, Adam state split)")
    p.add_argument("--shard-kfac", action="store_true", help="K-FAC layers owned by ranks (reduced to and eigendecomposed by their owner)")
    p.add_argument("--tag", default="", help=argparse.SUPPRESS)
    p.add_argument("--factors-from", default=None, help="a w*.pt file whose factors give the OGD projection's eigenbasis")
    a = p.parse_args(argv)
    if not a.compare: worker(a); return 0
    if a.compare < 2: p.error("--compare W needs W >= 2")
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    passed = [x for x in (argv if argv is not None else sys.argv[1:])]
    i = passed.index("--compare"); passed = passed[:i] + passed[i + 2:]
    cores = os.cpu_count() or 1
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores // a.compare)), TOKENIZERS_PARALLELISM="false")
    subprocess.run([sys.executable, __file__, *passed], check=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    passed += ["--factors-from", str(out / "w1.pt")]
    subprocess.run([sys.executable, __file__, *passed, "--tag", "_1thread"], check=True,
                   env=dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"))
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    subprocess.run([torchrun, "--standalone", f"--nproc_per_node={a.compare}", __file__, *passed], check=True, env=env)
    res = compare(out, a.compare)
    (out / "agreement.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
