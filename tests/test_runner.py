import pytest
from ortho_nbs.runner import plan, load_profiles, main, notebooks
from ortho_nbs.provenance import project_root


def test_profiles_cover_every_notebook_parameter_they_set():
    for prof in load_profiles(): assert plan(prof)        # every key names a declared parameter


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
