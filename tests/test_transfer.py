import numpy as np, pytest, torch
from ortho_nbs.models import tiny_model, tiny_tokenizer
import math
from ortho_nbs.hooks import decoder_layers
from ortho_nbs.transfer import (fit_affine, fit_procrustes, apply_affine, r2_score, linear_cka, aligned_positions,
                                steered, steering_curve, propensity, steerability, BEHAVIOURS, top_norm_dims,
                                steered_propensities, secant_slopes, percentile_of, z_score, exceed_null_prob, sign_test_p,
                                linear_range, mixing_weights, shuffled_map_vectors, pearson_rows, exchangeable_z, null_draws, exchangeable_test, holm,
                                min_detectable_shift, domain_sentences, DOMAIN_SENTENCES, shown_text)

G = torch.Generator().manual_seed(0)


def synthetic(n=400, k=6, ds=10, dt=14, noise=0.0):
    Z = torch.randn(n, k, generator=G, dtype=torch.float64)
    Ps, Pt = torch.randn(k, ds, generator=G, dtype=torch.float64), torch.randn(k, dt, generator=G, dtype=torch.float64)
    Hs = Z @ Ps + torch.randn(ds, generator=G, dtype=torch.float64)
    Ht = Z @ Pt + torch.randn(dt, generator=G, dtype=torch.float64)
    return Hs + noise * torch.randn(n, ds, generator=G, dtype=torch.float64), Ht, Ps, Pt


def test_synthetic_map_is_recovered():
    Hs, Ht, Ps, Pt = synthetic()
    fit = fit_affine(Hs[:300], Ht[:300], ridge=0)
    assert r2_score(apply_affine(fit, Hs[300:]), Ht[300:])["r2"] > 0.9999
    A_true = (torch.linalg.pinv(Ps) @ Pt).T
    torch.testing.assert_close(fit["A"].double() @ Ps.T, A_true @ Ps.T, atol=1e-3, rtol=1e-3)
    Hn, Htn = synthetic(noise=0.3)[:2]
    noisy = fit_affine(Hn[:300], Htn[:300], ridge=1e-3)
    assert 0.3 < r2_score(apply_affine(noisy, Hn[300:]), Htn[300:])["r2"] < 0.9999   # noise costs R², the map still explains most


def test_ridge_matches_numpy_lstsq():
    X, Y = torch.randn(50, 4, generator=G), torch.randn(50, 3, generator=G)
    sol = np.linalg.lstsq(np.c_[X.numpy(), np.ones(50)], Y.numpy(), rcond=None)[0]
    f = fit_affine(X, Y, ridge=0)
    np.testing.assert_allclose(f["A"].T.numpy(), sol[:4], atol=1e-4); np.testing.assert_allclose(f["b"].numpy(), sol[4], atol=1e-4)
    assert fit_affine(X, Y, ridge=10.0)["A"].norm() < f["A"].norm()


def test_procrustes_is_scaled_rotation_when_dims_match():
    X = torch.randn(200, 5, generator=G, dtype=torch.float64)
    Q = torch.linalg.qr(torch.randn(5, 5, generator=G, dtype=torch.float64)).Q
    f = fit_procrustes(X, 2.0 * X @ Q.T + 1.0)
    torch.testing.assert_close(f["A"].double(), 2.0 * Q, atol=1e-4, rtol=1e-4)


def test_mismatches_refused_with_a_message():
    X, Y = torch.randn(50, 4, generator=G), torch.randn(50, 3, generator=G)
    with pytest.raises(ValueError, match="the rows must be pairs"): fit_affine(X, Y[:40])
    with pytest.raises(ValueError, match="2-D state matrices"): fit_affine(X[:, None], Y)
    with pytest.raises(ValueError, match="expects d_s=4"): apply_affine(fit_affine(X, Y), torch.randn(5, 7))
    with pytest.raises(ValueError, match="NaN"): fit_affine(X * float("nan"), Y)
    with pytest.raises(ValueError, match="differ"): r2_score(torch.zeros(3, 2), torch.zeros(3, 3))
    m, tok = tiny_model(), tiny_tokenizer()
    with pytest.raises(ValueError, match="d=32"):
        with steered(m, 1, torch.zeros(7)): pass
    with pytest.raises(IndexError, match="blocks 0..3"):
        with steered(m, 9, torch.zeros(32)): pass
    with pytest.raises(ValueError, match="zero-norm"): steering_curve(m, tok, ["abc"], 1, torch.zeros(32), [1], 1.0, [10], [11])
    with pytest.raises(ValueError, match="share tokens"): propensity(m, tok, ["abc"], [10, 11], [11])


def test_cka_invariances_and_steering_symmetry():
    Hs = synthetic()[0]
    Q = torch.linalg.qr(torch.randn(10, 10, generator=G, dtype=torch.float64)).Q
    assert linear_cka(Hs, 3 * Hs @ Q + 1) == pytest.approx(1.0, abs=1e-9)
    m, tok = tiny_model(), tiny_tokenizer(); u = torch.randn(32, generator=G)
    c = steering_curve(m, tok, ["hello there", "abc"], 1, u, [-1, 0, 1], 5.0, [10], [11])
    torch.testing.assert_close(c[1], propensity(m, tok, ["hello there", "abc"], [10], [11]))
    torch.testing.assert_close(steering_curve(m, tok, ["abc"], 1, -u, [1], 5.0, [10], [11]),
                               steering_curve(m, tok, ["abc"], 1, u, [-1], 5.0, [10], [11]))
    assert steerability([-1, 0, 1], torch.tensor([[0.0], [1.0], [2.0]])) == pytest.approx(1.0)


def test_behaviour_sets_are_contrastive_and_disjoint():
    from ortho_nbs.data import load_data
    assert BEHAVIOURS == load_data("steering_behaviours") and len(BEHAVIOURS) >= 6
    for name, b in BEHAVIOURS.items():
        assert len(b["positive"]) == len(b["negative"]) >= 16 and len(set(b["prompts"])) == len(b["prompts"]) >= 24
        assert not set(b["pos_words"]) & set(b["neg_words"])
        for k in ("positive", "negative"):     # varied sentences: no two share their first three words
            assert len({" ".join(t.split()[:3]) for t in b[k]}) == len(b[k]), (name, k)


def test_r2_on_a_subset_of_dimensions():
    Hs, Ht, _, _ = synthetic()
    pred = apply_affine(fit_affine(Hs[:300], Ht[:300], ridge=0), Hs[300:])
    Y = torch.cat([Ht[300:], 50 * torch.randn(100, 1, generator=G, dtype=torch.float64)], 1)
    P = torch.cat([pred, torch.zeros(100, 1)], 1)
    assert top_norm_dims(Y, 1).tolist() == [14]
    assert r2_score(P, Y)["r2"] < 0.1 and r2_score(P, Y, dims=list(range(14)))["r2"] > 0.9999
    assert r2_score(P, Y, dims=[14])["r2"] == pytest.approx(r2_score(P, Y)["per_dim"][14].item(), abs=1e-5)
    with pytest.raises(ValueError, match="subset"): r2_score(P, Y, dims=[15])


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_batched_steering_matches_one_vector_at_a_time(family):
    m, tok = tiny_model(family), tiny_tokenizer(); prompts = ["hello there", "abc", "a longer prompt"]
    V = torch.randn(5, 32, generator=G)
    def one(v):
        with steered(m, 1, v): return propensity(m, tok, prompts, [10, 11], [12, 13])
    ref = torch.stack([one(v) for v in V])
    for reuse in (True, False):      # with and without the shortcut that runs the unsteered prefix once
        torch.testing.assert_close(steered_propensities(m, tok, prompts, 1, V, [10, 11], [12, 13], batch_size=4, reuse_prefix=reuse),
                                   ref, atol=1e-5, rtol=1e-5)
    blocks = [type(b).__name__ for b in decoder_layers(m)]
    assert "_Known" not in blocks    # the real blocks are restored
    s = secant_slopes(m, tok, prompts, 1, V[:2], 0.5, 3.0, [10, 11], [12, 13])
    curve = steering_curve(m, tok, prompts, 1, V[0], [-0.5, 0, 0.5], 3.0, [10, 11], [12, 13])
    assert s["slope"][0].item() == pytest.approx(steerability([-0.5, 0, 0.5], curve), abs=1e-5)
    with pytest.raises(ValueError, match="d=32"): steered_propensities(m, tok, prompts, 1, V[:, :7], [10], [12])
    with pytest.raises(ValueError, match="zero-norm"): secant_slopes(m, tok, prompts, 1, 0 * V[:1], 0.5, 1.0, [10], [12])


def test_percentile_z_and_sign_test_against_closed_forms():
    assert percentile_of(3.0, [1, 2, 3, 4]) == 62.5 and percentile_of(10, range(10)) == 100.0
    assert z_score(3.0, [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert exceed_null_prob(50, 95) == pytest.approx(3 / 51)
    rng = np.random.default_rng(1); sims = rng.standard_normal((5000, 51))
    assert np.mean([percentile_of(s[0], s[1:]) > 95 for s in sims]) == pytest.approx(3 / 51, abs=0.01)
    for k, n, p0 in [(0, 6, 0.05), (2, 6, 0.05), (3, 8, 3 / 51), (6, 6, 0.5)]:
        exact = sum(math.comb(n, i) * p0 ** i * (1 - p0) ** (n - i) for i in range(k, n + 1))
        assert sign_test_p(k, n, p0) == pytest.approx(exact)
    assert sign_test_p(2, 6, 0.05) == pytest.approx(1 - 0.95 ** 6 - 6 * 0.05 * 0.95 ** 5)
    assert sign_test_p(3, 8, 3 / 51) == pytest.approx((rng.binomial(8, 3 / 51, 400000) >= 3).mean(), abs=2e-3)
    with pytest.raises(ValueError, match="0 <= k <= n"): sign_test_p(7, 6)


def test_linear_range_rule():
    assert linear_range([0.1, 0.2, 0.4], [[1, 1.1, 1.5], [1, 0.95, 0.9]]) == 0.4
    assert linear_range([0.1, 0.2, 0.4], [[1, 1.1, 1.5], [1, 0.7, 0.9], [1, 1.0, 0.5]]) == 0.2
    assert linear_range([0.1, 0.2, 0.4], [[1, 2, 1]]) == 0.1
    with pytest.raises(ValueError, match="increasing"): linear_range([0.2, 0.1], [[1, 1]])


def test_weighted_fit_counts_a_pair_w_times():
    X, Y = torch.randn(60, 5, generator=G), torch.randn(60, 3, generator=G)
    w = torch.ones(60); w[:7] = 3
    fw = fit_affine(X, Y, 0.05, w)
    fd = fit_affine(torch.cat([X, X[:7], X[:7]]), torch.cat([Y, Y[:7], Y[:7]]), 0.05)
    torch.testing.assert_close(fw["A"], fd["A"], atol=1e-4, rtol=1e-4); torch.testing.assert_close(fw["b"], fd["b"], atol=1e-4, rtol=1e-4)
    perms = [torch.randperm(60, generator=G) for _ in range(3)]; V = torch.randn(2, 5, generator=G)
    sv = shuffled_map_vectors(X, Y, V, perms, 0.05, w)                  # a shuffled map's A v without forming the map
    for p, out in zip(perms, sv):
        torch.testing.assert_close(out, apply_affine(fit_affine(X, Y[p], 0.05, w), V, bias=False), atol=1e-4, rtol=1e-4)
    mw = mixing_weights(90, 30, 0.25)
    assert mw[90:].sum() / mw.sum() == pytest.approx(0.25) and (mw[:90] == 1).all()
    with pytest.raises(ValueError, match="one weight per pair"): fit_affine(X, Y, 0.05, torch.ones(59))
    with pytest.raises(ValueError, match="no domain pairs"): mixing_weights(90, 0, 0.1)


def test_randomisation_test_is_calibrated_and_has_the_stated_power():
    v = torch.randn(51, generator=G, dtype=torch.float64)
    assert exchangeable_z(v)[0].item() == pytest.approx(z_score(v[0], v[1:]), abs=1e-9)
    rng = np.random.default_rng(3)
    sims = [[exchangeable_z(torch.as_tensor(rng.standard_normal(51))).numpy() for _ in range(6)] for _ in range(500)]
    p_null = np.array([exchangeable_test([s[0] for s in c], c, draws=1000, seed=i)["p"] for i, c in enumerate(sims)])
    assert 0.03 <= (p_null < 0.05).mean() <= 0.075                                 # about alpha under the null
    shift = min_detectable_shift(6, 0.05, 0.8)
    p_alt = np.array([exchangeable_test([s[0] + shift for s in c], c, draws=1000, seed=i)["p"] for i, c in enumerate(sims)])
    assert 0.7 <= (p_alt < 0.05).mean() <= 0.9                                     # about the stated power at the stated shift
    med = null_draws([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]], "median", 4000, 0)
    assert set(np.unique(med)) == {0.0, 1.0} and abs(med.mean() - 0.5) < 0.03      # the median of three fair coins
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    x = torch.randn(12, generator=G); y = torch.randn(12, generator=G)
    assert pearson_rows(x, y[None])[0].item() == pytest.approx(np.corrcoef(x.numpy(), y.numpy())[0, 1], abs=1e-6)
    with pytest.raises(ValueError, match="constant"): pearson_rows(x, torch.ones(1, 12))
    with pytest.raises(ValueError, match="at least two controls"): exchangeable_z([1.0, 2.0])


def test_domain_sentences_build_no_steering_vector():
    assert list(DOMAIN_SENTENCES) == list(BEHAVIOURS)
    steer = {s for b in BEHAVIOURS.values() for k in ("positive", "negative", "prompts") for s in b[k]}
    fit, held = domain_sentences("fit"), domain_sentences("heldout")
    assert len(fit) == 8 * 24 and len(held) == 8 * 12 and not set(fit) & set(held)
    assert not (set(fit) | set(held)) & steer
    with pytest.raises(ValueError, match="no domain sentences"): domain_sentences("fit", ["colour (red vs blue)"])


def test_shown_text_keeps_latin_and_marks_the_rest():
    assert shown_text("Il était une fois\nun chat") == "Il était une fois ¶ un chat"
    assert shown_text("ok \u4f60\u597d \U0001F600") == "ok ·· ·"
