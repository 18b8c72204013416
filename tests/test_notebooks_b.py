"""The other half of the notebook tests (20_kfac, 30_ogd, 40_transfer), executed like those in test_notebooks.py.

`make test` runs each test file on one pytest-xdist worker (`--dist loadfile`, notebook files first; see conftest.py),
and the two halves take about as long on the 2-core CPU (1-thread smoke times: 10_ablation ~270 s plus the small
notebooks ~110 s, against 30_ogd ~150 s, 20_kfac ~115 s and 40_transfer ~100 s)."""
import pytest

pytestmark = pytest.mark.notebook


def test_20_kfac(run_notebook):
    m = run_notebook("20_kfac")["metrics"]
    assert m["kfac_single_token_max_rel_err"] < 1e-3     # A ⊗ G is exact for one token
    assert m["n_layers_factored"] == 210 and m["n_tokens"] > 0
    assert 0 <= m["high_energy_random"] <= 0.3             # a random delta spreads ~uniformly (10% of the grid)
    assert m["finetune_loss_canary_last"] < m["finetune_loss_canary_first"]


def test_30_ogd(run_notebook):
    r = run_notebook("30_ogd")
    m = r["metrics"]
    assert m["n_canaries"] == 8 and m["n_seeds"] == 2 and m["canary_extraction_base"] == 0.0   # nobody guesses a 6-digit secret
    assert 0 <= m["exposure_base"] < 10 and 10 < m["domain_ppl_base"] < 60      # SmolLM2 finds the Python reference hard (~24)
    assert m["private_share_in_sgen_ogd"] < 1e-6                           # OGD keeps the private update out of S_gen
    assert m["domain_ppl_finetuned"] < m["domain_ppl_base"]                  # even 4 smoke steps generalise (36.6 -> 35.1)
    assert m["exposure_finetuned"] > m["exposure_base"] + 1                  # ... and start memorising (0.9 -> 3.2 bits)
    assert abs(m["generalisation_kept_svd_split"] - 1) < 0.2                 # the 90%-energy SVD split keeps most of the delta
    assert m["greedy_teacher_forced_agreement"] == 1.0 and m["heldout_8grams_in_training"] < 0.05
    assert {"30_finetune_curves", "30_tradeoff", "30_hessian_gen_mem"} <= set(r["figures"]) and len(r["claims"]) == 9
    assert r["tolerances"]["canary_extraction_v2"] == {"abs": 0.05, "note": r["tolerances"]["canary_extraction_v2"]["note"]}


def test_40_transfer(run_notebook):
    r = run_notebook("40_transfer")
    m = r["metrics"]
    assert m["n_pairs"] > 300 and 0 < m["cka_max"] <= 1 and m["n_texts"] == 40
    assert m["r2_heldout_best_pair"] > 0.2         # even 20 texts give a map that explains part of the target states
    assert m["random_controls_per_cell"] == 6 and m["shuffled_maps_per_cell"] == 2
    assert m["n_behaviours"] == 8 and 6 <= m["n_behaviours_verified"] <= 8   # 8 in the smoke run
    assert m["linear_alpha"] in (0.05, 0.2) and 0 <= m["n_behaviours_transfer_significant"] <= m["n_behaviours_verified"]
    assert 0 < m["sign_test_p"] <= 1 and m["sign_test_p"] <= m["sign_test_p_bonferroni"] <= 1
    assert len(r["claims"]) == 3 and all(c["verdict"] in ("holds", "partly", "does not hold at this scale") for c in r["claims"])
