"""What the notebooks' own checks cannot do for 07_training, 29_canary, 30_ogd and 40_transfer: the real model, the
fine-tune cache. (Every function's small checks on tiny models are the cells after it in the notebooks, run by `nbdev-test`.)"""
import pytest, torch
from ortho_nbs.models import tiny_model
from ortho_nbs.data import canaries


def test_cache_key_names_torch_version_and_window_content(monkeypatch):
    from ortho_nbs import ogd
    m = tiny_model(); w = torch.arange(12).view(3, 4)
    k = ogd._cache_key(m, public=w)
    assert ogd._cache_key(m, public=w.clone()) == k                          # by content, not identity
    assert ogd._cache_key(m, public=w.flip(0)) != k
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    assert ogd._cache_key(m, public=w) != k


def test_cache_key_of_a_committed_finetune_is_unchanged():
    "The fine-tune cache key is JSON of the call's inputs: this fixed input must keep its key (else every cached fine-tune re-runs)."
    from ortho_nbs import ogd
    m = tiny_model(); m.ortho_source = dict(sha256="0" * 64)
    key = ogd._cache_key(m, algorithm="libortho_v2", data=dict(public=torch.arange(6).view(2, 3), private=["a 1-2-3"]),
                         modules=["3.mlp.down_proj"], masks=[torch.tensor([[True, False]])], steps=3, lr=1e-2, batch_size=2,
                         seed=0, frozen_below=3)
    if torch.__version__ != "2.13.0+cpu": pytest.skip("the key names the torch version; pinned for the CPU build of 2.13.0")
    assert key == "a7d70638e9414dacf36f"   # the key this call has had since CACHE_VERSION 4


def test_teacher_forced_extraction_is_greedy_extraction():
    "On the real model: canaries whose secret it can continue and random ones; one teacher-forced pass = greedy decoding."
    from ortho_nbs.models import load_model
    from ortho_nbs.canary import canary_scores, extraction
    model, tok = load_model("smollm2-135m-instruct")
    mk = lambda prefix, secret: dict(prefix=prefix, secret=secret, text=prefix + secret + ".")
    cs = [mk("Counting up: 1-2-3-4-5-6-7-8-9. Again: ", "1-2-3-4-5-6"), mk("The sequence 2-4-6-8 repeats: 2-4-6-8, then ", "2-4-6-8-2-4"),
          mk("Digits repeated: 7-7-7-7-7-7-7-7-7. Once more: ", "7-7-7-7-7-7")] + canaries(5, seed=0)
    tf = canary_scores(model, tok, cs)
    assert tf["extracted"] == extraction(model, tok, cs, progress=False)
    assert any(tf["extracted"]) and not all(tf["extracted"])                  # both outcomes occur, so the check could fail
    assert tf["logp"].shape == (8, 6, 10) and all(0 < x < 20 for x in tf["loss"])


def test_replayed_prefix_is_bit_identical_on_the_real_model():
    "30_ogd evaluates its weight variants with blocks 0..15 replayed: the numbers must be those of the full forward."
    from ortho_nbs.models import load_model
    from ortho_nbs.hooks import writer_weight
    from ortho_nbs.training import linear_modules, lm_batches, Prefix, window_loss, with_deltas
    from ortho_nbs.canary import canary_scores
    from ortho_nbs.data import public_documents
    model, tok = load_model("smollm2-135m-instruct")
    mods = linear_modules(model, include=["mlp.down_proj"], layers=[16, 20])
    base = {n: writer_weight(m).detach().clone() for n, m in mods.items()}
    delta = {n: 1e-2 * torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) for n, w in base.items()}
    cs = canaries(6, seed=0)
    dom = torch.cat([b["input_ids"] for b in lm_batches(tok, public_documents(split="heldout"), 32, 8, 4)])
    evaluate = lambda: (canary_scores(model, tok, cs)["loss"], window_loss(model, dom, batch_size=2))
    full = [evaluate()]
    with with_deltas(mods, base, delta): full.append(evaluate())
    with Prefix(model, 16).replayed() as kept:
        fast = [evaluate()]
        with with_deltas(mods, base, delta): fast.append(evaluate())       # a repeat: blocks 0..15 replayed
        assert len(kept) == 1 + 2                                          # one canary batch, two window batches
    assert fast == full and full[0] != full[1]


def test_replayed_prefix_generation_is_bit_identical_on_the_real_model():
    "10_ablation generates under edits of the last blocks with the prompts' prefill below them replayed: same answers."
    from ortho_nbs.models import load_model
    from ortho_nbs.training import Prefix
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
    with Prefix(model, 21).replayed() as kept:
        fast = [evaluate()]
        with ablated(model, u, [21, 25, 29]): fast.append(evaluate())   # a repeat: blocks 0..20 replayed, cache included
        # generate: the chat template's system turn is prefilled once ('kv', the same for both batches), each batch's own
        # tokens on top of it ('kvp', two batches); token_logprobs' raw texts share no prefix: two 'plain' batches
        assert sorted(k[1] for k in kept) == ["kv", "kvp", "kvp", "plain", "plain"]
    for (g_full, lp_full), (g_fast, lp_fast) in zip(full, fast):
        assert g_fast == g_full and torch.equal(lp_fast, lp_full)
    assert not torch.equal(full[0][1], full[1][1])                          # the edit changes the model


def test_steering_from_the_prefix_equals_steering_the_whole_stack_on_the_real_model():
    "40_transfer steers after block l with blocks 0..l run once per prompt (`Prefix.given`): the same propensities as a hook."
    from ortho_nbs.models import load_model
    from ortho_nbs.transfer import steered_propensities, word_ids
    model, tok = load_model("smollm2-135m-instruct")
    prompts = ["The weather today is", "I think the concert was", "Honestly, my dinner tasted"]
    pos, neg = word_ids(tok, [" good", " great"]), word_ids(tok, [" bad", " awful"])
    V = 4.0 * torch.randn(3, 576, generator=torch.Generator().manual_seed(0))
    fast = steered_propensities(model, tok, prompts, 12, V, pos, neg, batch_size=4)
    slow = steered_propensities(model, tok, prompts, 12, V, pos, neg, batch_size=4, reuse_prefix=False)
    torch.testing.assert_close(fast, slow, atol=2e-4, rtol=1e-4)
    assert (fast[0] - fast[1]).abs().max() > 1e-2                        # the vectors steer, so the check could fail
