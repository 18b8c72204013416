import pytest, torch
from ortho_nbs.models import tiny_model, tiny_tokenizer
from ortho_nbs.lmc import interpolate, loss_barrier, linear_barrier, interpolation_curve
from ortho_nbs.ogd import mean_token_loss


def states():
    m = tiny_model(); a = {k: v.clone() for k, v in m.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    b = {k: (v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()) for k, v in a.items()}
    return m, a, b


def test_interpolation_endpoints_equal_inputs():
    m, a, b = states()
    for k in a:
        assert torch.equal(interpolate(a, b, 0.0)[k], a[k])
        torch.testing.assert_close(interpolate(a, b, 1.0)[k], b[k])
        if a[k].is_floating_point(): torch.testing.assert_close(interpolate(a, b, 0.5)[k], (a[k] + b[k]) / 2)


def test_barrier_between_identical_models_is_zero():
    m, a, b = states(); tok = tiny_tokenizer()
    f = lambda mm: mean_token_loss(mm, tok, ["the quick brown fox", "jumps over"])
    c = interpolation_curve(m, a, a, [0, 0.25, 0.5, 0.75, 1], dict(loss=f), progress=False)
    assert loss_barrier(c["loss"]) == 0.0 and linear_barrier(c["loss"]) == pytest.approx(0.0, abs=1e-12)
    c2 = interpolation_curve(m, a, b, [0, 1], dict(loss=f), progress=False)
    assert c2["loss"][0] == pytest.approx(f(m))                        # model restored, and t=0 is the model itself
    assert all(torch.equal(m.state_dict()[k], a[k]) for k in a)


def test_barrier_definitions():
    assert loss_barrier([1.0, 1.4, 1.1]) == pytest.approx(0.4)
    assert loss_barrier([2.0, 1.5, 1.0]) == pytest.approx(1.0)         # eq. 11 counts the endpoint gap
    assert linear_barrier([2.0, 1.5, 1.0]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="NaNs"): loss_barrier([1.0, float("nan")])
    with pytest.raises(ValueError, match="both endpoints"): loss_barrier([1.0])


def test_mismatched_states_refused():
    m, a, b = states()
    with pytest.raises(ValueError, match="different tensors"): interpolate(a, dict(list(b.items())[1:]), 0.5)
    k = next(iter(a)); bad = dict(b); bad[k] = torch.zeros(3)
    with pytest.raises(ValueError, match="shapes differ"): interpolate(a, bad, 0.5)
    with pytest.raises(KeyError, match="not tensors of this model"):
        interpolation_curve(m, {"nope": torch.zeros(1)}, {"nope": torch.ones(1)}, [0], {}, progress=False)
