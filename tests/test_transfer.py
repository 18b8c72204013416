import numpy as np, pytest, torch
from ortho_nbs.models import tiny_model, tiny_tokenizer
from ortho_nbs.transfer import (fit_affine, fit_procrustes, apply_affine, r2_score, linear_cka, aligned_positions,
                                steered, steering_curve, propensity, steerability, BEHAVIOURS)

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
    for name, b in BEHAVIOURS.items():
        assert len(b["positive"]) == len(b["negative"]) >= 16 and len(b["prompts"]) >= 24
        assert not set(b["pos_words"]) & set(b["neg_words"])
