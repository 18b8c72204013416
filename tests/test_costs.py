"The cost model (`50_costs`): closed-form work against hand counts, the fit on exact synthetic data, refusals. No timings."
import math
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, GPT2Config, Gemma3TextConfig
from ortho_nbs.costs import (model_shape, stage_work, forward_flops, fit_costs, predict_costs, balance, paper_configs,
                             ladder_jobs, heldout_errors, paper_scale_table, STAGES, H100)


def _tiny():   # d 8, d_ff 16, 2 heads of 4, 1 kv head, V 10, 2 blocks
    return model_shape(LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=1, vocab_size=10))


def test_shape_by_hand():
    s = _tiny()
    assert (s["layers"], s["d_model"], s["d_ff"], s["heads"], s["kv_heads"], s["head_dim"], s["vocab"]) == (2, 8, 16, 2, 1, 4, 10)
    # q 8x8 + k 8x4 + v 8x4 + o 8x8 + gate 8x16 + up 8x16 + down 16x8
    assert s["block_linear"] == 64 + 32 + 32 + 64 + 128 + 128 + 128 == 576
    # two blocks (linear + 2 RMSNorm gains), untied embedding and head, final norm
    assert s["params"] == 2 * (576 + 16) + 2 * 10 * 8 + 8


@pytest.mark.parametrize("name", ["SmolLM2-135M", "Gemma-3-270M", "LLaMA-7B", "GPT-2-1.5B", "Gemma-2-2B"])
def test_params_match_transformers(name):
    cfg = paper_configs()[name]
    with torch.device("meta"): m = AutoModelForCausalLM.from_config(cfg)
    assert model_shape(cfg)["params"] == sum(p.numel() for p in m.parameters())


def test_gpt2_shape():
    s = model_shape(GPT2Config(n_embd=16, n_layer=3, n_head=2, n_positions=32))
    assert s["d_ff"] == 64 and not s["gated"]
    assert [(n, i, o) for n, _, i, o in s["linears"]] == [("attn.c_attn", 16, 48), ("attn.c_proj", 16, 16), ("mlp.c_fc", 16, 64), ("mlp.c_proj", 64, 16)]


def test_forward_flops_by_hand():
    s = _tiny()
    # one token, T = 1: 2 * (2 blocks * 576 + head 10 * 8) + attention 2 * 2 blocks * 1 * 2 heads * 4
    assert forward_flops(s, 1, 1) == 2 * (2 * 576 + 80) + 2 * 2 * 1 * 8
    assert forward_flops(s, 6, 3, layers=1, head=False) == 2 * 6 * 576 + 2 * 6 * 3 * 8


def test_stage_formulas_by_hand():
    s = _tiny()
    w = stage_work(s, "kfac_eigendecomposition", layers=1, kinds=["mlp.up_proj", "mlp.down_proj"])
    assert w["flops"] == 9 * (8 ** 3 + 16 ** 3) + 9 * (16 ** 3 + 8 ** 3)
    assert w["per_module"] == [9.0 * (8 ** 3 + 16 ** 3), 9.0 * (16 ** 3 + 8 ** 3)]
    # gate and up read one input: one A product, two G products
    w = stage_work(s, "kfac_accumulation", n_sequences=1, seq_len=5, layers=1, kinds=["gate_proj", "up_proj"])
    assert w["flops"] == 2 * forward_flops(s, 5, 5) + 5 * 8 ** 2 + 5 * 2 * 16 ** 2
    # the OGD projection with every row and column touched, then with k = 2
    assert stage_work(s, "ogd_projection", layers=1, kinds=["down_proj"])["flops"] == 2 * (8 * 16 * 24 + 8 * 16 * 24)
    assert stage_work(s, "ogd_projection", k=2, layers=1, kinds=["down_proj"])["flops"] == 2 * (8 * 16 * 4 + 4 * 24)
    # Adam step: two sources, each forward + backward + weight gradients, then 16 FLOPs a trained weight
    P = 16 * 8
    w = stage_work(s, "finetune_step", rows=1, seq_len=4, layers=1, kinds=["down_proj"])
    assert w["flops"] == 2 * (2 * forward_flops(s, 4, 4) + 2 * 4 * P + 16 * P)
    assert w["bytes"] - 4 * P * (2 + 4 * 2) > 0
    # affine fit: Gram matrices and the solve
    assert stage_work(None, "affine_fit", n_tokens=100, d_s=3, d_t=5)["flops"] == 2 * 100 * 9 + 2 * 100 * 15 + 2 / 3 * 27 + 2 * 9 * 5
    # generation reads every weight once a decoding step: 2 batches x 3 new tokens
    assert stage_work(s, "generation", n_prompts=4, prompt_len=2, n_new=3, batch_size=2)["traffic"] == 2 * 3 * 4 * s["params"]


def test_stage_refusals():
    s = _tiny()
    with pytest.raises(ValueError, match="unknown stage 'backprop'; the stages are capture"): stage_work(s, "backprop")
    with pytest.raises(ValueError, match="generation needs prompt_len, n_new"): stage_work(s, "generation", n_prompts=2)
    with pytest.raises(ValueError, match=r"capture takes no \['steps'\]"): stage_work(s, "capture", n_prompts=2, seq_len=2, steps=3)
    with pytest.raises(ValueError, match="top blocks in 1..2"): stage_work(s, "kfac_eigendecomposition", layers=5)
    with pytest.raises(ValueError, match="match no linear layer"): stage_work(s, "kfac_eigendecomposition", kinds=["mlp.fc9"])
    with pytest.raises(ValueError, match="needs the model's shape"): stage_work(None, "capture", n_prompts=1, seq_len=2)
    with pytest.raises(ValueError, match="gives no layers"): model_shape(dict(hidden_size=8, num_attention_heads=2, vocab_size=3))


def test_fit_recovers_exact_coefficients():
    a, b, c, e = 3e-10, 0.25, 1.7, 4e6
    work = [(1e9, 2e6), (5e9, 9e6), (2e10, 3e7), (7e10, 1.1e8)]
    ms = [dict(stage=st, flops=f, bytes=by, time_s=a * f + b, peak_bytes=c * by + e) for st in ("capture", "affine_fit") for f, by in work]
    fit = fit_costs(ms)
    for st in ("capture", "affine_fit"):
        assert fit[st]["n_sizes"] == 4
        assert math.isclose(fit[st]["a"], a, rel_tol=1e-9) and math.isclose(fit[st]["b"], b, rel_tol=1e-9)
        assert math.isclose(fit[st]["c"], c, rel_tol=1e-9) and math.isclose(fit[st]["e"], e, rel_tol=1e-9)


def test_fit_refusals():
    ms = [dict(stage="generation", flops=f, bytes=f, time_s=f, peak_bytes=f) for f in (1.0, 2.0)]
    with pytest.raises(ValueError, match=r"generation: 2 distinct size\(s\) measured; a line a\*work \+ b needs at least 3"): fit_costs(ms)
    with pytest.raises(ValueError, match=r"1 distinct size\(s\)"): fit_costs(ms[:1] * 4)
    with pytest.raises(ValueError, match=r"lacks \['time_s', 'peak_bytes'\]"): fit_costs([dict(stage="capture", flops=1, bytes=1)])


def test_heldout_errors_zero_on_exact_lines():
    js = ladder_jobs("smoke", archs=["llama", "gemma3"])
    fake = [dict(arch=j["arch"], stage=j["stage"], heldout=j["heldout"], flops=(j["size"] + 1) * 1e9, bytes=(j["size"] + 1) ** 2 * 1e6,
                 time_s=0.5 * (j["size"] + 1) + 0.1, peak_bytes=3 * (j["size"] + 1) ** 2 * 1e6 + 2e6) for j in js]
    rows = heldout_errors(fake)
    assert len(rows) == 2 * 6 + 1
    assert max(max(r["time_rel_err"], r["peak_rel_err"]) for r in rows) < 1e-9


def test_predict_on_gpus():
    s = _tiny()
    z = {"capture": dict(n_prompts=8, seq_len=4)}
    one = predict_costs(None, s, z, device_flops=1e12)["capture"]
    eight = predict_costs(None, s, z, device_flops=1e12, world_size=8)["capture"]
    assert math.isclose(one["time_s"], forward_flops(s, 32, 4, head=False) / 1e12)
    assert math.isclose(eight["time_s"] * 8, one["time_s"])
    # by module: 2 modules on 2 ranks take as long as the larger
    z = {"kfac_eigendecomposition": dict(layers=1, kinds=["q_proj", "down_proj"])}
    two = predict_costs(None, s, z, device_flops=1.0, world_size=2)["kfac_eigendecomposition"]
    assert two["time_s"] == max(9.0 * (8 ** 3 + 8 ** 3), 9.0 * (16 ** 3 + 8 ** 3))
    assert balance([5, 4, 3, 3, 3], 2) == [8.0, 10.0]
    with pytest.raises(ValueError, match="no fit for capture"): predict_costs({}, s, {"capture": dict(n_prompts=1, seq_len=2)})
    with pytest.raises(ValueError, match="world_size=0: give at least 1"): predict_costs(None, s, {}, device_flops=1.0, world_size=0)


def test_paper_scale_flags():
    rows = {(r["model"], r["stage"]): r for r in paper_scale_table()}
    ft = rows[("LLaMA-7B", "finetune_step")]
    assert not ft["gpu1_fits"] and ft["gpu8_fits"]                 # full Adam on LLaMA-7B: 8 GPUs, not 1
    assert rows[("Gemma-3-4B-it", "capture")]["gpu1_fits"]
    assert not rows[("Gemma-2-2B -> 9B", "affine_fit")]["gpu8_fits"]   # fit_affine holds 10M states
    assert set(H100["flops"]) == set(STAGES)
