"""Data-parallel K-FAC and fine-tuning (torch.distributed) against one process over the same data.

One rank set (the worker), launched by torchrun, writes what it computed to OUT/w<world size>.pt:

    torchrun --standalone --nproc_per_node 2 benchmarks/ddp_agreement.py --model smollm2-135m-instruct --out /tmp/ddp

`--compare W` runs the worker in one plain process and under torchrun with W processes (gloo on CPU, NCCL on GPUs),
then compares them and prints one JSON line (also written to OUT/agreement.json):

    python benchmarks/ddp_agreement.py --model tiny --out /tmp/ddp --compare 2

What runs: K-FAC factors (empirical, with the diagonal Fisher) of every linear layer over `--sequences` public-text
sequences, then `30_ogd`'s plain and OGD fine-tunes (`libortho_finetunes`: per-source Adam moments, the OGD
projection from those factors) of the MLP up/down projections of the last `--train-blocks` blocks, on token windows of
the public text and on canary texts. Factors: max |x_W - x_1| / max |x_1| per tensor, the largest over tensors.
Fine-tunes: ||dW_W - dW_1||_F / ||dW_1||_F, the largest over the deltas and per-source shares; beside it the same
numbers for one process run with one thread, the size of float rounding's effect without any distribution. In
`--compare` the later runs take the OGD eigenbasis from the one-process run's factors (`--factors-from`), so that the
fine-tunes are compared on equal terms; the factors themselves are compared separately.
"""
from __future__ import annotations
import argparse, json, os, shutil, subprocess, sys, time
from pathlib import Path
import torch


def worker(a) -> None:
    from ortho_nbs.distributed import init_distributed, rank_device
    from ortho_nbs.models import load_model, tiny_model, tiny_tokenizer, set_seed
    from ortho_nbs.data import public_documents, canaries
    from ortho_nbs.hooks import decoder_layers
    from ortho_nbs.kfac import kfac_factors
    from ortho_nbs.training import lm_batches, linear_modules
    from ortho_nbs.ogd import libortho_finetunes
    rank, world = init_distributed()
    set_seed(a.seed)
    dev = rank_device()
    if a.model == "tiny": model, tok = tiny_model(seed=a.seed).to(dev), tiny_tokenizer()
    else: model, tok = load_model(a.model, device=dev, progress=False)
    batches = lm_batches(tok, public_documents(split="train"), a.seq_len, a.batch_size, a.sequences)
    t0 = time.perf_counter()
    factors = kfac_factors(model, batches, diagonal=True, seed=a.seed, progress=False)
    t_kfac = time.perf_counter() - t0
    L = len(decoder_layers(model))
    mods = linear_modules(model, include=["mlp.up_proj", "mlp.down_proj", "mlp.c_fc", "mlp.c_proj"],
                          layers=list(range(L - a.train_blocks, L)))
    # the OGD projection's eigenbasis: from this run's factors, or (--factors-from) from another run's, so that a
    # comparison of fine-tunes is not also a comparison of eigenbases (eigenvectors of near-equal eigenvalues rotate
    # under any 1e-7 change of the factors, and the S_gen mask cuts through such clusters)
    src = {n: {k: v.to(dev) for k, v in f.items()} for n, f in torch.load(a.factors_from)["factors"].items()} if a.factors_from else factors
    windows = torch.cat([b["input_ids"] for b in batches])
    texts = [c["text"] for c in canaries(a.canaries, seed=a.seed)]
    t0 = time.perf_counter()     # 30_ogd's own pair of fine-tunes: plain, then OGD with the private share projected
    ft = libortho_finetunes(model, tok, texts, windows, batches, mods, 0.5, a.steps, a.lr,
                            dict(public=a.batch_size, private=a.batch_size), a.seed, factors={n: src[n] for n in mods},
                            cache=False, progress=False)
    runs = {l: dict(delta=ft[l]["delta"], parts=ft[l]["parts"], losses=ft[l]["losses"]) for l in ("plain", "ogd")}
    t_ft = time.perf_counter() - t0
    if rank == 0:
        out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
        cpu = lambda t: t.detach().cpu()
        torch.save(dict(world=world, kfac_s=t_kfac, finetune_s=t_ft, n_tokens=next(iter(factors.values()))["n"],
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
    return dict(kfac_ddp_world_size=many["world"], kfac_ddp_max_rel_diff=kf, finetune_ddp_max_rel_diff=fro,
                finetune_ddp_max_entry_diff=entry, finetune_ddp_max_loss_diff=loss,
                finetune_ddp_plain_rel_diff=by_run["plain"], finetune_ddp_ogd_rel_diff=by_run["ogd"],
                kfac_threads_max_rel_diff=kf_t, finetune_threads_rel_diff=fro_t, finetune_threads_max_entry_diff=entry_t,
                finetune_threads_max_loss_diff=loss_t, n_layers=len(one["factors"]), n_tokens=one["n_tokens"],
                kfac_s_one=one["kfac_s"], kfac_s_ddp=many["kfac_s"], finetune_s_one=one["finetune_s"], finetune_s_ddp=many["finetune_s"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help="'tiny' (random, tests only), a packaged model name, or a model directory")
    p.add_argument("--out", required=True)
    p.add_argument("--sequences", type=int, default=8); p.add_argument("--seq-len", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=2); p.add_argument("--steps", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3); p.add_argument("--canaries", type=int, default=8)
    p.add_argument("--train-blocks", type=int, default=2); p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", type=int, default=0, metavar="W", help="run 1 process and W processes, then compare")
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
