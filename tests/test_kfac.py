import pytest, torch
from ortho_nbs.models import tiny_model, tiny_tokenizer
from ortho_nbs.training import linear_modules, lm_batches
from ortho_nbs.kfac import kfac_factors, KFACAccumulator, kfac_quadratic, hvp_operator

TEXT = ["the quick brown fox jumps over the lazy dog"] * 3


def test_accumulator_lifecycle_is_kfac_factors():
    "register / accumulate / reduce / finalize by hand gives kfac_factors' tensors bit for bit, and leaves no hook behind."
    m, tok = tiny_model(), tiny_tokenizer()
    bs = lm_batches(tok, TEXT, seq_len=12, batch_size=2)
    mods = linear_modules(m)
    ref = kfac_factors(m, bs, fisher="mc", diagonal=True, seed=4, progress=False)
    with KFACAccumulator(m, mods, fisher="mc", diagonal=True, seed=4) as acc:
        for b in bs: acc.accumulate(b)
    assert not any(mod._forward_hooks for mod in mods.values())
    # q, k and v read one input: one shared A sum during accumulation
    assert acc.shared["0.self_attn.q_proj"] == {"0.self_attn.q_proj", "0.self_attn.k_proj", "0.self_attn.v_proj"}
    assert acc.sums["0.self_attn.q_proj"]["A"] is acc.sums["0.self_attn.v_proj"]["A"]
    got = acc.reduce().finalize()
    assert list(got) == list(ref)
    for n in ref:
        assert got[n]["n"] == ref[n]["n"] == sum(int(b["attention_mask"][:, 1:].sum()) for b in bs)
        for k in ("A", "G", "D"): assert torch.equal(got[n][k], ref[n][k]), (n, k)
    # ... and after finalize each layer has its own A
    assert got["0.self_attn.q_proj"]["A"].data_ptr() != got["0.self_attn.k_proj"]["A"].data_ptr()


def test_ema_and_mc_options():
    m, tok = tiny_model(), tiny_tokenizer()
    bs = lm_batches(tok, TEXT, seq_len=8, batch_size=1)
    name = "3.mlp.up_proj"; mods = {name: linear_modules(m)[name]}
    exact = kfac_factors(m, bs, mods, progress=False)[name]
    # with identical batches the EMA of batch means equals the mean
    same = [bs[0]] * 4
    torch.testing.assert_close(kfac_factors(m, same, mods, ema=0.95, progress=False)[name]["A"],
                               kfac_factors(m, same, mods, progress=False)[name]["A"], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(kfac_factors(m, bs, mods, ema=0.95, progress=False)[name]["A"], exact["A"])
    # the MC Fisher samples its labels from its own generator: reproducible by seed, another draw with another seed
    mc = lambda seed: kfac_factors(m, bs, mods, fisher="mc", seed=seed, progress=False)[name]["G"]
    assert torch.equal(mc(1), mc(1)) and not torch.equal(mc(1), mc(2)) and not torch.allclose(mc(1), exact["G"])
    with pytest.raises(ValueError, match="supported"): kfac_factors(m, bs, mods, fisher="true")
    with pytest.raises(ValueError, match="decay"): kfac_factors(m, bs, mods, ema=1.5)
    with pytest.raises(ValueError, match="no target positions"):
        kfac_factors(m, [dict(input_ids=torch.tensor([[7]]), attention_mask=torch.ones(1, 1, dtype=torch.long))], mods, progress=False)


def test_kfac_quadratic_is_kronecker_form():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=g); A = A @ A.T; G = torch.randn(3, 3, generator=g); G = G @ G.T
    D = torch.randn(3, 4, generator=g)
    ref = D.double().flatten() @ torch.kron(G, A).double() @ D.double().flatten()
    assert abs(kfac_quadratic(D, A, G) - ref.item()) < 1e-8 * abs(ref.item())


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


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_hvp_operator_kept_graphs_equal_one_batch_at_a_time(family):
    "Kept graphs give the products that redoing them per batch gives (any V, weight layout or flat, a Conv1D too); flags restored."
    m, tok = tiny_model(family), tiny_tokenizer()
    bs = lm_batches(tok, ["the quick brown fox jumps over the lazy dog", "a lazy dog sleeps all afternoon"] * 3, seq_len=10, batch_size=3)
    mod = linear_modules(m)["1.mlp.down_proj" if family == "llama" else "1.mlp.c_proj"]
    g = torch.Generator().manual_seed(0)
    Vs = [torch.randn(mod.weight.shape, generator=g) for _ in range(3)]
    attn, flags = m.config._attn_implementation, [p.requires_grad for p in m.parameters()]
    with hvp_operator(m, mod, bs, keep_graphs=False) as hv: each = [hv(V) for V in Vs]
    with hvp_operator(m, mod, bs) as hv:
        got = [hv(V) for V in Vs]
        flat = hv(Vs[0].flatten())
        D = Vs[0].T if family == "gpt2" else Vs[0]          # (d_out, d_in): a Conv1D's weight is its transpose
        curv = hv.curvature(D)
        with pytest.raises(ValueError, match="the weight is"): hv(torch.zeros(5))
    assert m.config._attn_implementation == attn and [p.requires_grad for p in m.parameters()] == flags   # restored
    for a, b in zip(got, each): assert torch.equal(a, b)
    assert torch.equal(flat, got[0].flatten()) and curv == (got[0] * Vs[0].double()).sum().item()
    for p in m.parameters(): p.requires_grad_(False)          # a frozen model: the products are still w.r.t. the weight
    with hvp_operator(m, mod, bs) as hv: assert torch.equal(hv(Vs[0]), got[0])
    assert not any(p.requires_grad for p in m.parameters())
    # H is symmetric: <V1, H V2> = <V2, H V1>
    assert abs((Vs[0].double() * got[1]).sum() - (Vs[1].double() * got[0]).sum()) < 1e-6 * got[0].abs().sum()


def test_paired_difference_closed_forms():
    from ortho_nbs.kfac import paired_difference
    b = torch.rand(40, generator=torch.Generator().manual_seed(0))
    better = paired_difference(b - 0.5, b)                              # a better by 0.5 on every pair
    assert better["mean"] == pytest.approx(-0.5) and better["ci_lo"] == pytest.approx(-0.5) and better["ci_hi"] == pytest.approx(-0.5)
    assert better["a_smaller_share"] == 1.0 and better["sign_p"] == pytest.approx(2 / 2 ** 40) and better["n"] == 40
    assert paired_difference(b, b)["sign_p"] == 1.0                    # all ties
