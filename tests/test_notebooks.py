"""Each notebook, executed through the runner with the smoke profile, and its results file checked.

The smoke profile uses the real packaged models with small samples: the same code paths as the paper profile."""
import json
import pytest
from ortho_nbs.runner import reproduce

pytestmark = pytest.mark.notebook


def run(stem, smoke_dir):
    s = reproduce("smoke", only=[stem], out=smoke_dir)
    res = json.loads((smoke_dir / "results" / f"{stem}.json").read_text()) if s["notebooks"][0]["results"] else None
    if res:
        assert res["provenance"]["profile"] == "smoke"
        assert res["provenance"]["git_commit"] is None or len(res["provenance"]["git_commit"]) >= 40
        assert all(c["verdict"] for c in res["claims"])
    return res


def test_00_models(smoke_dir):
    r = run("00_models", smoke_dir)
    m = r["metrics"]
    assert m["reload_max_abs_logit_diff"] == 0.0 and m["reload_generation_identical"] == 1.0
    assert {x["name"] for x in r["provenance"]["models"]} == {"smollm2-135m-instruct", "gemma-3-270m"}
    assert all(len(x["sha256"]) == 64 for x in r["provenance"]["models"])


def test_01_hooks(smoke_dir):
    r = run("01_hooks", smoke_dir)
    m = r["metrics"]
    assert (m["n_layers"], m["d_model"], m["n_prompts"]) == (30, 576, 16)
    assert m["norm_ratio_last_first"] > 2          # the residual stream grows with depth (SmolLM2: ~30x)
    assert (smoke_dir / "figures" / "01_residual_norms.png").exists()
    assert (smoke_dir / "figures" / "01_residual_norms.json").exists()


@pytest.mark.parametrize("stem", ["02_data", "04_provenance", "05_runner"])
def test_library_notebooks_pass_their_checks(stem, smoke_dir):
    run(stem, smoke_dir)    # raises NotebookFailed if any of the notebook's own checks fails


def test_03_evaluation(smoke_dir):
    m = run("03_evaluation", smoke_dir)["metrics"]
    assert 2 < m["ppl_public_heldout"] < 60         # SmolLM2 on the Python reference: ~14
    assert m["n_arithmetic"] == 8 and 0 <= m["arithmetic_acc"] <= 1


def test_10_ablation(smoke_dir):
    r = run("10_ablation", smoke_dir)
    m = r["metrics"]
    assert m["n_heldout_pairs"] == 16 and m["n_train_pairs"] == 24 and m["window_first_layer"] == 21
    assert m["n_frames"] == 40 and m["n_categories"] == 10 and m["heldout_4grams_seen_in_training"] < 0.05
    assert m["avoidance_base"] >= 0.25           # the behaviour exists on held-out prompts (SmolLM2: ~0.4-0.6)
    assert m["avoidance_benign_base"] < m["avoidance_base"]
    assert m["avoidance_ablated"] < m["avoidance_base"] - 0.2    # smoke: 0.62 -> 0.00; a broken edit would leave it
    assert m["avoidance_random_direction_max"] > m["avoidance_ablated"]
    assert m["gradients_computed"] == 0.0 and m["reloaded_generations_identical"] == 1.0
    assert m["avoidance_reloaded"] == m["avoidance_ablated"] and m["scorer_agreement_long"] >= 0.8
    assert 0 <= m["kl_neutral_nats"] < 0.5       # the paper recipe is a small edit (smoke: ~0.07 nats/token)
    assert m["n_search_trials"] == 3 and 0 < m["direction_split_half_cosine"] <= 1
    assert len(r["claims"]) >= 14
    assert {"10_saliency", "10_pareto", "10_data_efficiency", "10_loco", "10_split_half", "10_search"} <= set(r["figures"])


def test_20_kfac(smoke_dir):
    m = run("20_kfac", smoke_dir)["metrics"]
    assert m["kfac_single_token_max_rel_err"] < 1e-3     # A ⊗ G is exact for one token
    assert m["n_layers_factored"] == 210 and m["n_tokens"] > 0
    assert 0 <= m["high_energy_random"] <= 0.3             # a random delta spreads ~uniformly (10% of the grid)
    assert m["finetune_loss_canary_last"] < m["finetune_loss_canary_first"]


def test_21_spectra(smoke_dir):
    m = run("21_spectra", smoke_dir)["metrics"]
    assert m["slq_vs_exact_max_abs_err"] < 1e-8 and m["slq_vs_exact_tiny_hessian"] < 1e-4
    assert m["n_block_params"] == 576 * 1536 and m["top_eig_before"] > 0


def test_30_ogd(smoke_dir):
    r = run("30_ogd", smoke_dir)
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


def test_31_lmc(smoke_dir):
    m = run("31_lmc", smoke_dir)["metrics"]
    assert m["n_points"] == 3 and m["domain_loss_finetuned"] < m["domain_loss_base"] < m["domain_loss_finetuned"] + 0.2
    assert m["lmc_barrier_domain_base_finetuned"] == pytest.approx(m["domain_loss_base"] - m["domain_loss_finetuned"], abs=1e-9)   # a monotone path: B is the endpoint gap (eq. 11)
    assert m["lmc_chord_barrier_domain_base_finetuned"] < 0.01


def test_40_transfer(smoke_dir):
    r = run("40_transfer", smoke_dir)
    m = r["metrics"]
    assert m["n_pairs"] > 300 and 0 < m["cka_max"] <= 1 and m["n_texts"] == 40
    assert m["r2_heldout_best_pair"] > 0.2         # even 20 texts give a map that explains part of the target states
    assert m["random_controls_per_cell"] == 6 and m["shuffled_maps_per_cell"] == 2
    assert m["n_behaviours"] == 8 and 6 <= m["n_behaviours_verified"] <= 8   # 8 in the smoke run
    assert m["linear_alpha"] in (0.05, 0.2) and 0 <= m["n_behaviours_transfer_significant"] <= m["n_behaviours_verified"]
    assert 0 < m["sign_test_p"] <= 1 and m["sign_test_p"] <= m["sign_test_p_bonferroni"] <= 1
    assert len(r["claims"]) == 3 and all(c["verdict"] in ("holds", "partly", "does not hold at this scale") for c in r["claims"])
