"""Issue #36: nothing lost, nothing silently wrong. Faults injected into runs of throwaway projects (one or two tiny
notebooks, a few seconds each): an interrupted run, a second run into a held folder, two runs in the same second, an
`--out` over the checkout or onto a file, `--publish` with the smoke profile, a damaged baseline, values out of range."""
import fcntl, json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import nbformat, pytest
from ortho_nbs import provenance, runner
from ortho_nbs.provenance import project_root
from ortho_nbs.runner import main, plan, reproduce, reproduce_check

KERNELSPEC = dict(name="python3", display_name="python3", language="python")
FIGURES = """import time, matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
from ortho_nbs.provenance import Run, Claim, declare
run = Run.start('01_demo', globals())
for i in range(3):
    fig, ax = plt.subplots(); ax.plot([0, seed]); run.savefig(fig, f'01_fig{i}'); plt.close(fig)
time.sleep(pause)
run.finish({'seed': seed, 'x': 0.5}, declare(Claim('small', 'check', 'seed is small', holds='seed < 5')))"""


def _project(d: Path, body: str = FIGURES, params: str = "seed = 0\npause = 0.0", settings: str = "[smoke]\n[paper]\n") -> Path:
    "A checkout with one notebook 01_demo (its parameters cell: profile, out_dir and `params`; then `body`)."
    root = d / "proj"; (root / "nbs").mkdir(parents=True)
    shutil.copy(project_root() / "pyproject.toml", root / "pyproject.toml")       # nbdev's configuration, for publishing
    nb = nbformat.v4.new_notebook(metadata=dict(kernelspec=KERNELSPEC))
    nb.cells = [nbformat.v4.new_code_cell(f"profile = 'paper'\nout_dir = None\n{params}", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, root / "nbs" / "01_demo.ipynb")
    (root / "settings.ini").write_text(settings)
    return root


def _seeds(folder: Path) -> dict:
    "The seed each output of 01_demo in a run folder was made with."
    out = {p.name: json.loads(p.read_text())["params"]["seed"] for p in sorted((folder / "figures").glob("*.json"))}
    out["results"] = json.loads((folder / "results" / "01_demo.json").read_text())["params"]["seed"]
    return out


# ---- 1. run folders ----

def test_interrupted_rerun_leaves_the_folder_whole_and_a_second_run_is_refused(tmp_path, capsys):
    "The issue's case: a run into D, then a run with another seed into D interrupted with Ctrl-C after drawing figures."
    root, d = _project(tmp_path), tmp_path / "D"
    reproduce("smoke", root=root, out=d, progress_s=0)
    before = _seeds(d)
    assert set(before.values()) == {0} and len(before) == 4
    proc = subprocess.Popen([sys.executable, "-m", "ortho_nbs", "reproduce", "--root", str(root), "--profile", "smoke",
                             "--out", str(d), "-p", "seed", "1", "-p", "pause", "60"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))   # as in a terminal

    try:
        t0 = time.time()      # wait until the second run has drawn all its figures, then press Ctrl-C
        while not (d / "partial" / "01_demo" / "figures" / "01_fig2.json").exists() and time.time() - t0 < 120: time.sleep(0.2)
        assert (d / "partial" / "01_demo" / "figures" / "01_fig2.json").exists(), "the second run never drew its figures"
        assert main(["reproduce", "--root", str(root), "--profile", "smoke", "--out", str(d)]) == 2   # D is held
        assert f"the run folder {d} is in use by another ortho-nbs run (pid {proc.pid}" in capsys.readouterr().err
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "ortho-nbs: interrupted" in err, err[-2000:]
    finally:
        if proc.poll() is None: proc.kill(); proc.communicate()
    assert _seeds(d) == before                                  # every output still from the first run
    assert "seed = 1" not in (d / "notebooks" / "01_demo.ipynb").read_text()
    assert json.loads((d / "summary.json").read_text())["overrides"] == {}
    assert not (d / "INCOMPLETE").exists()                      # nothing was swapped in: the folder is as it was
    assert (d / "partial" / "01_demo" / "01_demo.ipynb").exists()   # the interrupted run's copy, kept apart


def test_two_runs_in_the_same_second_get_two_folders(tmp_path, monkeypatch):
    root = _project(tmp_path, body="print(seed)", params="seed = 0")
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20260101-000000" if "%H" in fmt and "T" not in fmt else "2026-01-01")
    a = reproduce("smoke", root=root, progress_s=0)["run_dir"]
    b = reproduce("smoke", root=root, progress_s=0)["run_dir"]
    assert a != b and Path(a).name == "smoke-20260101-000000" and Path(b).name == "smoke-20260101-000000-2"


def test_runner_and_run_write_every_file_atomically(tmp_path, monkeypatch):
    "summary.json, check.json, notebooks published into nbs/, and a figure's PNG and SVG go through atomic_write."
    written = []
    def spy(original):
        def write(path, data): written.append(Path(path).name); return original(path, data)
        return write
    monkeypatch.setattr(runner, "atomic_write", spy(runner.atomic_write))
    monkeypatch.setattr(provenance, "atomic_write", spy(provenance.atomic_write))
    root = _project(tmp_path)
    reproduce("paper", root=root, progress_s=0)                                   # publishes into the checkout
    assert {"summary.json", "paper_summary.json", "01_demo.ipynb"} <= set(written)
    reproduce_check("paper", root=root, out=tmp_path / "check")
    assert "check.json" in written
    import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt
    r = provenance.Run("01_demo", dict(seed=0), out_dir=tmp_path / "by-hand")
    fig, ax = plt.subplots(); r.savefig(fig, "01_line"); plt.close(fig)
    assert {"01_line.png", "01_line.svg", "01_line.json"} <= set(written)


# ---- 2. the checkout's committed folders ----

@pytest.mark.parametrize("args, message", [
    (["--out", "{root}"], "that is the checkout, so this run (profile smoke) would write over the committed results/"),
    (["--out", "{root}/results"], "is inside the checkout's results/"),
    (["--out", "{root}/nbs/run"], "is inside the checkout's nbs/"),
    (["--publish"], "only --profile paper publishes (this run: --profile smoke)"),
    (["--out", "{root}/settings.ini"], "is a file, not a folder"),
])
def test_smoke_run_cannot_write_over_the_checkout(tmp_path, capsys, args, message):
    root = _project(tmp_path)
    committed = (root / "nbs" / "01_demo.ipynb").read_text()
    assert main(["reproduce", "--root", str(root), "--profile", "smoke", *[a.format(root=root) for a in args]]) == 2
    assert message in capsys.readouterr().err
    assert not (root / "results").exists() and not (root / "figures").exists()
    assert (root / "nbs" / "01_demo.ipynb").read_text() == committed


# ---- 3. the check's baseline, validated before any work ----

GOOD = dict(params=dict(profile="smoke", seed=0, pause=0.0), metrics=dict(seed=0.0, x=0.5),
            tolerances=dict(seed={"exact": True}, x={"rel": 1e-4}), claims=[dict(id="small", verdict="holds", rule="holds if seed < 5")])


@pytest.mark.parametrize("damage, message", [
    (lambda t: t[: len(t) // 2], "01_demo.json: not valid JSON ("),
    (lambda t: json.dumps(GOOD | dict(metrics=dict(seed=None, x=0.5))), "01_demo.json: metric 'seed' is null"),
    (lambda t: json.dumps({k: v for k, v in GOOD.items() if k != "metrics"}), "01_demo.json: no 'metrics'"),
    (lambda t: json.dumps(GOOD | dict(metrics=dict(seed="0", x=0.5))), "01_demo.json: metric 'seed' is \"0\" (a JSON string), not a number"),
    (lambda t: json.dumps([GOOD]), "01_demo.json: a results file is a JSON object with 'metrics' and 'claims'; this one is a JSON list"),
    (lambda t: json.dumps(GOOD | dict(metrics=dict(x=0.5))), "01_demo.json: metric 'seed' has a tolerance but no value"),
])
def test_check_refuses_a_damaged_baseline_before_the_rerun(tmp_path, capsys, damage, message):
    root, base, out = _project(tmp_path), tmp_path / "base", tmp_path / "check"
    base.mkdir(); text = json.dumps(GOOD, indent=1)
    (base / "01_demo.json").write_text(damage(text))
    assert main(["reproduce", "--check", "--root", str(root), "--profile", "smoke", "--baseline", str(base), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(base / "01_demo.json") in err, err
    assert not out.exists()                                     # refused before any work


# ---- 6. parameter ranges, checked in plan() before any model loads ----

@pytest.mark.parametrize("stem, name, value", [("01_hooks", "n_prompts", 0), ("01_hooks", "n_prompts", -5), ("01_hooks", "batch_size", 0),
                                               ("03_evaluation", "n_arithmetic", 0), ("03_evaluation", "ppl_tokens", 100),
                                               ("00_models", "load_repeats", 0)])
def test_out_of_range_parameter_refused_by_plan(stem, name, value):
    with pytest.raises(ValueError, match=rf"-p {stem}\.{name} {value}: out of range"): plan("smoke", only=[stem], overrides={name: value})
    assert plan("smoke", only=[stem], overrides={name: 256 if name == "ppl_tokens" else 1})     # in range: accepted


def test_out_of_range_refused_on_the_command_line_before_any_folder(tmp_path, capsys):
    root = _project(tmp_path, body="print(n)", params="n = 3  # how many; range: [1, inf)")
    out = tmp_path / "run"
    assert main(["reproduce", "--root", str(root), "--profile", "smoke", "-p", "n", "0", "--out", str(out)]) == 2
    assert "-p 01_demo.n 0: out of range (0 is not >= 1); 01_demo declares n: [1, inf)" in capsys.readouterr().err
    assert not out.exists()
