"""Each notebook, executed through the runner with the smoke profile, and its results file checked.

The smoke profile uses the real packaged models with small samples: the same code paths as the paper profile."""
import pytest

pytestmark = pytest.mark.notebook


def test_00_models(run_notebook):
    r = run_notebook("00_models")
    m = r["metrics"]
    assert m["reload_max_abs_logit_diff"] == 0.0 and m["reload_generation_identical"] == 1.0
    assert {x["name"] for x in r["provenance"]["models"]} == {"smollm2-135m-instruct", "gemma-3-270m"}
    assert all(len(x["sha256"]) == 64 for x in r["provenance"]["models"])
    assert {c["id"]: c["verdict"] for c in r["claims"]}["saved_model_reloads"] == "holds"   # decided from the metrics above


def test_01_hooks(run_notebook, smoke_dir):
    r = run_notebook("01_hooks")
    m = r["metrics"]
    assert (m["n_layers"], m["d_model"], m["n_prompts"]) == (30, 576, 16)
    assert m["norm_ratio_last_first"] > 2          # the residual stream grows with depth (SmolLM2: ~30x)
    assert (smoke_dir / "figures" / "01_residual_norms.png").exists()
    assert (smoke_dir / "figures" / "01_residual_norms.json").exists()
    assert [(c["kind"], c["number"]) for c in r["claims"]] == [("check", "01.1")]


@pytest.mark.parametrize("stem", ["02_data", "04_provenance", "05_runner", "06_distributed", "07_training", "08_splits", "09_cache", "29_canary"])
def test_library_notebooks_pass_their_checks(stem, run_notebook):
    run_notebook(stem)    # raises NotebookFailed if any of the notebook's own checks fails


def test_50_costs(run_notebook, smoke_dir):
    r = run_notebook("50_costs")
    m = r["metrics"]
    # byte arithmetic, not a fit: LLaMA-7B's fine-tune step (weights, gradients, two Adam moments per source) does not fit
    # one 80 GB GPU, and FSDP2 over 8 divides the sharded part by 8 (one gathered block added)
    one, eight = m["paper_LLaMA_7B_finetune_step_h100x1_gib"], m["paper_LLaMA_7B_finetune_step_h100x8_gib"]
    assert one > 80 and one / 8 < eight < one / 4
    assert (smoke_dir / "figures" / "50_cost_model.png").exists()


# 03_evaluation runs (once) in tests/test_check.py, as the notebook that `reproduce --check` re-runs.


def test_10_ablation(run_notebook):
    r = run_notebook("10_ablation")
    m, claims = r["metrics"], {c["id"]: c for c in r["claims"]}
    assert m["window_first_layer"] == 21                # window_start 0.7 of SmolLM2's 30 layers
    assert m["heldout_4grams_seen_in_training"] < 0.05
    assert m["n_pairs_stage1"] == 6                     # Stage 1: the closer half of 24 candidates, then its more divergent half
    assert m["avoidance_base"] >= 0.25                  # the behaviour exists on held-out prompts (SmolLM2: ~0.4-0.6)
    assert m["avoidance_benign_base"] < m["avoidance_base"]
    assert m["avoidance_ablated"] < m["avoidance_base"] - 0.2    # smoke: 0.58 -> 0.00; a broken edit would leave it
    assert m["avoidance_ablated_stage1"] < m["avoidance_base"] - 0.2
    assert m["avoidance_random_direction_max"] > m["avoidance_ablated"]
    assert m["null_scorer_agreement"] >= 0.9 and 0 < m["avoidance_null_p_stage1"] <= 1
    assert m["probe_negative_controls_passed"] == 1 and m["n_probe_controls"] >= 20    # planted wrong answers score wrong
    assert m["n_compliance_labels"] >= 40 and 0.5 < m["compliance_scorer_agreement"] < 1
    assert m["n_must_refuse"] == 12 and 0 <= m["must_refuse_base"] <= 1
    assert m["gradients_computed"] == 0.0 and m["reloaded_generations_identical"] == 1.0
    assert m["avoidance_reloaded"] == m["avoidance_ablated_stage1"] and m["scorer_agreement_long"] >= 0.8
    assert 0 <= m["kl_neutral_nats"] < 0.5 and 0 <= m["kl_neutral_nats_stage1"] < 0.5   # small edits (smoke: ~0.07, ~0.04)
    assert m["kl_neutral_searched_heldout_nats"] >= 0 and m["random_subspace_dim"] >= 1
    assert m["n_search_trials"] == 2 and 0 < m["direction_split_half_cosine"] <= 1
    assert claims["probes_can_fail"]["verdict"] == "holds"
    for c in claims.values():                           # a paper claim whose precondition failed is not tested, and says so
        failed = [q for q in c.get("requires", []) if claims[q]["verdict"] != "holds"]
        assert (c["verdict"] == "not tested") == bool(failed), c["id"]
    assert "amended" in claims["neutral_kl_small"]
    assert {"10_stage1", "10_null", "10_saliency", "10_pareto", "10_data_efficiency", "10_loco", "10_split_half", "10_search"} <= set(r["figures"])


def test_21_spectra(run_notebook):
    r = run_notebook("21_spectra")
    m = r["metrics"]
    assert m["slq_vs_exact_max_abs_err"] < 1e-8 and m["slq_vs_exact_tiny_hessian"] < 1e-4
    assert m["mp_edge_rel_err_synthetic"] < 0.05 and m["mp_spikes_found_synthetic"] == 3
    assert m["n_block_params"] == 576 * 1536 and m["top_eig_before"] > 0 and m["hessian_tokens"] == 31   # one 32-token sequence
    assert m["mp_edge"] > 0 and m["mp_outliers"] >= 1                      # even 6 Lanczos steps find the top outlier beyond the bulk


def test_31_lmc(run_notebook):
    r = run_notebook("31_lmc")
    m = r["metrics"]
    assert m["n_points"] == 3 and m["domain_loss_finetuned"] < m["domain_loss_base"] < m["domain_loss_finetuned"] + 0.2
    assert m["lmc_barrier_domain_base_finetuned"] == pytest.approx(m["domain_loss_base"] - m["domain_loss_finetuned"], abs=1e-9)   # a monotone path: B is the endpoint gap (eq. 11)
    assert m["lmc_chord_barrier_domain_base_finetuned"] < 0.01
    assert m["train_loss_alg1"] != m["train_loss_base"]
    c = {x["id"]: x for x in r["claims"]}
    if c["alg1_path_nontrivial"]["verdict"] != "holds": assert c["lmc_chord_alg1"]["verdict"] == "not tested"
