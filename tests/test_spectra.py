import pytest, torch
from ortho_nbs.models import tiny_model, tiny_tokenizer
from ortho_nbs.training import lm_batches, linear_modules
from ortho_nbs.spectra import lanczos, slq_density, density_on_grid
from ortho_nbs.kfac import hvp_operator


def _sym(n, seed=0):
    M = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (M + M.T) / 2


def test_full_lanczos_recovers_exact_eigenvalues():
    M = _sym(25)
    r = lanczos(lambda x: M @ x, 25, 25)
    torch.testing.assert_close(r["theta"], torch.linalg.eigvalsh(M), atol=1e-8, rtol=0)
    assert abs(r["tau2"].sum().item() - 1) < 1e-10


def test_slq_density_is_a_probability_and_has_the_right_mean():
    M = _sym(40, 1)
    s = slq_density(lambda x: M @ x, 40, m=40, n_probes=8, progress=False)
    assert abs(s["weight"].sum().item() - 1) < 1e-10
    grid = torch.linspace(-12, 12, 4001)
    mass = density_on_grid(s, grid, 0.2).sum().item() * (grid[1] - grid[0]).item()
    assert abs(mass - 1) < 1e-3
    # E_v[v^T M v] = tr(M) for Rademacher probes; 8 probes: within a few standard errors
    assert abs((s["weight"] * s["theta"]).sum().item() - torch.trace(M).item() / 40) < 1.0


def test_hvp_operator_matches_exact_hessian_column():
    m, tok = tiny_model(d_model=16), tiny_tokenizer()
    b = lm_batches(tok, ["the quick brown fox jumps over the lazy dog"] * 2, seq_len=10, batch_size=4)
    mod = linear_modules(m)["1.mlp.down_proj"]
    e = torch.zeros(mod.weight.numel(), dtype=torch.float64); e[5] = 1
    with hvp_operator(m, mod, b) as mv: col = mv(e)
    # column 5 of the Hessian by finite differences of the gradient
    import torch.nn.functional as F
    from ortho_nbs.training import target_mask
    def grad():
        mod.weight.requires_grad_(True)
        mask = target_mask(b[0])
        loss = F.cross_entropy(m(**b[0]).logits[mask], torch.roll(b[0]["input_ids"], -1, 1)[mask])
        return torch.autograd.grad(loss, mod.weight)[0].flatten().double()
    eps = 1e-3; w = mod.weight.data.view(-1)
    w[5] += eps; gp = grad(); w[5] -= 2 * eps; gm = grad(); w[5] += eps
    torch.testing.assert_close(col, (gp - gm) / (2 * eps), atol=1e-4, rtol=1e-2)


def test_bad_steps_refused():
    with pytest.raises(ValueError, match="must be in 1..n=5"): lanczos(lambda x: x, 5, 6)


def test_marchenko_pastur_fit_finds_edge_and_planted_outliers():
    from ortho_nbs.spectra import marchenko_pastur_fit, marchenko_pastur_density
    import math
    g = torch.Generator().manual_seed(3)
    X = torch.randn(100, 1500, generator=g, dtype=torch.float64); W = X.T @ X / 100          # γ = 15
    edge = (1 + math.sqrt(15)) ** 2
    for s in (3.0, 10.0):
        v = torch.randn(1500, generator=g, dtype=torch.float64); W += s * edge * torch.outer(v, v) / v.dot(v)
    fit = marchenko_pastur_fit(slq_density(lambda x: W @ x, 1500, m=30, n_probes=2, progress=False))
    assert abs(fit["edge"] / edge - 1) < 0.05 and abs(fit["gamma"] / 15 - 1) < 0.15
    top = torch.linalg.eigvalsh(W)[-2:].tolist()
    assert len(fit["outliers"]) == 2 and all(abs(o / t - 1) < 1e-3 for o, t in zip(fit["outliers"], top))
    xs = torch.linspace(1e-3, 30, 30001, dtype=torch.float64)
    assert abs(torch.trapezoid(marchenko_pastur_density(xs, 1.0, 15.0), xs).item() - 1 / 15) < 1e-3
    with pytest.raises(ValueError, match="no Marchenko-Pastur law"):
        marchenko_pastur_fit(dict(theta=-torch.ones(3), weight=torch.ones(3) / 3))
    with pytest.raises(ValueError, match="same, non-zero length"):
        marchenko_pastur_fit(dict(theta=torch.ones(3), weight=torch.ones(2)))
