"""The other half of the notebook tests (20_kfac, 30_ogd, 40_transfer), executed like those in test_notebooks.py.

`make test` runs each test file on one pytest-xdist worker (`--dist loadfile`, notebook files first; see conftest.py),
and the two halves take about as long on the 2-core CPU (1-thread smoke times: 10_ablation ~270 s plus the small
notebooks ~110 s, against 30_ogd ~150 s, 20_kfac ~115 s and 40_transfer ~100 s)."""
import pytest

pytestmark = pytest.mark.notebook


def test_20_kfac(run_notebook):
    r = run_notebook("20_kfac")
    m = r["metrics"]
    assert m["kfac_single_token_max_rel_err"] < 1e-3     # A ⊗ G is exact for one token
    assert m["n_layers_factored"] == 210 and m["n_tokens"] > 0
    assert 0 <= m["high_energy_random"] <= 0.3             # a random delta spreads ~uniformly (10% of the grid)
    assert m["finetune_loss_canary_last"] < m["finetune_loss_canary_first"]
    assert m["n_nonkfac_dirs"] + m["n_nonkfac_nonpositive"] == 4 + 3 * 4    # 4 random directions, 3 deltas in each of 4 layers
    assert 0 < m["kfac_over_fwd_bwd"] < 5                  # a K-FAC pass costs about a training step (1.1x in the benchmark)
    c = {x["id"]: x for x in r["claims"]}
    assert c["kfac_exact_single_token"]["verdict"] == "holds"
    assert {"20_nonkfac_directions", "20_curvature_prediction"} <= set(r["figures"])


def test_30_ogd(run_notebook):
    r = run_notebook("30_ogd")
    m = r["metrics"]
    assert m["n_canaries"] == 8 and m["n_seeds"] == 2 and m["canary_extraction_base"] == 0.0   # nobody guesses a 6-digit secret
    assert 0 <= m["exposure_base"] < 10 and 10 < m["domain_ppl_base"] < 60      # SmolLM2 finds the Python reference hard (~24)
    assert m["private_share_in_sgen_ogd"] < 1e-6 and m["alg1_update_share_in_sgen"] < 1e-6   # OGD keeps its updates out of S_gen
    assert m["domain_ppl_finetuned"] < m["domain_ppl_base"]                  # even 4 smoke steps generalise (36.6 -> 35.1)
    assert m["exposure_finetuned"] > m["exposure_base"] + 1                  # ... and start memorising (0.9 -> 3.2 bits)
    assert abs(m["generalisation_kept_svd_split"] - 1) < 0.2                 # the 90%-energy SVD split keeps most of the delta
    assert m["greedy_teacher_forced_agreement"] == 1.0 and m["heldout_8grams_in_training"] < 0.05
    assert m["general_kl_base_nats"] == pytest.approx(0.0, abs=1e-6) and m["general_kl_finetuned_nats"] > 1e-3
    assert m["eta_same_kind"] > 3 * m["eta_null"]                         # two seeds' public shares align; a public and a private one barely
    c = {x["id"]: x for x in r["claims"]}
    if c["finetune_memorises"]["verdict"] != "holds":                         # 4 smoke steps memorise little: the removal claims wait
        assert c["alg1_removes_canaries"]["verdict"] == "not tested" and c["alg1_removes_canaries"]["diagnosis"] == "precondition"
    assert {"30_finetune_curves", "30_tradeoff", "30_hessian_gen_mem"} <= set(r["figures"])


def test_40_transfer(run_notebook):
    r = run_notebook("40_transfer")
    m, claims = r["metrics"], {c["id"]: c for c in r["claims"]}
    assert m["n_pairs"] > 300 and 0 < m["cka_max"] <= 1 and m["n_texts"] == 40 and m["n_domain_sentences"] == 288
    assert m["r2_heldout_best_pair"] > 0.2         # even 20 texts give a map that explains part of the target states
    assert m["random_controls_per_cell"] == 6 and m["shuffled_maps_per_cell"] == 2 and m["n_cells"] == 8
    assert m["n_behaviours"] == 8 and m["linear_alpha"] in (0.05, 0.2) and m["linear_alpha_reverse"] in (0.05, 0.2)
    # the map sees the behaviour sentences it is scored on held out: it fits them better than the public-text map
    assert m["r2_behaviour_text_min"] > m["r2_behaviour_text_cpython_map_min"] + 0.02
    assert m["r2_behaviour_text_min_reverse"] > m["r2_behaviour_text_cpython_map_min_reverse"] + 0.02
    for s in ("", "_reverse"):
        assert 2 <= m["n_cells_tested" + s] <= 8                                     # native first leaves some cells
        assert 0.5 < m["transfer_min_detectable_z" + s] < 3                          # eq. 7 at this n, from the draws
        assert m["cos_av_native_median" + s] > m["cos_random_abs_p95_median" + s]    # A v points along the native vector
    assert m["transfer_test_p"] < 0.05 and m["retention_av_median"] > 0.5        # block 9 carries the behaviours even at smoke size
    assert m["cos_bias_b_median"] > 0.95 and m["retention_bias_median"] < 0.2       # the paper's A v + b is the offset b, nearly
    for s in ("", "_reverse"):                              # a paper claim is decided only when its preconditions hold
        pre = all(claims[p + s]["verdict"] == "holds" for p in ("map_fits", "native_steers"))
        assert (claims["retention" + s]["verdict"] == "not tested") == (not pre)
    assert all(c["rule"] and c["why"] for c in r["claims"])
