import re
import pytest, torch
from ortho_nbs.models import tiny_model, tiny_tokenizer, TINY_FAMILIES
from ortho_nbs.hooks import residual_writers, writer_weight
from ortho_nbs.ablation import (behaviour_directions, aggregate_direction, target_layers, unit_direction, orthogonalize_,
                                restore_, ablated, orthogonalized, is_avoidance, opening_scores)


def _u(d=32, seed=1): return unit_direction(torch.randn(d, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_edited_writers_cannot_write_along_u(family):
    m, u = tiny_model(family), _u()
    orthogonalize_(m, u, [1, 3])
    for l in (1, 3):
        for mod in residual_writers(m, l).values():
            assert (u @ writer_weight(mod)).abs().max() < 1e-6


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_untouched_layers_bit_identical_and_restore_exact(family):
    m, ref, u = tiny_model(family), tiny_model(family), _u()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    orig = orthogonalize_(m, u, [2])
    changed = {k for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".2." in k for k in changed)
    restore_(m, orig)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_idempotent():
    m, u = tiny_model(), _u()
    orthogonalize_(m, u, [0, 1, 2, 3])
    once = {k: v.clone() for k, v in m.state_dict().items()}
    orthogonalize_(m, u, [0, 1, 2, 3])
    assert max((once[k] - v).abs().max().item() for k, v in m.state_dict().items()) < 1e-6


def test_context_manager_and_copy_leave_model_untouched():
    m, u = tiny_model(), _u()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.tensor([[4, 8, 15, 16]])
    with ablated(m, u, [3], embedding=True): edited_logits = m(x).logits
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    c = orthogonalized(m, u, [3], embedding=True)
    assert torch.allclose(c(x).logits, edited_logits, atol=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert (c.get_input_embeddings().weight @ u).abs().max() < 1e-6


@pytest.mark.parametrize("bad, msg", [(torch.zeros(32), "norm 0.0e+00"), (torch.full((32,), float("nan")), "NaN"),
                                      (torch.ones(31), "d_model=32")])
def test_bad_directions_refused_before_any_edit(bad, msg):
    m = tiny_model(); before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=re.escape(msg)): orthogonalize_(m, bad, [3])
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_bad_layers_refused():
    with pytest.raises(IndexError, match="0..3"): orthogonalize_(tiny_model(), _u(), [3, 4])
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"): target_layers(30, 1.5)


def test_direction_math():
    g = torch.Generator().manual_seed(0)
    Ha, Hb = torch.randn(40, 5, 16, generator=g), torch.randn(30, 5, 16, generator=g)
    Ha[:, 3:] += 4 * torch.eye(16)[2]
    d = behaviour_directions(Ha, Hb)
    assert torch.allclose(d["v"], Ha.mean(0) - Hb.mean(0), atol=1e-5)
    u = aggregate_direction(d["v"], d["saliency"], target_layers(5, 0.6))
    assert abs(u.norm().item() - 1) < 1e-6 and u[2] > 0.9       # the planted direction
    assert target_layers(30) == list(range(21, 30)) and target_layers(34) == list(range(24, 34))
    with pytest.raises(ValueError, match="differ in layers"): behaviour_directions(Ha, Hb[:, :4])


def test_phrase_scorer():
    assert is_avoidance("I'm sorry for any misunderstanding, but as a chatbot, I don't have the ability to access that.")
    assert is_avoidance("As an AI, I cannot help.") and not is_avoidance("Sure! Here is a compliment for your boss.")


def test_opening_scores_match_a_manual_forward():
    m, tok = tiny_model(), tiny_tokenizer()
    sc = opening_scores(m, tok, ["hi there", "x"], opening="ok", batch_size=1)
    from ortho_nbs.hooks import encode_prompts
    ids = torch.cat([encode_prompts(tok, ["x"])["input_ids"][0], torch.tensor(tok("ok", add_special_tokens=False)["input_ids"])])
    with torch.no_grad(): lp = torch.log_softmax(m(ids[None]).logits[0], -1)
    assert abs(sc["logprob"][1].item() - (lp[-3, ids[-2]] + lp[-2, ids[-1]]).item()) < 1e-4


def test_partial_weights_scale_what_a_layer_writes_along_u():
    from ortho_nbs.ablation import recipe_weights
    m, u = tiny_model(), _u()
    W0 = {l: (u @ writer_weight(residual_writers(m, l)["mlp_down"])).clone() for l in (2, 3)}
    layers, w = recipe_weights(4, 0.5, 0.2, 0.6)
    assert layers == [2, 3] and w == pytest.approx([0.2, 0.6])
    with ablated(m, u, layers, weights=w):
        for l, wl in zip(layers, w):
            assert torch.allclose(u @ writer_weight(residual_writers(m, l)["mlp_down"]), (1 - wl) * W0[l], atol=1e-5)
    with pytest.raises(ValueError, match="one weight per layer"): orthogonalize_(m, u, [2, 3], weights=[1.0])


def test_split_half_cosine_separates_signal_from_noise():
    from ortho_nbs.ablation import split_half_cosine
    g = torch.Generator().manual_seed(3)
    Hb = torch.randn(60, 2, 24, generator=g); Ha = Hb + torch.randn(60, 2, 24, generator=g)
    Ha[:, 1] += 3 * torch.eye(24)[5]
    c = split_half_cosine(Ha, Hb, n_splits=12, seed=1)
    assert c[:, 1].min() > 0.9 and c[:, 0].abs().mean() < 0.35
    with pytest.raises(ValueError, match="at least 4"): split_half_cosine(Ha[:3], Hb[:3])


def test_minimal_pairs_meet_the_data_bar():
    "Issue #13's bar on the shipped pairs: >= 240 pairs, >= 8 categories, <= 3 pairs per frame, frame-disjoint split."
    from collections import Counter
    from ortho_nbs.data import avoidance_pairs
    tr, ho = avoidance_pairs("train"), avoidance_pairs("heldout")
    pairs = tr + ho
    assert len(pairs) >= 240 and len({p["category"] for p in pairs}) >= 8 and len(ho) >= 60
    assert max(Counter(p["frame"] for p in pairs).values()) <= 3
    assert not {p["frame"] for p in tr} & {p["frame"] for p in ho}
    assert len({p["avoid"] for p in pairs}) == len(pairs) and len({p["benign"] for p in pairs}) == len(pairs)
    assert all(p["avoid"] != p["benign"] for p in pairs)
    words = lambda s: re.findall(r"[a-z']+", s.lower())
    grams = lambda s: {tuple(words(s)[i:i + 4]) for i in range(len(words(s)) - 3)}
    seen = set().union(*(grams(p["avoid"]) | grams(p["benign"]) for p in tr))
    held = [g for p in ho for g in grams(p["avoid"]) | grams(p["benign"])]
    assert sum(g in seen for g in held) / len(held) < 0.05     # held-out wording is new (templated set: most 4-grams seen)
    tmpl_tr, tmpl_ho = avoidance_pairs("train", dataset="templated"), avoidance_pairs("heldout", dataset="templated")
    seen_t = set().union(*(grams(p["avoid"]) | grams(p["benign"]) for p in tmpl_tr))
    held_t = [g for p in tmpl_ho for g in grams(p["avoid"]) | grams(p["benign"])]
    assert sum(g in seen_t for g in held_t) / len(held_t) > 0.3
    with pytest.raises(ValueError, match="shipped: minimal, templated"): avoidance_pairs(dataset="tofu")
