import pytest
from pathlib import Path
from ortho_nbs.runner import plan, load_profiles, main, notebooks
from ortho_nbs.provenance import project_root


# the paper-scale profile names the papers' models, which are not on this machine: planned with a stand-in folder whose
# config has 48 blocks (plan reads configs only; the papers' models have 32 to 42), made once per test session
def _stand_in() -> str:
    import json, tempfile
    d = Path(tempfile.gettempdir()) / "ortho-nbs-stand-in-48"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(dict(model_type="llama", num_hidden_layers=48)))
    (d / "model.safetensors").touch()
    return str(d)

STAND_INS = {k: _stand_in() for k in ("model_name", "source_name", "target_name")}
def _overrides(prof): return STAND_INS if prof == "paper-scale" else None


def test_profiles_cover_every_notebook_parameter_they_set():
    for prof in load_profiles(): assert plan(prof, overrides=_overrides(prof))   # every key names a declared parameter


def test_paper_scale_refuses_models_that_are_not_here_before_work():
    with pytest.raises(ValueError, match=r"settings.ini \[paper-scale\] 30_ogd.model_name = .*nothing downloads at run time"
                                         r".*-p 30_ogd.model_name /path/to/model"):
        plan("paper-scale", only=["30_ogd"])
    assert main(["reproduce", "--profile", "paper-scale", "--only", "40_transfer"]) == 2
    steps = dict((p.stem, pars) for p, pars in plan("paper-scale", overrides=STAND_INS))
    assert steps["30_ogd"]["n_canaries"] == 1000 and steps["40_transfer"]["target_layers"] == [12, 21, 30]
    with pytest.raises(ValueError, match="no such directory"): plan("paper", only=["20_kfac"], overrides={"model_name": "./no/such/model"})
    # its layer choices are LLaMA-7B's (32 blocks): SmolLM2's 30 do not have them, refused before any work
    with pytest.raises(ValueError, match=r"settings.ini \[paper-scale\] 20_kfac.finetune_layers = \[28, 29, 30, 31\]: block 30 does not "
                                         r"exist \(the model has blocks 0..29\) in model_name = 'smollm2-135m-instruct'"):
        plan("paper-scale", only=["20_kfac"], overrides={"model_name": "smollm2-135m-instruct"})


def test_layers_the_model_does_not_have_are_refused_before_work():
    with pytest.raises(ValueError, match=r"-p 30_ogd.train_layers \[16, 40\]: block 40 does not exist \(the model has blocks 0..29\)"):
        plan("paper", only=["30_ogd"], overrides={"train_layers": [16, 40]})
    with pytest.raises(ValueError, match=r"block 18 does not exist .* in target_name = 'gemma-3-270m'"):
        plan("smoke", only=["40_transfer"], overrides={"target_layers": [18]})
    assert plan("paper", only=["21_spectra"], overrides={"block": "29.mlp.down_proj"})     # the last block is fine


def test_every_notebook_declares_run_parameters():
    for p in notebooks(): assert plan("smoke", only=[p.stem])


def test_unknown_profile_refused_before_work(capsys):
    assert main(["reproduce", "--profile", "fastest"]) == 2
    err = capsys.readouterr().err
    assert "unknown profile 'fastest'" in err and "paper" in err and "smoke" in err


def test_unknown_notebook_refused(capsys):
    assert main(["reproduce", "--profile", "smoke", "--only", "99_nothing"]) == 2
    assert "known: 00_models" in capsys.readouterr().err


def test_undeclared_parameter_refused(tmp_path):
    import shutil
    root = project_root()
    shutil.copytree(root / "nbs", tmp_path / "nbs")
    (tmp_path / "settings.ini").write_text("[smoke]\n03_evaluation.n_arithmatic = 3\n")
    with pytest.raises(ValueError, match="declares only: .*n_arithmetic"): plan("smoke", root=tmp_path)


def test_partial_rerun_keeps_other_notebooks_in_summary(tmp_path):
    import json
    from ortho_nbs.runner import _publish_summary
    p = tmp_path / "paper_summary.json"
    full = dict(total_s=30.0, notebooks=[dict(notebook="00_a", seconds=10.0), dict(notebook="10_b", seconds=20.0)])
    _publish_summary(full, p, partial=False)
    _publish_summary(dict(total_s=5.0, notebooks=[dict(notebook="10_b", seconds=5.0)]), p, partial=True)
    s = json.loads(p.read_text())
    assert [n["seconds"] for n in s["notebooks"]] == [10.0, 5.0] and s["total_s"] == 15.0


# ---- overrides on the command line (issue #17, item 2) ----
import json, shutil
import nbformat
from ortho_nbs import runner
from ortho_nbs.runner import parse_overrides


def _capture_reproduce(monkeypatch):
    seen = {}
    def fake(profile, only, out, root, publish, overrides=None):
        seen.update(profile=profile, only=only, publish=publish, overrides=overrides,
                    plan=plan(profile, only, root, overrides))   # the checks reproduce makes before any work
        return dict(notebooks=[], total_s=0.0, results_dir="-", figures_dir="-", run_dir="-")
    monkeypatch.setattr(runner, "reproduce", fake)
    return seen


def test_cli_overrides_all_forms(monkeypatch):
    seen = _capture_reproduce(monkeypatch)
    assert main(["reproduce", "--only", "10_ablation", "-p", "window_start", "0.6", "-p", "10.n_random=2",
                 "-p", "ablation.opening", "No", "-p", "sweep_starts", "[0.6, 0.8]", "-p", "max_kl", "-0.5"]) == 0
    assert seen["overrides"] == {"window_start": 0.6, "10.n_random": 2, "ablation.opening": "No",
                                 "sweep_starts": [0.6, 0.8], "max_kl": -0.5}
    (nb, params), = seen["plan"]
    assert nb.stem == "10_ablation" and params["window_start"] == 0.6 and params["n_random"] == 2
    assert params["opening"] == "No" and params["sweep_starts"] == [0.6, 0.8] and params["max_kl"] == -0.5


def test_global_override_applies_to_every_declaring_notebook():
    steps = dict((p.stem, pars) for p, pars in plan("smoke", only=["10_ablation", "30_ogd", "31_lmc"],
                                                   overrides=parse_overrides([["steps", "2"], ["31.n_points=5"]])))
    assert steps["30_ogd"]["steps"] == 2 and steps["31_lmc"]["steps"] == 2 and steps["31_lmc"]["n_points"] == 5
    assert "steps" not in steps["10_ablation"] and "n_points" not in steps["30_ogd"]
    scoped = dict((p.stem, pars) for p, pars in plan("smoke", only=["10", "30"], overrides={"n_seeds": 2, "30_ogd.n_seeds": 3}))
    assert scoped["30_ogd"]["n_seeds"] == 3                                 # a notebook's own override beats a global one


@pytest.mark.parametrize("args, message", [
    (["-p", "window_strat", "0.6"], "no notebook in this run declares 'window_strat'; their parameters: 10_ablation: "
                                    "model_name|window_start"),
    (["-p", "10_ablation.window_strat=0.6"], "10_ablation has no parameter 'window_strat'; its parameters: model_name|window_start"),
    (["-p", "20_kfac.n_sequences", "4"], "20_kfac is not in this run (10_ablation); add --only 20_kfac"),
    (["-p", "99.n", "4"], "unknown notebook '99'"),
    (["-p", "window_start", "O.6"], "-p 10_ablation.window_start 'O.6': the notebook's default is 0.7, a float"),
    (["-p", "n_random", "2.5"], "n_random 2.5: the notebook's default is |, an int; got a float"),
    (["-p", "opening", "42"], "quote a string"),
    (["-p", "out_dir", "/tmp"], "out_dir is set by the runner"),
    (["-p", "window_start"], "give -p NAME VALUE"),
])
def test_bad_override_refused_before_anything_runs(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["reproduce", "--only", "10_ablation", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert all(part in err for part in message.split("|")), err
    assert not out.exists()                                   # refused before any folder was made


def _run_project(d):
    "A throwaway checkout with one notebook that writes a results file through Run."
    root = project_root()
    (d / "nbs").mkdir(parents=True)
    shutil.copy(root / "pyproject.toml", d / "pyproject.toml")      # nbdev's config, for publishing
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("profile = 'paper'\nout_dir = None\nn = 3", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("from ortho_nbs.provenance import Run\nrun = Run.start('01_demo', globals())\n"
                                          "run.finish({'n': n}, [])\nprint('n is', n)")]
    nb.metadata["kernelspec"] = dict(name="python3", display_name="python3", language="python")
    nbformat.write(nb, d / "nbs" / "01_demo.ipynb")
    (d / "settings.ini").write_text("[paper]\n*.n = 3\n")
    return d


def test_paper_run_with_overrides_goes_to_runs_and_records_them(tmp_path):
    root = _run_project(tmp_path / "proj")
    s = runner.reproduce("paper", root=root, overrides={"n": 5})
    assert not (root / "results").exists()                    # not published without --publish
    res = json.loads(Path(s["results_dir"], "01_demo.json").read_text())
    assert Path(s["results_dir"]).parent.parent == root / "runs"
    assert res["params"]["n"] == 5 and res["provenance"]["overrides"] == {"n": 5}
    assert s["overrides"] == {"01_demo": {"n": 5}} and json.loads(Path(s["run_dir"], "summary.json").read_text())["overrides"]
    s = runner.reproduce("paper", root=root, overrides={"demo.n": 6}, publish=True)      # asked for: published
    res = json.loads((root / "results" / "01_demo.json").read_text())
    assert res["params"]["n"] == 6 and res["provenance"]["overrides"] == {"n": 6}
    assert "n = 6" in (root / "nbs" / "01_demo.ipynb").read_text()    # the published notebook shows the override
    s = runner.reproduce("paper", root=root)                   # no overrides: the paper profile publishes as before
    res = json.loads((root / "results" / "01_demo.json").read_text())
    assert res["params"]["n"] == 3 and res["provenance"]["overrides"] == {}
    assert "overridden" not in (root / "nbs" / "01_demo.ipynb").read_text()


def test_31_lmc_interpolates_30_ogds_first_fine_tune():
    "31_lmc must ask for the fine-tune 30_ogd cached (its first seed), in every profile: the same inputs, the same cache entry."
    from ortho_nbs.provenance import parameters_cell, parameter_links
    shared = ["model_name", "seed", "n_canaries", "public_path", "train_layers", "train_kinds", "steps", "lr", "public_batch",
              "canary_batch", "seq_len", "domain_sequences", "eval_every", "factor_sequences", "gen_fraction", "alg1_k_range", "svd_energy"]
    assert parameter_links(project_root() / "nbs" / "31_lmc.ipynb") == {k: "30_ogd" for k in shared}
    for prof in load_profiles():
        ov = {"model_name": STAND_INS["model_name"]} if prof == "paper-scale" else None
        (a, pa), = plan(prof, only=["30_ogd"], overrides=ov); (b, pb), = plan(prof, only=["31_lmc"], overrides=ov)
        pa, pb = parameters_cell(a) | pa, parameters_cell(b) | pb
        assert {k: pa[k] for k in shared} == {k: pb[k] for k in shared}, prof


def test_shared_parameters_are_set_in_one_notebook_only(tmp_path):
    "`same as: 30_ogd`: -p 30_ogd.NAME reaches 31_lmc run alone; the copy cannot be set, and its default cannot drift."
    import shutil
    (_, p), = plan("smoke", only=["31_lmc"], overrides={"30_ogd.steps": 3, "30_ogd.train_layers": [22, 23]})
    assert (p["steps"], p["train_layers"], p["n_canaries"]) == (3, [22, 23], 8)          # 8: settings.ini [smoke] 30_ogd.n_canaries
    with pytest.raises(ValueError, match=r"-p 31_lmc.steps: steps of 31_lmc is 30_ogd's .*give -p 30_ogd.steps"):
        plan("smoke", only=["31_lmc"], overrides={"31_lmc.steps": 3})
    root = project_root()
    shutil.copytree(root / "nbs", tmp_path / "nbs")
    (tmp_path / "settings.ini").write_text("[smoke]\n31_lmc.lr = 0.01\n")
    with pytest.raises(ValueError, match=r"sets 31_lmc.lr, which is 30_ogd's \(same as: 30_ogd\): set 30_ogd.lr instead"):
        plan("smoke", only=["31_lmc"], root=tmp_path)
    nb = tmp_path / "nbs" / "31_lmc.ipynb"
    nb.write_text(nb.read_text().replace('"steps = 72   # same as: 30_ogd', '"steps = 60   # same as: 30_ogd'))
    (tmp_path / "settings.ini").write_text("[smoke]\n")
    with pytest.raises(ValueError, match=r"its default steps = 60 differs from 30_ogd's 72"): plan("smoke", only=["31_lmc"], root=tmp_path)
