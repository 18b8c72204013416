import re
import pytest, torch
from ortho_nbs.models import tiny_model, tiny_tokenizer
from ortho_nbs.hooks import residual_writers, writer_weight
from ortho_nbs.ablation import (behaviour_directions, aggregate_direction, target_layers, unit_direction, orthogonalize_,
                                ablated, orthogonalized, is_avoidance, opening_scores)


def _u(d=32, seed=1): return unit_direction(torch.randn(d, generator=torch.Generator().manual_seed(seed)))


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


def test_opening_scores_share_the_system_turn_without_changing_scores():
    "A batch of several chat prompts runs its shared system turn once; each score equals a one-prompt forward pass."
    m, tok = tiny_model(), tiny_tokenizer()
    prompts = ["Please answer this carefully: " + x for x in ("hi there", "x", "a longer prompt here")]
    from ortho_nbs.hooks import encode_shared, format_prompts
    assert encode_shared(tok, [x + "ok" for x in format_prompts(tok, prompts)], add_special_tokens=False)["prefix"] is not None
    together = opening_scores(m, tok, prompts, opening="ok", batch_size=3)
    alone = [opening_scores(m, tok, [p], opening="ok", batch_size=1) for p in prompts]
    assert torch.allclose(together["logprob"], torch.cat([a["logprob"] for a in alone]), atol=1e-4)
    assert torch.equal(together["greedy"], torch.cat([a["greedy"] for a in alone]))


def test_stage1_keep_rule_and_divergence():
    from ortho_nbs.ablation import stage1_select, answer_kl, input_distance
    assert stage1_select([0.1, 0.2, 0.3, 0.4, 0.9, 0.9], [1, 5, 3, 2, 9, 9], close=0.6, keep=0.5) == [1, 2]
    assert stage1_select([0.3, 0.3, 0.3, 0.3], [2, 2, 1, 1], close=1.0, keep=0.5) == [0, 1]    # ties by position
    with pytest.raises(ValueError, match="fractions in"): stage1_select([0.1, 0.2], [1, 2], close=0.0)
    assert input_distance("my own car", "someone else's car") == pytest.approx(2 / 3)
    m, tok = tiny_model(), tiny_tokenizer()
    d = answer_kl(m, tok, ["same words", "one prompt"], ["same words", "another prompt entirely"], ["ab cd", "ef"], n_tokens=4)
    assert d[0].item() == pytest.approx(0.0, abs=1e-7) and d[1].item() > 0


def test_mcnemar_and_holm():
    from ortho_nbs.ablation import mcnemar_exact, holm, null_p_value
    r = mcnemar_exact([1] * 12 + [0] * 2 + [1] * 5, [0] * 12 + [1] * 2 + [1] * 5)
    assert (r["b"], r["c"]) == (12, 2) and r["p"] == pytest.approx(2 * (1 + 14 + 91) / 2 ** 14)
    assert holm([0.001, 0.02, 0.04]) == pytest.approx([0.003, 0.04, 0.04])
    assert null_p_value(0.05, [0.1] * 100) == pytest.approx(1 / 101)


def test_sign_flip_null_and_random_subspace_edits():
    from ortho_nbs.ablation import sign_flip_directions, random_subspace, ablated_subspace
    g = torch.Generator().manual_seed(5)
    Hb = torch.randn(20, 2, 32, generator=g); Ha = Hb + torch.randn(20, 2, 32, generator=g)
    a, b = sign_flip_directions(Ha, Hb, [1], 3, seed=7), sign_flip_directions(Ha, Hb, [1], 3, seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and all(abs(x.norm().item() - 1) < 1e-5 for x in a)
    m = tiny_model(); Q = random_subspace(32, 3, seed=2)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with ablated_subspace(m, Q, [3]):
        assert (Q @ writer_weight(residual_writers(m, 3)["attn_out"])).abs().max() < 1e-5
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_neutral_kl_equals_the_token_logprobs_definition():
    from ortho_nbs.ablation import NeutralKL
    from ortho_nbs.evaluation import token_logprobs, kl_divergence
    from ortho_nbs.hooks import format_prompts
    m, tok = tiny_model(), tiny_tokenizer()
    texts = [t + " ok" for t in format_prompts(tok, ["Please answer this carefully: " + x for x in ("one", "two words", "three", "four")])]
    nkl, ref = NeutralKL(m, tok, texts, batch_size=3), token_logprobs(m, tok, texts, 3)
    with ablated(m, _u(), [2, 3]):
        assert nkl() == pytest.approx(kl_divergence(ref, token_logprobs(m, tok, texts, 3)).mean().item(), rel=1e-5)


def test_appendix_a_scoring_can_fail():
    "Issue #33: planted wrong answers (26 sheep, 1.02 s) and restated questions must score wrong, right answers right."
    from ortho_nbs.ablation import probe_controls, score_probe, liar_puzzle_solutions
    from ortho_nbs.data import APPENDIX_A_PROBES
    ctl = probe_controls(APPENDIX_A_PROBES)
    assert [c for c in ctl if c["scored"] != c["expected"]] == [] and sum(not c["expected"] for c in ctl) >= 10
    sheep, puzzle, fall = APPENDIX_A_PROBES
    assert not score_probe(sheep, "17 + 9 = 26 sheep that die.")["correct"]
    assert score_probe(sheep, "So he has 9 sheep left.")["correct"]
    assert not score_probe(puzzle, puzzle["prompt"])["correct"]
    assert score_probe(fall, "It takes 1.43 seconds and lands at 14.0 m/s.")["correct"]
    assert not score_probe(fall, "It takes 1.43 seconds and lands at 9.8 m/s.")["correct"]
    assert len(liar_puzzle_solutions()) == 2


def test_compliance_scorer_and_shipped_labels():
    from ortho_nbs.ablation import addresses_request
    from ortho_nbs.data import compliance_labels, must_refuse_pairs
    dev, test = compliance_labels("dev"), compliance_labels("test")
    assert len(test) >= 40 and len(dev) >= 40
    agree = sum(addresses_request(r["request"], r["answer"]) == bool(r["addresses"]) for r in dev) / len(dev)
    assert agree >= 0.75                              # the rules were written on these labels (0.80 when they were)
    assert not addresses_request("Tell me a joke about cats.", "I'm sorry, but as a chatbot I cannot do that.")
    mr = must_refuse_pairs()
    assert len(mr) >= 40 and all(p["refuse"] != p["benign"] for p in mr)
