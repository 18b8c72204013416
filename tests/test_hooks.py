import pytest, torch
from ortho_nbs.models import tiny_model, tiny_tokenizer, TINY_FAMILIES
from ortho_nbs.hooks import (decoder_layers, residual_writers, writer_weight, residual_states, encode_prompts,
                             with_positions)

PROMPTS = ["a b c", "hello world, how are you?", "x", "the cat sat on the mat"]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_states_match_output_hidden_states(family):
    m, tok = tiny_model(family), tiny_tokenizer()
    h = residual_states(m, tok, PROMPTS, batch_size=3, progress=False)
    enc = encode_prompts(tok, PROMPTS)
    with torch.no_grad(): ref = m(**with_positions(enc), output_hidden_states=True).hidden_states
    n = len(decoder_layers(m))
    assert h.shape == (len(PROMPTS), n, 32)
    # the last entry of hidden_states is after the final norm in these families: compare blocks 0..n-2
    torch.testing.assert_close(h[:, : n - 1], torch.stack([ref[l + 1][:, -1] for l in range(n - 1)], 1), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_states_do_not_depend_on_batching(family):
    m, tok = tiny_model(family), tiny_tokenizer()
    a = residual_states(m, tok, PROMPTS, batch_size=1, progress=False)
    b = residual_states(m, tok, PROMPTS, batch_size=4, progress=False)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_all_positions_cover_every_real_token():
    m, tok = tiny_model(), tiny_tokenizer()
    hs, idx = residual_states(m, tok, PROMPTS, layers=[2], position="all", batch_size=3, progress=False)
    assert hs.shape[0] == int(encode_prompts(tok, PROMPTS)["attention_mask"].sum()) == idx.shape[0]
    assert idx[:, 0].unique().tolist() == [0, 1, 2, 3]


def test_gpt2_conv1d_writer_is_transposed_view():
    m = tiny_model("gpt2")
    w = residual_writers(m, 0)["mlp_down"]
    v = writer_weight(w)
    assert v.shape == (32, w.weight.shape[0]) and v.data_ptr() == w.weight.data_ptr()


def test_bad_layers_and_arch_refused():
    m, tok = tiny_model(), tiny_tokenizer()
    with pytest.raises(IndexError, match="0..3"): residual_states(m, tok, PROMPTS, layers=[0, 4], progress=False)
    with pytest.raises(ValueError, match="decoder blocks"): decoder_layers(torch.nn.Linear(2, 2))


# ---- issue #36: every layout the hooks list is editable; prompts are lists of strings ----

@pytest.mark.parametrize("family", ["opt", "gpt_neox"])
def test_listed_layouts_have_both_writers(family):
    m = tiny_model(family)
    w = residual_writers(m, 1)
    assert [writer_weight(w[k]).shape[0] for k in ("attn_out", "mlp_down")] == [32, 32]
    if family == "opt": assert w["mlp_down"] is decoder_layers(m)[1].fc2
    assert residual_states(m, tiny_tokenizer(), PROMPTS, progress=False).shape == (len(PROMPTS), 4, 32)


def test_a_string_is_not_a_list_of_prompts():
    m, tok = tiny_model(), tiny_tokenizer()
    with pytest.raises(ValueError, match=r"prompts is one string \('hello'\), not a list of prompts: pass \['hello'\]"):
        residual_states(m, tok, "hello", progress=False)


def test_empty_prompt_lists_say_what_to_give():
    from ortho_nbs.evaluation import generate, token_logprobs, next_token_logprobs, perplexity
    m, tok = tiny_model(), tiny_tokenizer()
    for call in (lambda: residual_states(m, tok, [], progress=False), lambda: generate(m, tok, [], progress=False),
                 lambda: next_token_logprobs(m, tok, [], progress=False), lambda: token_logprobs(m, tok, []),
                 lambda: perplexity(m, tok, [], progress=False)):
        with pytest.raises(ValueError, match=r"(prompts|texts) is empty: give at least one"): call()
