"""K-FAC accumulation vs a training forward + backward on CUDA, SmolLM2-135M's architecture (#16 item 1, the CUDA half).

The lent GPU machine cannot take the real weights along (the packaged GGUF is larger than what travels), so the model is
SmolLM2-135M-Instruct's configuration with random weights (seed 0): the same shapes and so the same FLOPs and kernels;
timings do not depend on the values. Token ids are random too. Variants of `kfac_factors` on the same batches,
interleaved rounds, median; every variant's factors are compared with today's (one full product per factor).

    python3 benchmarks/cuda_kfac.py [--rounds 10] [--variants full,r768] [--tiny-check] [--profile] [--out DIR]

Measured runs, and the variants tried in commit 87cbc69 (not kept): benchmarks/cuda/README.md.
"""
import argparse, json, sys, time
from pathlib import Path
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ortho_nbs import kfac                                     # noqa: E402
from ortho_nbs.training import next_token_loss, linear_modules  # noqa: E402

SMOLLM2_135M = dict(architectures=["LlamaForCausalLM"], hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152, rms_norm_eps=1e-5,
                    max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True, hidden_act="silu",
                    attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2, pad_token_id=2)


def smollm2_random(dev, dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).to(dev, dtype).eval()


def sync(): torch.cuda.synchronize() if torch.cuda.is_available() else None


def rel_diff(a, b):
    "max over modules and factors of max|a - b| / max|b|."
    return max(((a[n][k].double() - b[n][k].double().to(a[n][k].device)).abs().max() / b[n][k].double().abs().max()).item()
               for n in b for k in ("A", "G"))


def tiny_check(dev):
    "Factors of the tiny models of every family on `dev` against the CPU's, padded batches."
    from ortho_nbs.models import tiny_model, TINY_FAMILIES
    out = {}
    for fam in TINY_FAMILIES:
        m = tiny_model(fam); g = torch.Generator().manual_seed(1); bs = []
        for L in (16, 5, 11, 16, 3, 9):
            am = torch.zeros(3, 16, dtype=torch.long); am[:, :L] = 1; am[0, :16] = 1
            bs.append(dict(input_ids=torch.randint(3, 60, (3, 16), generator=g), attention_mask=am))
        ref = kfac.kfac_factors(m, bs, progress=False, diagonal=True)
        got = kfac.kfac_factors(m.to(dev), [{k: v.to(dev) for k, v in b.items()} for b in bs], progress=False, diagonal=True)
        out[fam] = rel_diff(ref, {n: {k: v.cpu() for k, v in f.items() if k != "n"} for n, f in got.items()})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seqs", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--variants", default="full,r768")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--tiny-check", action="store_true", help="first: the tiny models' factors on this device vs the CPU's")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if a.tiny_check: print("tiny models, max rel. diff. of factors vs CPU:", tiny_check(dev))
    model = smollm2_random(dev)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 49152, (a.seqs, a.seq_len), generator=g)
    lb = [dict(input_ids=ids[i:i + a.batch].to(dev), attention_mask=torch.ones(len(ids[i:i + a.batch]), a.seq_len, dtype=torch.long, device=dev))
          for i in range(0, a.seqs, a.batch)]
    mods = linear_modules(model)

    def fwd_bwd():
        for b in lb: next_token_loss(model(**b, use_cache=False).logits, b).backward()
        model.zero_grad(set_to_none=True)

    def variant(spec):
        "full: one product per factor and batch (the library's CUDA path); rN: recursive halving down to width N."
        leaf = 1 << 30 if spec == "full" else int(spec[1:])
        def run():
            old = kfac._SYM_LEAF.get(dev.type)
            kfac._SYM_LEAF[dev.type] = leaf
            try: return kfac.kfac_factors(model, lb, modules=mods, progress=False)
            finally: kfac._SYM_LEAF[dev.type] = old
        return run

    def hooks_only():      # the hooks, selections and casts without the products: where the rest goes
        real = kfac._sym_addmm_
        kfac._sym_addmm_ = lambda C, *args: C
        try: return kfac.kfac_factors(model, lb, modules=mods, progress=False)
        finally: kfac._sym_addmm_ = real

    def forward_only():
        with torch.no_grad():
            for b in lb: model(**b, use_cache=False)

    specs = a.variants.split(",")
    fns = dict(fwd_bwd=fwd_bwd, forward=forward_only, **{f"kfac_{s}": variant(s) for s in specs}, hooks_only=hooks_only)
    res, peak = {}, {}        # warm-up, the factors to compare, and each one's peak memory above what was in use before
    for k, fn in fns.items():
        if dev.type == "cuda": sync(); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
        r = fn()
        if dev.type == "cuda": sync(); peak[k] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        if k.startswith("kfac_"): res[k] = r
        del r
    times = {k: [] for k in fns}
    for _ in range(a.rounds):
        for k, fn in fns.items():
            sync(); t0 = time.perf_counter(); fn(); sync(); times[k].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    n_tok = sum(int(b["attention_mask"][:, 1:].sum()) for b in lb)
    out = dict(device=torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu", torch=torch.__version__,
               tf32=torch.backends.cuda.matmul.allow_tf32, tokens=n_tok, batches=len(lb), batch_shape=list(lb[0]["input_ids"].shape),
               rounds=a.rounds, median_s=med, times_s=times, peak_mb=peak,
               over_fwd_bwd={k: med[k] / med["fwd_bwd"] for k in med},
               rel_diff_vs_full={k: rel_diff(res[k], res["kfac_full"]) for k in res})
    if a.profile and dev.type == "cuda":
        from torch.profiler import profile, ProfilerActivity
        best = min((k for k in med if k.startswith("kfac_")), key=med.get)
        for k in dict.fromkeys(("fwd_bwd", "kfac_full", best)):
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
                fns[k](); sync()
            tab = p.key_averages().table(sort_by="cuda_time_total", row_limit=12)
            ev = p.key_averages()
            out.setdefault("profile", {})[k] = dict(cuda_total_ms=sum(e.self_device_time_total for e in ev) / 1e3,
                                                    n_kernels=sum(e.count for e in ev if e.device_type.name == "CUDA"))
            print(f"--- profile {k}\n{tab}")
    txt = json.dumps(out, indent=1)
    print(txt)
    if a.out: Path(a.out).mkdir(parents=True, exist_ok=True); (Path(a.out) / f"cuda_kfac_{a.seq_len}.json").write_text(txt)
    return out


if __name__ == "__main__":
    main()
