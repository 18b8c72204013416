"""Speed and memory of ortho-nbs, as ratios measured in one run on one machine (never asserted in tests).

    .venv/bin/python benchmarks/run.py [--quick] [--device cpu|cuda|auto] [--only kfac|ddp|sharded|suite|prefix|hvp|finetune]

Writes benchmarks/results.json (flat keys) and benchmarks/results.md (a table with the machine's description).
"""
import argparse, re, json, os, platform, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path
import torch

ROOT = Path(__file__).resolve().parents[1]


def timeit(fn, repeat=3):
    "Median wall time of `fn()` over `repeat` runs after one warm-up."
    fn()
    ts = []
    for _ in range(repeat):
        if torch.cuda.is_available(): torch.cuda.synchronize()
        t0 = time.perf_counter(); fn()
        if torch.cuda.is_available(): torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def matmul_peak_flops(device, n=2048, dtype=torch.float32):
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    t = timeit(lambda: a @ b, repeat=5)
    return 2 * n ** 3 / t


def interleaved(fns: dict, repeat=3):
    "Median wall time of each of `fns` over `repeat` rounds that run them in turn (after one warm-up each)."
    ts = {k: [] for k in fns}
    for r in range(repeat):
        for k, fn in fns.items():
            if torch.cuda.is_available(): torch.cuda.synchronize()
            t0 = time.perf_counter(); fn()
            if torch.cuda.is_available(): torch.cuda.synchronize()
            ts[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in ts.items()}, ts


def peak_mb(fn, device):
    """(result of fn(), peak memory above what was in use before the call, in MB): `ortho_nbs.costs.peak_memory`, the
    CUDA allocator peak on a GPU, else the process RSS sampled every millisecond (what fn returns counts in)."""
    from ortho_nbs.costs import peak_memory
    out, _, peak = peak_memory(fn, device)
    return out, peak / 2 ** 20


def _curvlinops_kfac(model, mods, batches):
    """A function computing curvlinops' KFACLinearOperator (empirical Fisher, KFAC-expand) on the positions that have a
    next token, the same batches for our `kfac_factors`, and a comparison of the two sets of factors.

    Conventions: both take A = mean over tokens of a a^T; curvlinops' G is the sum over tokens of g g^T for a loss with
    reduction='sum', ours the mean, so we divide theirs by the number of tokens before comparing."""
    from torch import nn
    from curvlinops import KFACLinearOperator

    class NextToken(nn.Module):                      # logits as (batch, vocab, positions) for CrossEntropyLoss
        def __init__(self, m): super().__init__(); self.m = m
        def forward(self, x): return self.m(input_ids=x, use_cache=False).logits.transpose(1, 2)
    wrapped = NextToken(model)
    data = [(b["input_ids"][:, :-1], b["input_ids"][:, 1:]) for b in batches]   # the positions with a next token
    ours_in = [dict(input_ids=torch.cat([x, y[:, -1:]], 1), attention_mask=torch.ones(x.shape[0], x.shape[1] + 1, dtype=torch.long, device=x.device))
               for x, y in data]
    params = [m.weight for m in mods.values()]
    def theirs():
        op = KFACLinearOperator(wrapped, nn.CrossEntropyLoss(reduction="sum"), params, data, fisher_type="empirical",
                                kfac_approx="expand", check_deterministic=False, separate_weight_and_bias=True)
        op.compute_kronecker_factors(); return op
    names = {id(m): n for n, m in wrapped.named_modules()}
    n_tok = sum(x.numel() for x, _ in data)
    def max_rel_diff(ours, op):
        err = 0.0
        for n, m in mods.items():
            A_t, G_t = op._input_covariances[names[id(m)]], op._gradient_covariances[names[id(m)]] / n_tok
            for mine, theirs_ in ((ours[n]["A"], A_t), (ours[n]["G"], G_t)):
                err = max(err, ((mine.double() - theirs_.double()).abs().max() / theirs_.double().abs().max()).item())
        return err
    return ours_in, theirs, max_rel_diff, data


def curvlinops_comparison(repeat=5):
    "Our kfac_factors vs curvlinops' KFACLinearOperator on a tiny model (4 blocks, 64 wide), the same batches: a second row."
    try:
        import curvlinops  # noqa: F401
    except ImportError:
        return dict(kfac_curvlinops_over_ours=None, kfac_curvlinops_note="curvlinops-for-pytorch is not installed")
    from ortho_nbs.models import tiny_model, tiny_tokenizer
    from ortho_nbs.kfac import kfac_factors
    from ortho_nbs.training import linear_modules, lm_batches
    model, tok = tiny_model("llama", n_layers=4, d_model=64), tiny_tokenizer()
    text = ["the quick brown fox jumps over the lazy dog, then naps in the warm afternoon sun"] * 40
    batches = lm_batches(tok, text, seq_len=64, batch_size=8)
    mods = linear_modules(model)
    ours_in, theirs, max_rel_diff, data = _curvlinops_kfac(model, mods, batches)
    ours = lambda: kfac_factors(model, ours_in, modules=mods, progress=False)
    err = max_rel_diff(ours(), theirs())
    med, _ = interleaved(dict(ours=ours, theirs=theirs), repeat)
    return dict(kfac_curvlinops_over_ours=med["theirs"] / med["ours"], kfac_curvlinops_max_rel_diff=err, kfac_ours_tiny_s=med["ours"],
                kfac_curvlinops_tiny_s=med["theirs"], curvlinops_version=__import__("importlib.metadata").metadata.version("curvlinops-for-pytorch"),
                kfac_curvlinops_setting=f"tiny llama 4x64, {len(data)} batches of {tuple(data[0][0].shape)} tokens, {len(mods)} linear layers, "
                                        f"median of {repeat} interleaved")


def kfac_real(model, tok, dev, seqs=32, repeat=3):
    """K-FAC accumulation on the real model vs a training forward + backward (all weight gradients) and vs curvlinops'
    KFACLinearOperator, the same batches of public text, `repeat` interleaved rounds after a warm-up that also measures
    each one's peak memory and the factors' agreement."""
    from ortho_nbs.data import public_documents
    from ortho_nbs.kfac import kfac_factors
    from ortho_nbs.training import lm_batches, next_token_loss, linear_modules
    lb = [{k: v.to(dev) for k, v in b.items()} for b in lm_batches(tok, public_documents(split="train"), 128, 8, seqs)]
    mods = linear_modules(model)
    def fwd_bwd():
        for b in lb: next_token_loss(model(**b, use_cache=False).logits, b).backward()
        model.zero_grad(set_to_none=True)
    fns = dict(fwd_bwd=fwd_bwd)
    try:
        ours_in, theirs, max_rel_diff, _ = _curvlinops_kfac(model, mods, lb)
    except ImportError:
        theirs = None; ours_in = lb
    fns["ours"] = lambda: kfac_factors(model, ours_in, modules=mods, progress=False)
    if theirs is not None: fns["theirs"] = theirs
    out, peaks, res = {}, {}, {}
    for k, fn in fns.items(): res[k], peaks[k] = peak_mb(fn, dev)
    if theirs is not None: out["kfac_curvlinops_max_rel_diff_real"] = max_rel_diff(res["ours"], res["theirs"])
    del res
    med, _ = interleaved(fns, repeat)
    n_tok = sum(int(b["attention_mask"][:, 1:].sum()) for b in ours_in)
    out.update(fwd_bwd_s=med["fwd_bwd"], kfac_s=med["ours"], kfac_over_fwd_bwd=med["ours"] / med["fwd_bwd"], kfac_tokens=n_tok,
               kfac_repeats=repeat, fwd_bwd_peak_mb=peaks["fwd_bwd"], kfac_peak_mb=peaks["ours"],
               kfac_real_setting=f"SmolLM2-135M-Instruct, {len(lb)} batches of {tuple(lb[0]['input_ids'].shape)} tokens of public text, "
                                 f"{len(mods)} linear layers, median of {repeat} interleaved")
    if theirs is not None:
        out.update(kfac_curvlinops_real_s=med["theirs"], kfac_curvlinops_over_ours_real=med["theirs"] / med["ours"],
                   kfac_curvlinops_peak_mb=peaks["theirs"])
    return out


SIDE_BY_SIDE = """
## K-FAC: ours vs curvlinops' KFACLinearOperator (empirical Fisher, KFAC-expand), the same batches

| setting | ours s | curvlinops s | curvlinops / ours | max rel. diff. of factors | peak MB ours | peak MB curvlinops |
|---|---|---|---|---|---|---|
| {kfac_real_setting} | {kfac_s:.3g} | {kfac_curvlinops_real_s:.3g} | {kfac_curvlinops_over_ours_real:.3g} | {kfac_curvlinops_max_rel_diff_real:.2g} | {kfac_peak_mb:.0f} | {kfac_curvlinops_peak_mb:.0f} |
| {kfac_curvlinops_setting} | {kfac_ours_tiny_s:.3g} | {kfac_curvlinops_tiny_s:.3g} | {kfac_curvlinops_over_ours:.3g} | {kfac_curvlinops_max_rel_diff:.2g} | | |

Real model: a training forward + backward (all weight gradients) over the same batches takes {fwd_bwd_s:.3g} s; K-FAC
accumulation {kfac_over_fwd_bwd:.3g}x that. Peak memory: above what was in use before the call, the returned factors
included ({peak_how}).
"""


def frozen_prefix_real(model, tok, dev, n_canaries=128, n_windows=16, first=16, repeat=3):
    """30_ogd's evaluation of one weight variant (teacher-forced canary pass + held-out domain loss) on the real model,
    in full vs with `Prefix.replayed` (blocks below the fine-tuned ones replayed), interleaved; results must be equal."""
    from ortho_nbs.data import canaries, public_documents
    from ortho_nbs.training import lm_batches, Prefix
    from ortho_nbs.canary import canary_scores
    from ortho_nbs.training import window_loss
    cans = canaries(n_canaries, seed=0)
    domain = torch.cat([b["input_ids"] for b in lm_batches(tok, public_documents(split="heldout"), 128, 64, n_windows)])
    evaluate = lambda: (canary_scores(model, tok, cans)["loss"], window_loss(model, domain))
    full = evaluate()
    with Prefix(model, first).replayed() as store:
        evaluate(); kept = dict(store)                 # the first pass keeps the stream entering block `first`
        same = evaluate() == full
    def with_prefix():
        with Prefix(model, first).replayed() as store:
            store.update(kept); evaluate()              # every batch a repeat, as for the 2nd..nth weight variant
    med, _ = interleaved(dict(full=evaluate, prefix=with_prefix), repeat)
    med_full, t_prefix = med["full"], med["prefix"]
    return dict(eval_variant_full_s=med_full, eval_variant_prefix_s=t_prefix,
                frozen_prefix_speedup=med_full / t_prefix, frozen_prefix_identical=bool(same),
                frozen_prefix_setting=f"SmolLM2-135M-Instruct, {n_canaries} canaries + {n_windows} x 128 held-out tokens, "
                                      f"blocks 0..{first - 1} frozen (30_ogd's fine-tuned blocks start at {first}), median of {repeat}")


def finetune_step_real(model, tok, dev, first=16, repeat=3):
    """30_ogd's fine-tune step on the real model: the gradients of the MLP up/down weights of blocks 16..27 for one batch of
    4 training windows (128 tokens) and one of 32 canaries, as before (full forward, `next_token_loss` on the (B, T, vocab)
    logits) vs now (blocks 0..15 started from `Prefix.states` kept once per row, `lm_loss` at the target positions only),
    interleaved; the losses and gradients must agree to float rounding. Also the step's FLOPs (torch's FlopCounterMode)
    and what the paper profile's six fine-tunes cost at the rate the step reaches: the floor of `30_ogd`'s first run."""
    from ortho_nbs.data import canaries, public_documents
    from ortho_nbs.training import lm_batches, linear_modules, next_token_loss, lm_loss, Prefix, grads_only_for
    from ortho_nbs.hooks import encode, with_positions
    from torch.utils.flop_counter import FlopCounterMode
    mods = linear_modules(model, include=["mlp.up_proj", "mlp.down_proj"], layers=list(range(first, 28)))
    W = [m.weight for m in mods.values()]
    win = torch.cat([b["input_ids"] for b in lm_batches(tok, public_documents(split="train"), 128, 64, 16)])[:4].to(dev)
    batches = [dict(input_ids=win, attention_mask=torch.ones_like(win)),
               with_positions(encode(tok, [c["text"] for c in canaries(32, seed=0)], dev, add_special_tokens=True))]
    prefix = Prefix(model, first); states = [prefix.states(b) for b in batches]          # kept once per row in the fine-tune (not timed)
    def before():
        return [(l.item(), torch.autograd.grad(l, W)) for b in batches
                for l in [next_token_loss(model(**b, use_cache=False).logits, b)]]
    def now():
        out = []
        for b, h in zip(batches, states):
            with prefix.given(h): l = lm_loss(model, b)
            out.append((l.item(), torch.autograd.grad(l, W)))
        return out
    with grads_only_for(model, W):
        a, b = before(), now()
        loss_diff = max(abs(x[0] - y[0]) for x, y in zip(a, b))
        grad_diff = max(float((ga - gb).abs().max() / ga.abs().max()) for x, y in zip(a, b) for ga, gb in zip(x[1], y[1]))
        med, _ = interleaved(dict(before=before, now=now), repeat)
        fc = FlopCounterMode(display=False)
        with fc: now()
    # the arithmetic floor of 30_ogd's paper profile: 3 seeds x (plain + OGD) x 72 steps; an OGD step adds the projection
    # of eq. 7 (U_G^T G U_A and back: four products per weight)
    step_flop = fc.get_total_flops()
    proj_flop = sum(4 * (o * o * i + o * i * i) for o, i in (tuple(w.shape) for w in W))
    paper_flop = 6 * 72 * step_flop + 3 * 72 * proj_flop
    peak = matmul_peak_flops(dev)
    return dict(finetune_step_before_s=med["before"], finetune_step_s=med["now"], finetune_step_speedup=med["before"] / med["now"],
                finetune_step_max_loss_diff=loss_diff, finetune_step_max_grad_rel_diff=grad_diff,
                finetune_step_gflop=step_flop / 1e9, finetune_step_gflops=step_flop / med["now"] / 1e9,
                ogd_projection_gflop=proj_flop / 1e9, finetune_matmul_peak_gflops=peak / 1e9,
                finetune_paper_tflop=paper_flop / 1e12, finetune_paper_floor_min=paper_flop / (step_flop / med["now"]) / 60,
                finetune_paper_floor_note="30_ogd's six paper-profile fine-tunes (3 seeds x plain/OGD x 72 steps) at the rate this "
                                          "step's products reach; at finetune_matmul_peak_gflops (2048^2 fp32) it is less",
                finetune_step_setting=f"SmolLM2-135M-Instruct, gradients of the MLP up/down weights of blocks {first}..27 for 4 windows "
                                      f"x 128 tokens + 32 canaries, blocks 0..{first - 1} from kept streams, median of {repeat}, interleaved")


def frozen_prefix_generation_real(model, tok, dev, first=21, repeat=3):
    """10_ablation's unit of work: greedy avoidance answers (84 held-out prompts, 24 tokens) of the model with u projected
    out of blocks first..L-1, in full vs with the prompts' prefill below block `first` replayed (KV cache included),
    interleaved; the answers must be equal."""
    from ortho_nbs.data import avoidance_pairs
    from ortho_nbs.training import Prefix
    from ortho_nbs.hooks import decoder_layers
    from ortho_nbs.ablation import avoidance_rate, ablated, unit_direction
    prompts = [p["avoid"] for p in avoidance_pairs("heldout")]
    window = list(range(first, len(decoder_layers(model))))
    u = unit_direction(torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0)))
    def answers():
        with ablated(model, u, window): return avoidance_rate(model, tok, prompts, 24, 64, progress=False)["generations"]
    full = answers()
    kept = {}
    with Prefix(model, first).replayed(kept): avoidance_rate(model, tok, prompts, 24, 64, progress=False)   # the base run keeps
    def with_prefix():
        with Prefix(model, first).replayed(kept): return answers()
    same = with_prefix() == full
    med, _ = interleaved(dict(full=answers, prefix=with_prefix), repeat)
    return dict(generation_full_s=med["full"], generation_prefix_s=med["prefix"], generation_prefix_speedup=med["full"] / med["prefix"],
                generation_prefix_identical=bool(same),
                generation_prefix_setting=f"SmolLM2-135M-Instruct, {len(prompts)} held-out avoidance prompts x 24 greedy tokens (batches of 64), "
                                          f"u projected out of blocks {first}..{window[-1]}, blocks 0..{first - 1} replayed, median of {repeat}")


def shared_prefix_real(model, tok, dev, repeat=3):
    """10_ablation's two units of work on the base model: greedy answers to the 84 held-out avoidance prompts (24 tokens,
    one batch of 84) and the log-probabilities of 60 neutral prompt + answer texts (the KL's forward), each as one
    left-padded batch (every row runs the chat template's system turn) vs with the shared prefix run once
    (`encode_shared`, what `generate` and `token_logprobs` do), interleaved; answers must be equal."""
    from ortho_nbs.data import avoidance_pairs, neutral_prompts
    from ortho_nbs.hooks import encode, encode_prompts, format_prompts, with_positions
    from ortho_nbs.evaluation import generate, token_logprobs
    prompts = [p["avoid"] for p in avoidance_pairs("heldout")]
    @torch.no_grad()
    def padded_answers():
        enc = encode_prompts(tok, prompts, device=dev)
        ids = model.generate(**enc, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
        return [o.strip() for o in tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]
    shared_answers = lambda: generate(model, tok, prompts, 24, len(prompts), progress=False)
    neutral = neutral_prompts()[:60]
    texts = [t + a for t, a in zip(format_prompts(tok, neutral), generate(model, tok, neutral, 24, 64, progress=False))]
    @torch.no_grad()
    def padded_logprobs():
        enc = encode(tok, texts, dev, add_special_tokens=False)
        lp = torch.log_softmax(model(**with_positions(enc), use_cache=False).logits.float(), -1)
        return lp[enc["attention_mask"].bool()].cpu()
    shared_logprobs = lambda: token_logprobs(model, tok, texts, 64)
    same = padded_answers() == shared_answers()
    a, b = padded_logprobs(), shared_logprobs()
    med, _ = interleaved(dict(gen_padded=padded_answers, gen_shared=shared_answers, lp_padded=padded_logprobs, lp_shared=shared_logprobs), repeat)
    k = encode_prompts(tok, prompts[:2])["input_ids"].shape[1]
    return dict(shared_prefix_generation_padded_s=med["gen_padded"], shared_prefix_generation_s=med["gen_shared"],
                shared_prefix_generation_speedup=med["gen_padded"] / med["gen_shared"], shared_prefix_generation_identical=bool(same),
                shared_prefix_logprobs_padded_s=med["lp_padded"], shared_prefix_logprobs_s=med["lp_shared"],
                shared_prefix_logprobs_speedup=med["lp_padded"] / med["lp_shared"],
                shared_prefix_logprobs_max_abs_diff=float((a - b).abs().max()),
                shared_prefix_setting=f"SmolLM2-135M-Instruct base model: {len(prompts)} held-out avoidance prompts x 24 greedy tokens in one batch; "
                                      f"log-probs of {len(texts)} neutral prompt + answer texts ({a.shape[0]} positions); the chat template's "
                                      f"system turn is the shared prefix; median of {repeat}, interleaved")


def hvp_real(model, tok, dev, block=22, n_vectors=4, repeat=3):
    """30_ogd's Lanczos workload: `n_vectors` Hessian-vector products w.r.t. one down projection of SmolLM2 on 32 canaries
    + 4 x 128 public tokens, by `hvp_operator(keep_graphs=False)` (a forward and two backwards per product) vs
    `hvp_operator` keeping the graphs (the forward and first backward once, then one backward per product), interleaved; the products must agree."""
    from ortho_nbs.data import canaries, public_documents
    from ortho_nbs.hooks import encode
    from ortho_nbs.kfac import hvp_operator
    from ortho_nbs.training import lm_batches, linear_modules
    mod = linear_modules(model)[f"{block}.mlp.down_proj"]
    enc = encode(tok, [c["text"] for c in canaries(32, seed=0)], add_special_tokens=True)
    pub = lm_batches(tok, public_documents(split="train"), 128, 4, 4)[0]
    bs = [dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]), pub]
    g = torch.Generator().manual_seed(0)
    Vs = [torch.randn(mod.weight.shape, generator=g) for _ in range(n_vectors)]
    def each():
        with hvp_operator(model, mod, bs, keep_graphs=False) as hv: return [hv(V) for V in Vs]
    def kept():
        with hvp_operator(model, mod, bs) as hv: return [hv(V) for V in Vs]
    err = max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(each(), kept()))
    med, _ = interleaved(dict(each=each, kept=kept), repeat)
    n_tok = sum(int(b["attention_mask"][:, 1:].sum()) for b in bs)
    return dict(hvp_each_s=med["each"] / n_vectors, hvp_kept_s=med["kept"] / n_vectors, hvp_kept_speedup=med["each"] / med["kept"],
                hvp_kept_max_rel_diff=err,
                hvp_setting=f"SmolLM2-135M-Instruct, {block}.mlp.down_proj, {n_tok} target tokens (32 canaries + 4 x 128 public), "
                            f"{n_vectors} products per call (the operator's build included), median of {repeat}")


def ddp_agreement(model_name: str, world: int = 2, quick: bool = False) -> dict:
    "K-FAC and the plain + OGD fine-tunes with `world` torchrun processes against one process (benchmarks/ddp_agreement.py)."
    seqs, seq_len, bs = (4, 64, 2) if quick else (8, 128, 4)
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ddp_agreement.py"), "--model", model_name, "--out", d,
                        "--sequences", str(seqs), "--seq-len", str(seq_len), "--batch-size", str(bs), "--steps", "3",
                        "--compare", str(world)], check=True)
        res = json.loads((Path(d) / "agreement.json").read_text())
    res["ddp_setting"] = (f"{model_name}, {world} processes (gloo/NCCL) vs 1: K-FAC of {res['n_layers']} layers over {res['n_tokens']} "
                          f"tokens; plain + OGD fine-tunes (OGD eigenbasis from the one-process factors), 3 steps, MLP up/down of the last 2 blocks")
    return res

def sharded_agreement(model_name: str, world: int = 2, quick: bool = False) -> dict:
    """FSDP2 fine-tunes and K-FAC layers owned by ranks (issue #39) with `world` torchrun processes against one process,
    and the per-rank peak memory of the K-FAC stage with and without owners (benchmarks/ddp_agreement.py)."""
    seqs, seq_len, bs = (4, 64, 2) if quick else (8, 128, 4)
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ddp_agreement.py"), "--model", model_name, "--out", d,
                        "--sequences", str(seqs), "--seq-len", str(seq_len), "--batch-size", str(bs), "--steps", "3",
                        "--sharding", "fsdp", "--shard-kfac", "--compare", str(world)], check=True)
        res = json.loads((Path(d) / "agreement.json").read_text())
    res.pop("n_layers", None); res.pop("n_tokens", None)
    res["sharded_setting"] = (f"{model_name}, {world} processes (gloo/NCCL) vs 1. FSDP2: plain + OGD fine-tunes and Algorithm 1 (k = 64), 3 steps, MLP "
                              f"up/down of the last 2 blocks, no frozen prefix on either side. K-FAC owners: {res['kfac_sharded_layers']} "
                              f"layers balanced by d_in^3 + d_out^3 over {seqs} x {seq_len} tokens; peak = process RSS above the "
                              "stage's start (factors, then eigenbases of the rank's layers), the larger of the ranks")
    return res

def test_suite_time() -> dict:
    """Wall time of `make test` (the README's test command; setup is a no-op once .venv is installed), and pytest's own
    time and counts from its last line."""
    t0 = time.perf_counter()
    r = subprocess.run(["make", "test"], cwd=ROOT, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    print(r.stdout[-3000:], r.stderr[-2000:], sep="\n")
    last = re.findall(r"=+ (.*) in ([0-9.]+)s", r.stdout)
    out = dict(test_suite_s=secs, test_suite_passed=r.returncode == 0,
               test_suite_note=f"make test on {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores")
    if last: out.update(test_suite_pytest_s=float(last[-1][1]), test_suite_outcome=last[-1][0])
    return out

def write_results(out):
    (ROOT / "benchmarks" / "results.json").write_text(json.dumps(out, indent=1))
    rows = [(k, f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in out.items()]
    md = "# ortho-nbs benchmarks\n\n| key | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"
    try:
        md += SIDE_BY_SIDE.format(**out, peak_how="CUDA allocator" if str(out.get("device", "cpu")).startswith("cuda") else "process RSS, sampled every ms")
    except (KeyError, TypeError, ValueError): pass    # curvlinops absent: the key table alone
    (ROOT / "benchmarks" / "results.md").write_text(md)
    return md

def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer prompts and tokens (about a minute)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", choices=["kfac", "ddp", "sharded", "suite", "prefix", "hvp", "finetune"], default=None,
                    help="kfac: only the K-FAC timings (real model and tiny); ddp: 2 processes vs 1 on SmolLM2-135M; "
                         "sharded: FSDP2 fine-tunes and K-FAC layers owned by ranks, 2 processes vs 1 on SmolLM2-135M; "
                         "suite: the test suite's wall time; prefix: 30_ogd's evaluation and 10_ablation's generation with and without Prefix.replayed, and with and without the shared prefix; "
                         "hvp: Hessian-vector products one by one vs from one hvp_operator; "
                         "finetune: 30_ogd's fine-tune step before and after the frozen prefix and lm_loss; "
                         "merged into the existing results.json")
    a = ap.parse_args(argv)
    from ortho_nbs.models import load_model, packaged_gguf, resolve_device
    from ortho_nbs.hooks import residual_states, encode_prompts, with_positions, batches
    from ortho_nbs.data import public_text_chunks
    from ortho_nbs.ablation import behaviour_directions, aggregate_direction, target_layers, orthogonalize_, restore_
    dev = resolve_device(a.device)
    out = dict(machine=platform.platform(), processor=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
               torch=torch.__version__, torch_threads=torch.get_num_threads(), device=str(dev),
               gpu=torch.cuda.get_device_name(0) if dev.type == "cuda" else None)
    if a.only:
        path = ROOT / "benchmarks" / "results.json"
        out = {**(json.loads(path.read_text()) if path.exists() else {}), **out}
    if a.only == "ddp":
        out.update(ddp_agreement("smollm2-135m-instruct", 2, a.quick)); print(write_results(out)); return
    if a.only == "sharded":
        out.update(sharded_agreement("smollm2-135m-instruct", 2, a.quick)); print(write_results(out)); return
    if a.only == "suite":
        out.update(test_suite_time()); print(write_results(out)); return
    if a.only == "prefix":
        model, tok = load_model("smollm2-135m-instruct", device=dev)
        out.update(frozen_prefix_real(model, tok, dev)); out.update(frozen_prefix_generation_real(model, tok, dev))
        out.update(shared_prefix_real(model, tok, dev))
        print(write_results(out)); return
    if a.only == "finetune":
        model, tok = load_model("smollm2-135m-instruct", device=dev)
        out.update(finetune_step_real(model, tok, dev)); print(write_results(out)); return
    if a.only == "hvp":
        model, tok = load_model("smollm2-135m-instruct", device=dev)
        out.update(hvp_real(model, tok, dev)); print(write_results(out)); return
    if a.only == "kfac":
        model, tok = load_model("smollm2-135m-instruct", device=dev)
        out.update(kfac_real(model, tok, dev, seqs=8 if a.quick else 32))
        out.update(curvlinops_comparison())
        print(write_results(out)); return

    # 5. model load: GGUF dequantisation vs the cached safetensors copy
    from transformers import AutoModelForCausalLM
    gguf, _ = packaged_gguf("smollm2-135m-instruct")
    t0 = time.perf_counter(); AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    out["gguf_load_s"] = time.perf_counter() - t0
    load_model("smollm2-135m-instruct", device=dev)
    t0 = time.perf_counter(); model, tok = load_model("smollm2-135m-instruct", device=dev); out["cached_load_s"] = time.perf_counter() - t0

    n_prompts = 32 if a.quick else 96
    prompts = public_text_chunks(n_prompts, n_chars=300, seed=0)

    # 1. residual-stream capture of all layers vs a bare no-grad forward over the same batches
    def bare():
        with torch.no_grad():
            for c in batches(prompts, 16): model(**with_positions(encode_prompts(tok, c, device=dev)), use_cache=False)
    t_bare = timeit(bare); t_cap = timeit(lambda: residual_states(model, tok, prompts, batch_size=16, progress=False))
    out.update(forward_s=t_bare, capture_s=t_cap, capture_over_forward=t_cap / t_bare)

    # 4. forward throughput vs this machine's fp32 matmul peak
    n_tok = sum(int(encode_prompts(tok, c)["attention_mask"].sum()) for c in batches(prompts, 16))
    n_params = sum(p.numel() for p in model.parameters())
    peak = matmul_peak_flops(dev)
    out.update(forward_tokens_per_s=n_tok / t_bare, matmul_peak_gflops=peak / 1e9,
               forward_fraction_of_matmul_peak=2 * n_params * n_tok / t_bare / peak)

    # 2. direction + orthogonalisation of all target layers, and peak RSS of the pipeline
    H = residual_states(model, tok, prompts, progress=False)
    def direction_and_edit():
        d = behaviour_directions(H[: n_prompts // 2], H[n_prompts // 2:])
        u = aggregate_direction(d["v"], d["saliency"], target_layers(H.shape[1]))
        restore_(model, orthogonalize_(model, u, target_layers(H.shape[1])))
    out["direction_and_orthogonalize_s"] = timeit(direction_and_edit)
    import resource
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["model_fp32_mb"] = n_params * 4 / 2 ** 20

    # 3. K-FAC factor accumulation vs a training forward+backward and vs curvlinops, real model; then the tiny-model row
    out.update(kfac_real(model, tok, dev, seqs=8 if a.quick else 32))
    out.update(curvlinops_comparison())
    # 6. whole reproductions, from the runner's records
    for prof in ("smoke", "paper"):
        runs = sorted((ROOT / "runs").glob(f"{prof}-*/summary.json")) + ([ROOT / "results" / "paper_summary.json"] if prof == "paper" else [])
        runs = [r for r in runs if r.exists()]
        if runs:
            s = json.loads(runs[-1].read_text())
            out[f"{prof}_total_s"] = s["total_s"]
            out[f"{prof}_peak_memory_mb"] = max((n.get("peak_memory_mb") or 0) for n in s["notebooks"])
        else: out[f"{prof}_total_s"] = None

    print(write_results(out))


if __name__ == "__main__":
    main()
