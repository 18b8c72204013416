"""Every section notebook on models that are not packaged: saved random-initialised Qwen2 and GPT-2 directories.

A user points a section at their own model with `-p model_name /path/to/hf-dir` (40_transfer: `source_name` and
`target_name`) and moves the layer parameters onto its blocks with `-p`. The models here carry SmolLM2's BPE tokenizer
(40_transfer scores next-word probabilities, which a character-level tokenizer cannot give) and random weights: no
behaviour is present, so the claims that need one must come out "not tested", not "does not hold"."""
import json, math
import pytest
from ortho_nbs.models import tiny_model, save_model, _cached_packaged
from ortho_nbs.cache import file_sha256
from ortho_nbs.provenance import VERDICTS
from ortho_nbs.runner import reproduce

pytestmark = pytest.mark.notebook

SECTIONS = ["10_ablation", "20_kfac", "21_spectra", "30_ogd", "31_lmc", "40_transfer"]


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    from transformers import AutoTokenizer
    home = tmp_path_factory.mktemp("my_models")
    (home / "notes.txt").write_text("a user's file next to their models")
    tok = AutoTokenizer.from_pretrained(str(_cached_packaged("smollm2-135m-instruct", progress=False)[0]))
    dirs = {fam: save_model(tiny_model(fam, n_layers=n, d_model=d, vocab_size=len(tok)), tok, home / f"my-{fam}")
            for fam, n, d in [("qwen2", 6, 64), ("gpt2", 8, 96)]}
    before = {f: file_sha256(dirs[f] / "model.safetensors") for f in dirs}
    qwen = str(dirs["qwen2"])
    overrides = {"model_name": qwen, "10_ablation.layer_stride": 1, "10_ablation.sweep_starts": [0.5, 0.8],
                 "20_kfac.probe_layer": 3, "20_kfac.finetune_layers": [4, 5], "21_spectra.block": "5.mlp.down_proj",
                 "30_ogd.train_layers": [4, 5], "30_ogd.slq_layer": 5,   # 31_lmc's are 30_ogd's (same as: 30_ogd)
                 "40_transfer.source_name": qwen, "40_transfer.target_name": str(dirs["gpt2"]),
                 "40_transfer.target_layers": [3, 5]}
    out = tmp_path_factory.mktemp("own_run")
    summary = reproduce("smoke", only=SECTIONS, out=out, overrides=overrides)
    results = {s: json.loads((out / "results" / f"{s}.json").read_text()) for s in SECTIONS}
    return dict(home=home, dirs=dirs, before=before, summary=summary, results=results, out=out)


def test_every_section_gives_a_claims_table(own_run):
    for stem, r in own_run["results"].items():
        assert len(r["claims"]) >= 2, stem
        assert all(c["verdict"] in VERDICTS and c["measured"] and c["why"] and c["rule"] for c in r["claims"]), stem
        bad = [k for k, v in r["metrics"].items() if isinstance(v, float) and math.isnan(v)]
        assert not bad, f"{stem}: NaN metrics {bad}"


def test_provenance_names_the_own_model(own_run):
    d, r = own_run["dirs"], own_run["results"]
    for stem in SECTIONS:
        models = r[stem]["provenance"]["models"]
        assert models[0]["path"] == ".../" + "/".join(d["qwen2"].parts[-2:]) and models[0]["format"] == "local", stem   # no absolute path
        assert models[0]["sha256"] == own_run["before"]["qwen2"], stem
    assert r["40_transfer"]["provenance"]["models"][1]["path"].endswith("/my-gpt2")
    assert r["20_kfac"]["provenance"]["overrides"]["finetune_layers"] == [4, 5]
    assert own_run["summary"]["results_dir"].startswith(str(own_run["out"]))      # overrides: nothing published


def test_sections_ran_on_the_small_model(own_run):
    m = {s: r["metrics"] for s, r in own_run["results"].items()}
    assert m["20_kfac"]["n_layers_factored"] == 6 * 7                   # q, k, v, o, gate, up, down of 6 Qwen2 blocks
    assert m["10_ablation"]["window_first_layer"] >= 4                  # the last 30% of 6 blocks
    assert m["40_transfer"]["n_behaviours_verified"] <= m["40_transfer"]["n_behaviours"]


def test_absent_behaviour_is_not_tested(own_run):
    "A random model avoids nothing: the removal claims of 10_ablation cannot be decided and say so."
    r = own_run["results"]["10_ablation"]
    assert r["metrics"]["avoidance_base"] == r["metrics"]["avoidance_benign_base"] == 0.0
    gated = [c for c in r["claims"] if c["kind"] == "paper" and c.get("requires")]   # the removal claims need the behaviour
    assert len(gated) >= 2 and all(c["verdict"] == "not tested" and c["diagnosis"] == "precondition" for c in gated)
    ogd = own_run["results"]["30_ogd"]
    assert ogd["metrics"]["canary_extraction_finetuned"] == 0.0
    assert any(c["verdict"] == "not tested" and c["kind"] == "paper" for c in ogd["claims"])


def test_own_models_left_as_they_were(own_run):
    "The ablation notebook saves and removes a scratch model: the user's folder and its neighbours stay untouched."
    home, d = own_run["home"], own_run["dirs"]
    assert (home / "notes.txt").read_text() == "a user's file next to their models"
    assert {f: file_sha256(d[f] / "model.safetensors") for f in d} == own_run["before"]
    assert sorted(p.name for p in home.iterdir()) == ["my-gpt2", "my-qwen2", "notes.txt"]
