import pytest, torch
import torch.nn.functional as F
from ortho_nbs.models import tiny_model, tiny_tokenizer, TINY_FAMILIES
from ortho_nbs.training import linear_modules, lm_batches, target_mask, layer_weight
from ortho_nbs.kfac import (kfac_factors, kronecker_eigenbasis, project_delta, curvature_split, curvature_grid, kfac_quadratic,
                            exact_fisher_quadratic, save_factors, load_factors, _brute_force_factors)

TEXT = ["the quick brown fox jumps over the lazy dog"] * 3


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_factors_equal_brute_force_expectations(family):
    m, tok = tiny_model(family), tiny_tokenizer()
    bs = lm_batches(tok, TEXT, seq_len=12, batch_size=2)
    fac = kfac_factors(m, bs, progress=False)
    for name in list(fac)[:3]:
        mod = linear_modules(m)[name]
        pairs = [_brute_force_factors(m, b, name, mod) for b in bs]
        a = torch.cat([p[0] for p in pairs]); g = torch.cat([p[1] for p in pairs])
        if getattr(mod, "bias", None) is not None: a = torch.cat([a, torch.ones(len(a), 1)], 1)
        torch.testing.assert_close(fac[name]["A"], a.T @ a / len(a), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fac[name]["G"], g.T @ g / len(g), atol=1e-7, rtol=1e-4)
    for f in fac.values():
        for k in ("A", "G"):
            assert torch.equal(f[k], f[k].T) or torch.allclose(f[k], f[k].T, atol=1e-7)
            assert torch.linalg.eigvalsh(f[k].double()).min() > -1e-6


def test_single_token_kronecker_is_exact_fisher():
    m = tiny_model(); name = "1.mlp.down_proj"; mod = linear_modules(m)[name]
    one = dict(input_ids=torch.tensor([[7, 30]]), attention_mask=torch.ones(1, 2, dtype=torch.long))
    f = kfac_factors(m, [one], modules={name: mod}, progress=False)[name]
    loss = F.cross_entropy(m(**one).logits[0, :1], one["input_ids"][0, 1:], reduction="sum")
    gW = torch.autograd.grad(loss, mod.weight)[0].flatten()
    torch.testing.assert_close(torch.kron(f["G"], f["A"]), torch.outer(gW, gW), atol=1e-8, rtol=1e-5)


def test_ema_and_true_fisher_options():
    m, tok = tiny_model(), tiny_tokenizer()
    bs = lm_batches(tok, TEXT, seq_len=8, batch_size=1)
    name = "3.mlp.up_proj"; mods = {name: linear_modules(m)[name]}
    exact = kfac_factors(m, bs, mods, progress=False)[name]
    ema = kfac_factors(m, bs, mods, ema=0.95, progress=False)[name]
    # with identical batches the EMA of batch means equals the mean
    same = [bs[0]] * 4
    torch.testing.assert_close(kfac_factors(m, same, mods, ema=0.95, progress=False)[name]["A"],
                               kfac_factors(m, same, mods, progress=False)[name]["A"], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(ema["A"], exact["A"])
    t1 = kfac_factors(m, bs, mods, fisher="mc", seed=1, progress=False)[name]["G"]
    with pytest.warns(DeprecationWarning, match='fisher="mc"'):
        t2 = kfac_factors(m, bs, mods, fisher="true", seed=1, progress=False)[name]["G"]   # the old name of "mc"
    assert torch.equal(t1, t2) and not torch.allclose(t1, exact["G"])
    with pytest.raises(ValueError, match="supported"): kfac_factors(m, bs, mods, fisher="sampled")
    with pytest.raises(ValueError, match="decay"): kfac_factors(m, bs, mods, ema=1.5)


def test_split_sums_back_and_basis_orthonormal():
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(100, 7, generator=g), torch.randn(100, 5, generator=g)
    b = kronecker_eigenbasis(X.T @ X, Y.T @ Y, damping=1e-3)
    dW = torch.randn(5, 7, generator=g)
    for kw in (dict(gen_fraction=0.7), dict(tau=float(curvature_grid(b).median()))):
        sp = curvature_split(dW, b, **kw)
        torch.testing.assert_close(sp["gen"] + sp["mem"], dW)
        assert 0 < sp["mem_energy_fraction"] < 1 and int(sp["mask"].sum()) in (11, 17)   # 30% of 35 entries / above the median
    with pytest.raises(ValueError, match="exactly one"): curvature_split(dW, b, tau=0.0, gen_fraction=0.5)
    C = project_delta(dW, b)
    torch.testing.assert_close((b["U_G"] @ C @ b["U_A"].T).float(), dW, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\(d_out, d_in\) = \(5, 7\)"): project_delta(dW.T, b)


def test_kfac_quadratic_is_kronecker_form():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=g); A = A @ A.T; G = torch.randn(3, 3, generator=g); G = G @ G.T
    D = torch.randn(3, 4, generator=g)
    ref = D.double().flatten() @ torch.kron(G, A).double() @ D.double().flatten()
    assert abs(kfac_quadratic(D, A, G) - ref.item()) < 1e-8 * abs(ref.item())


def test_factors_roundtrip(tmp_path):
    m, tok = tiny_model(), tiny_tokenizer()
    fac = kfac_factors(m, lm_batches(tok, TEXT, 8, 2), ["mlp.down_proj"], progress=False)
    back = load_factors(save_factors(fac, tmp_path / "f.safetensors"))
    assert set(back) == set(fac) and all(torch.equal(back[n]["G"], fac[n]["G"]) and back[n]["n"] == fac[n]["n"] for n in fac)


def test_grads_only_for_restores_flags_even_on_error():
    from ortho_nbs.training import grads_only_for
    m = tiny_model(); w = linear_modules(m)["0.mlp.up_proj"].weight
    before = [p.requires_grad for p in m.parameters()]
    with pytest.raises(RuntimeError):
        with grads_only_for(m, [w]):
            assert [p for p in m.parameters() if p.requires_grad] == [w]
            raise RuntimeError("boom")
    assert [p.requires_grad for p in m.parameters()] == before


def test_upper_triangle_products_and_mirror():
    from ortho_nbs.kfac import _sym_addmm_, _mirror
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 70, generator=g, dtype=torch.float64), torch.randn(50, 70, generator=g, dtype=torch.float64)
    for leaf in (8, 33, 1000):
        C = _sym_addmm_(torch.full((70, 70), float("nan"), dtype=torch.float64), a, beta=0.0, alpha=1.0, leaf=leaf)
        C = _sym_addmm_(C, b, beta=0.5, alpha=2.0, leaf=leaf)
        torch.testing.assert_close(_mirror(C), 0.5 * a.T @ a + 2 * b.T @ b, rtol=1e-12, atol=1e-12)


def test_factors_do_not_depend_on_the_triangle_split(monkeypatch):
    "A narrow leaf forces the recursive upper-triangle path on the tiny model; the factors stay those of the full products."
    import ortho_nbs.kfac as K
    m, tok = tiny_model(), tiny_tokenizer()
    bs = lm_batches(tok, TEXT, seq_len=12, batch_size=2)
    monkeypatch.setitem(K._SYM_LEAF, "cpu", 1 << 30); full = kfac_factors(m, bs, progress=False)
    monkeypatch.setitem(K._SYM_LEAF, "cpu", 8); split = kfac_factors(m, bs, progress=False)
    ema_split = kfac_factors(m, bs, ema=0.9, diagonal=True, progress=False)
    monkeypatch.setitem(K._SYM_LEAF, "cpu", 1 << 30); ema_full = kfac_factors(m, bs, ema=0.9, diagonal=True, progress=False)
    for x, y in ((full, split), (ema_full, ema_split)):
        for n in x:
            for k in ("A", "G"):
                torch.testing.assert_close(x[n][k], y[n][k], rtol=1e-5, atol=1e-7)
                assert torch.equal(y[n][k], y[n][k].T)
    # q, k and v share one input: equal A, but each its own tensor
    q, k = full["0.self_attn.q_proj"]["A"], full["0.self_attn.k_proj"]["A"]
    assert torch.equal(q, k) and q.data_ptr() != k.data_ptr()


def test_deprecated_split_names_give_the_same_split():
    "Until 2026-11 the splits took the high-curvature share (`fraction`, `remove_fraction`) and returned 'high'/'low'."
    import ortho_nbs.kfac as kfac, ortho_nbs.ogd as ogd, ortho_nbs.training as training
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(200, 24, generator=g), torch.randn(200, 16, generator=g)
    b = kronecker_eigenbasis(X.T @ X, Y.T @ Y); dW = torch.randn(16, 24, generator=g); D = torch.rand(16, 24, generator=g)
    for old_fn, old_kw, new in ((kfac.curvature_split, "fraction", kfac.curvature_split), (ogd.kfac_split, "remove_fraction", kfac.kfac_split)):
        for f in (0.1, 0.25, 0.5, 0.9):
            with pytest.warns(DeprecationWarning, match="gen_fraction=1 - x"):
                old = old_fn(dW, b, **{old_kw: f})
            now = new(dW, b, gen_fraction=1 - f)
            assert torch.equal(old["mem"], now["mem"]) and torch.equal(old["high"], now["mem"]) and torch.equal(old["low"], now["gen"])
    with pytest.warns(DeprecationWarning):
        old = kfac.diagonal_split(dW, D, 0.25)                    # positional: the old high share
    assert torch.equal(old["high"], kfac.diagonal_split(dW, D, gen_fraction=0.75)["mem"])
    assert int((old["mem"] != 0).sum()) == round(0.25 * dW.numel())
    with pytest.raises(TypeError, match="gen_fraction only"): kfac.kfac_split(dW, b, 0.5, gen_fraction=0.5)
    assert kfac.lm_batches is training.lm_batches and kfac.finetune is training.finetune and ogd.kfac_split is kfac.kfac_split


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_hvp_operator_equals_weight_hvp(family):
    "One kept graph per batch gives the products weight_hvp gives (any V, weight layout or flat); a wrong shape is refused."
    from ortho_nbs.kfac import weight_hvp, hvp_operator
    m, tok = tiny_model(family), tiny_tokenizer()
    bs = lm_batches(tok, ["the quick brown fox jumps over the lazy dog", "a lazy dog sleeps all afternoon"] * 3, seq_len=10, batch_size=3)
    mod = linear_modules(m)["1.mlp.down_proj" if family == "llama" else "1.mlp.c_proj"]
    g = torch.Generator().manual_seed(0)
    Vs = [torch.randn(mod.weight.shape, generator=g) for _ in range(3)]
    attn, flags = m.config._attn_implementation, [p.requires_grad for p in m.parameters()]
    with hvp_operator(m, mod, bs) as hv:
        got = [hv(V) for V in Vs]
        flat = hv(Vs[0].flatten())
        with pytest.raises(ValueError, match="the weight is"): hv(torch.zeros(5))
    assert m.config._attn_implementation == attn and [p.requires_grad for p in m.parameters()] == flags   # restored
    for V, h in zip(Vs, got): torch.testing.assert_close(h, weight_hvp(m, mod, bs, V), rtol=1e-10, atol=1e-12)
    for p in m.parameters(): p.requires_grad_(False)          # a frozen model: the products are still w.r.t. the weight
    with hvp_operator(m, mod, bs) as hv: torch.testing.assert_close(hv(Vs[0]), got[0], rtol=1e-10, atol=1e-12)
    assert not any(p.requires_grad for p in m.parameters())
    assert flat.shape == (Vs[0].numel(),) and torch.equal(flat, got[0].flatten())
    # H is symmetric: <V1, H V2> = <V2, H V1>
    assert abs((Vs[0].double() * got[1]).sum() - (Vs[1].double() * got[0]).sum()) < 1e-6 * got[0].abs().sum()


def test_paired_difference_interval_and_sign_test():
    from ortho_nbs.kfac import paired_difference
    g = torch.Generator().manual_seed(0)
    b = torch.rand(40, generator=g)
    better = paired_difference(b - 0.5, b)                              # a better by 0.5 on every pair
    assert better["mean"] == pytest.approx(-0.5) and better["ci_hi"] < 0 and better["a_smaller_share"] == 1.0
    assert better["sign_p"] == pytest.approx(2 / 2 ** 40)
    noise = paired_difference(b + 0.3 * torch.randn(40, generator=g), b)
    assert noise["ci_lo"] < 0 < noise["ci_hi"]                       # no systematic difference: the interval spans 0
    assert paired_difference(b, b)["sign_p"] == 1.0                    # all ties
    with pytest.raises(ValueError, match="2 or more values"): paired_difference([1.0, 2.0], [1.0])
