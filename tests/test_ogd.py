import math, pytest, torch
from ortho_nbs.models import tiny_model, tiny_tokenizer
from ortho_nbs.training import linear_modules, layer_weight, finetune
from ortho_nbs.kfac import kronecker_eigenbasis, project_delta, curvature_grid
from ortho_nbs.ogd import (exposure, flat_subspace_mask, ogd_project, kfac_split, attributed_finetune, svd_split,
                           magnitude_prune, diagonal_split, entanglement, with_deltas, _secret_positions)
from ortho_nbs.data import canaries

G = torch.Generator().manual_seed(0)
SRC = dict(public=["the quick brown fox jumps over the lazy dog"] * 4, private=["abc abc abc 1 2 3"] * 4)


def basis(d_in=6, d_out=4):
    X, Y = torch.randn(300, d_in, generator=G), torch.randn(300, d_out, generator=G)
    return kronecker_eigenbasis(X.T @ X / 300, Y.T @ Y / 300)


def test_ogd_projected_gradient_has_no_component_in_sgen():
    b = basis(); mask = flat_subspace_mask(b, 0.5)
    assert int(mask.sum()) == 12 and curvature_grid(b)[mask].max() <= curvature_grid(b)[~mask].min()
    g = torch.randn(4, 6, generator=G, dtype=torch.float64)
    pg = ogd_project(g, b, mask)
    assert project_delta(pg, b)[mask].abs().max() < 1e-12
    torch.testing.assert_close(project_delta(pg, b)[~mask], project_delta(g, b)[~mask])
    torch.testing.assert_close(ogd_project(pg, b, mask), pg)                       # idempotent
    torch.testing.assert_close(kfac_split(g, b, gen_fraction=0.5)["mem"], pg)      # the split's sharp half = what OGD passes


def test_ogd_finetune_keeps_private_update_out_of_sgen():
    m, tok = tiny_model(), tiny_tokenizer()
    mods = linear_modules(m, include=["mlp.down_proj"], layers=[2, 3])
    bases = {n: basis(layer_weight(x).shape[1], layer_weight(x).shape[0]) for n, x in mods.items()}
    masks = {n: flat_subspace_mask(b, 0.5) for n, b in bases.items()}
    r = attributed_finetune(m, tok, SRC, mods, steps=4, lr=1e-2, batch_size=2, progress=False,
                            project=dict(private=lambda n, g: ogd_project(g, bases[n], masks[n])))
    for n in mods:
        C = project_delta(r["parts"]["private"][n], bases[n])
        assert C[masks[n]].abs().max() < 1e-5 * C.abs().max()
        torch.testing.assert_close(r["parts"]["public"][n] + r["parts"]["private"][n], r["delta"][n], atol=1e-6, rtol=1e-5)


def test_single_source_is_plain_adam():
    m2, m3, tok = tiny_model(), tiny_model(), tiny_tokenizer()
    mods2, mods3 = (linear_modules(m, include=["mlp.down_proj"], layers=[3]) for m in (m2, m3))
    r2 = attributed_finetune(m2, tok, dict(public=SRC["public"]), mods2, steps=5, lr=1e-2, batch_size=4, progress=False)
    r3 = finetune(m3, tok, SRC["public"], mods3, steps=5, lr=1e-2, batch_size=4, progress=False)
    for n in mods2: torch.testing.assert_close(r2["delta"][n], r3["delta"][n], atol=1e-6, rtol=1e-4)


def test_svd_split_sums_back_and_keeps_energy():
    dW = torch.randn(30, 20, generator=G)
    for e in (0.5, 0.9, 0.99):
        s = svd_split(dW, e)
        torch.testing.assert_close(s["gen"] + s["mem"], dW)
        assert s["gen"].pow(2).sum() / dW.pow(2).sum() >= e - 1e-5 and s["energy"] >= e
        assert abs((s["gen"] * s["mem"]).sum()) < 1e-3                         # orthogonal: eta = 0 by construction
    assert svd_split(torch.zeros(3, 2), 0.9)["k"] == 0
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"): svd_split(dW, 0)


def test_pruning_and_diagonal_split():
    dW = torch.randn(10, 8, generator=G)
    p = magnitude_prune(dW, 0.9); kept = p.pow(2).sum() / dW.pow(2).sum()
    assert 0.9 <= kept and (p != 0).sum() < dW.numel()
    d = diagonal_split(dW, torch.rand(10, 8, generator=G), gen_fraction=0.75)
    torch.testing.assert_close(d["mem"] + d["gen"], dW); assert int((d["mem"] != 0).sum()) == 20
    with pytest.raises(ValueError, match="does not match"): diagonal_split(dW, torch.rand(8, 10), gen_fraction=0.75)


def test_entanglement():
    a = torch.randn(5, 4, generator=G)
    assert entanglement({"x": a}, {"x": -3 * a}) == pytest.approx(1.0)
    b = torch.randn(5, 4, generator=G); b -= (a * b).sum() / (a * a).sum() * a
    assert entanglement({"x": a}, {"x": b}) < 1e-6
    with pytest.raises(ValueError, match="zero delta"): entanglement({"x": a}, {"x": 0 * a})
    with pytest.raises(ValueError, match="different layers"): entanglement({"x": a}, {"y": a})


def test_exposure_extremes():
    lp = torch.full((1, 3, 10), -10.0); lp[0, [0, 1, 2], [4, 2, 7]] = 0.0
    assert exposure(lp, ["4-2-7"]).item() == pytest.approx(3 * math.log2(10))
    lp2 = torch.log_softmax(torch.arange(10.0).repeat(1, 3, 1), -1)
    assert exposure(lp2, ["0-0-0"]).item() == pytest.approx(0.0, abs=1e-9)     # the least likely string: rank 10^3
    assert exposure(lp2, ["9-9-9"]).item() == pytest.approx(3 * math.log2(10))


def test_with_deltas_restores():
    m = tiny_model(); mods = linear_modules(m, include=["mlp.down_proj"], layers=[1])
    base = {n: layer_weight(x).detach().clone() for n, x in mods.items()}
    d = {n: torch.ones_like(w) for n, w in base.items()}
    with with_deltas(mods, base, d):
        for n, x in mods.items(): torch.testing.assert_close(layer_weight(x), base[n] + 1)
    for n, x in mods.items(): assert torch.equal(layer_weight(x), base[n])
    with pytest.raises(ValueError, match="delta for"):
        with with_deltas(mods, base, {n: torch.ones(2, 2) for n in base}): pass
    for n, x in mods.items(): assert torch.equal(layer_weight(x), base[n])


def test_generalisation_kept():
    from ortho_nbs.ogd import generalisation_kept
    assert generalisation_kept(3.0, 3.0, 2.5) == 0.0 and generalisation_kept(3.0, 2.5, 2.5) == 1.0
    assert generalisation_kept(3.0, 2.25, 2.5) == pytest.approx(1.5)          # better than the fine-tune on held-out text
    with pytest.raises(ValueError, match="no generalisation to keep"): generalisation_kept(3.0, 2.9, 3.0005)


def test_finetune_curve_and_per_source_batches():
    m, tok = tiny_model(), tiny_tokenizer()
    mods = linear_modules(m, include=["mlp.down_proj"], layers=[3])
    win = torch.randint(0, 100, (5, 10), generator=G)
    r = attributed_finetune(m, tok, dict(public=win, private=SRC["private"]), mods, steps=3, lr=1e-2, progress=False,
                            batch_size=dict(public=2, private=1), evaluate=lambda _: dict(w=layer_weight(mods["3.mlp.down_proj"]).sum()), eval_every=2)
    assert [c["step"] for c in r["curve"]] == [0, 2, 3] and r["curve"][-1]["w"] == pytest.approx(float(layer_weight(mods["3.mlp.down_proj"]).sum()))
    assert 2 <= len(r["seen"]["public"]) <= 5 and set(r["seen"]["private"]) <= {0, 1, 2, 3} and len(r["seen"]["private"]) <= 3
    with pytest.raises(ValueError, match="one per source"):
        attributed_finetune(m, tok, SRC, mods, steps=1, batch_size=dict(public=2), progress=False)


def test_cache_key_names_torch_version_and_window_content(monkeypatch):
    from ortho_nbs import ogd
    m = tiny_model(); w = torch.arange(12).view(3, 4)
    k = ogd._cache_key(m, public=w)
    assert ogd._cache_key(m, public=w.clone()) == k                          # by content, not identity
    assert ogd._cache_key(m, public=w.flip(0)) != k
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    assert ogd._cache_key(m, public=w) != k


def test_teacher_forced_extraction_is_greedy_extraction():
    "On the real model: canaries whose secret it can continue and random ones; one teacher-forced pass = greedy decoding."
    from ortho_nbs.models import load_model
    from ortho_nbs.ogd import canary_scores, extraction
    model, tok = load_model("smollm2-135m-instruct")
    mk = lambda prefix, secret: dict(prefix=prefix, secret=secret, text=prefix + secret + ".")
    cs = [mk("Counting up: 1-2-3-4-5-6-7-8-9. Again: ", "1-2-3-4-5-6"), mk("The sequence 2-4-6-8 repeats: 2-4-6-8, then ", "2-4-6-8-2-4"),
          mk("Digits repeated: 7-7-7-7-7-7-7-7-7. Once more: ", "7-7-7-7-7-7")] + canaries(5, seed=0)
    tf = canary_scores(model, tok, cs)
    assert tf["extracted"] == extraction(model, tok, cs, progress=False)
    assert any(tf["extracted"]) and not all(tf["extracted"])                  # both outcomes occur, so the check could fail
    assert tf["logp"].shape == (8, 6, 10) and all(0 < x < 20 for x in tf["loss"])


def test_frozen_prefix_is_bit_identical_on_the_real_model():
    "30_ogd evaluates its weight variants with blocks 0..15 replayed: the numbers must be those of the full forward."
    from ortho_nbs.models import load_model
    from ortho_nbs.training import linear_modules, layer_weight, lm_batches, frozen_prefix
    from ortho_nbs.ogd import canary_scores, window_loss, with_deltas
    from ortho_nbs.data import public_documents
    model, tok = load_model("smollm2-135m-instruct")
    mods = linear_modules(model, include=["mlp.down_proj"], layers=[16, 20])
    base = {n: layer_weight(m).detach().clone() for n, m in mods.items()}
    delta = {n: 1e-2 * torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) for n, w in base.items()}
    cs = canaries(6, seed=0)
    dom = torch.cat([b["input_ids"] for b in lm_batches(tok, public_documents(split="heldout"), 32, 8, 4)])
    evaluate = lambda: (canary_scores(model, tok, cs)["loss"], window_loss(model, dom, batch_size=2))
    full = [evaluate()]
    with with_deltas(mods, base, delta): full.append(evaluate())
    with frozen_prefix(model, 16) as kept:
        fast = [evaluate()]
        with with_deltas(mods, base, delta): fast.append(evaluate())       # a repeat: blocks 0..15 replayed
        assert len(kept) == 1 + 2                                          # one canary batch, two window batches
    assert fast == full and full[0] != full[1]


def test_frozen_prefix_generation_is_bit_identical_on_the_real_model():
    "10_ablation generates under edits of the last blocks with the prompts' prefill below them replayed: same answers."
    from ortho_nbs.models import load_model
    from ortho_nbs.training import frozen_prefix
    from ortho_nbs.evaluation import generate, token_logprobs
    from ortho_nbs.ablation import ablated, unit_direction
    from ortho_nbs.data import avoidance_pairs
    model, tok = load_model("smollm2-135m-instruct")
    prompts = [p["avoid"] for p in avoidance_pairs("heldout")[:4]]
    u = unit_direction(torch.randn(576, generator=torch.Generator().manual_seed(0)))
    texts = [p + " Sure." for p in prompts]
    def evaluate():
        return generate(model, tok, prompts, 6, 2, progress=False), token_logprobs(model, tok, texts, 2)
    full = [evaluate()]
    with ablated(model, u, [21, 25, 29]): full.append(evaluate())
    with frozen_prefix(model, 21) as kept:
        fast = [evaluate()]
        with ablated(model, u, [21, 25, 29]): fast.append(evaluate())   # a repeat: blocks 0..20 replayed, cache included
        # generate: the chat template's system turn is prefilled once ('kv', the same for both batches), each batch's own
        # tokens on top of it ('kvp', two batches); token_logprobs' raw texts share no prefix: two 'plain' batches
        assert sorted(k[1] for k in kept) == ["kv", "kvp", "kvp", "plain", "plain"]
    for (g_full, lp_full), (g_fast, lp_fast) in zip(full, fast):
        assert g_fast == g_full and torch.equal(lp_fast, lp_full)
    assert not torch.equal(full[0][1], full[1][1])                          # the edit changes the model


def test_algorithm1_k_and_sgen_readings():
    from ortho_nbs.ogd import algorithm1_k, sgen_mask, sgen_projector
    sizes = [110_592, 331_776, 884_736]                                 # SmolLM2's k/v, q/o and MLP matrices
    assert [algorithm1_k(s, sizes) for s in sizes] == [200, 517, 800] and algorithm1_k(5, [5, 5]) == 800
    with pytest.raises(ValueError, match="outside"): algorithm1_k(10, sizes)
    with pytest.raises(ValueError, match="smallest k"): algorithm1_k(5, sizes, (800, 200))
    b = basis(); grid = curvature_grid(b)
    flat, sharp = sgen_mask(b, 6), sgen_mask(b, 6, "sharp")
    assert int(flat.sum()) == int(sharp.sum()) == 6 and not (flat & sharp).any()
    assert grid[flat].max() <= grid[~flat].min() and grid[sharp].min() >= grid[~sharp].max()
    g = torch.randn(4, 6, generator=G, dtype=torch.float64)
    for m in (flat, sharp):                                              # the cheap projector is eq. 7
        torch.testing.assert_close(sgen_projector(b, m, torch.float64)(g), ogd_project(g, b, m))
    with pytest.raises(ValueError, match="1 <= k < 24"): sgen_mask(b, 0)
    with pytest.raises(ValueError, match="use one of"): sgen_mask(b, 3, "random")
    with pytest.raises(ValueError, match="the layer's"): sgen_projector(b, flat)(g.T)


def test_libortho_v2_projects_every_source_and_caches(tmp_path, monkeypatch):
    from ortho_nbs.ogd import libortho_v2
    from ortho_nbs.kfac import kfac_factors
    from ortho_nbs.training import lm_batches
    monkeypatch.setenv("ORTHO_NBS_CACHE", str(tmp_path))
    m, tok = tiny_model(), tiny_tokenizer()
    mods = linear_modules(m, include=["mlp.down_proj", "mlp.up_proj"], layers=[2, 3])
    fac = kfac_factors(m, lm_batches(tok, ["the quick brown fox jumps over the lazy dog"] * 2, seq_len=12, batch_size=2), modules=mods, progress=False)
    w0 = {n: layer_weight(x).detach().clone() for n, x in mods.items()}
    run = lambda reading: libortho_v2(m, tok, SRC, fac, mods, k=30, reading=reading, steps=3, lr=1e-2, batch_size=2, progress=False)
    a, a2, s = run("flat"), run("flat"), run("sharp")
    assert (a["loaded"], a2["loaded"], s["loaded"]) == (False, True, False)
    for n, x in mods.items():
        assert torch.equal(layer_weight(x), w0[n])                      # the model is left at the base weights
        torch.testing.assert_close(a2["delta"][n], a["delta"][n])
        bz = kronecker_eigenbasis(fac[n]["A"], fac[n]["G"])
        for r in (a, s):
            for src in ("public", "private"):
                C = project_delta(r["parts"][src][n], bz)
                assert C[r["masks"][n]].abs().max() < 1e-6 * C.abs().max()
        torch.testing.assert_close(a["clean"][n], svd_split(a["delta"][n], 0.9)["gen"])
    with pytest.raises(ValueError, match="differently from the modules"):
        libortho_v2(m, tok, SRC, {k: v for k, v in list(fac.items())[1:]}, mods, k=30, steps=1, progress=False)


def test_general_capability_against_itself_is_zero_kl():
    from ortho_nbs.ogd import general_capability, general_texts, mean_token_loss
    from ortho_nbs.evaluation import token_logprobs
    from ortho_nbs.data import arithmetic_problems
    m, tok = tiny_model(), tiny_tokenizer()
    texts, gen = ["Tell me a joke. A dog walks into a bar.", "What is 2 + 2? It is 4."], general_texts(5)
    lp = token_logprobs(m, tok, texts)
    r = general_capability(m, tok, texts, lp, arithmetic_problems(3), gen, max_new_tokens=4)
    assert r["general_kl"] == pytest.approx(0.0, abs=1e-6) and r["general_ppl"] == pytest.approx(math.exp(mean_token_loss(m, tok, gen)))
    assert 0 <= r["n_correct"] <= 3 and len(general_texts()) == 256
    with pytest.raises(ValueError, match="none may be empty"): general_capability(m, tok, [], lp, arithmetic_problems(3), gen)
