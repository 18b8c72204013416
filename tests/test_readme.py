"""The README says what the results say, and its quickstart runs as written."""
import re, subprocess, sys
from ortho_nbs.provenance import project_root
from ortho_nbs.runner import update_readme, main

ROOT = project_root()


def test_readme_numbers_come_from_the_results(capsys):
    # the claims and run-time blocks are written from results/*.json: a stale README fails here (fix: `ortho-nbs readme`)
    assert update_readme(ROOT, check=True), "README.md's results blocks differ from results/*.json: run `ortho-nbs readme`"
    assert main(["readme", "--check"]) == 0 and "matches" in capsys.readouterr().out
    text = (ROOT / "README.md").read_text()
    assert text.index("## What reproduces") < text.index("## Start here") < text.index("## Two commands") < text.index("## Quickstart")


def test_quickstart_runs_as_written(tmp_path):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart.*?```python\n(.*?)```", text, re.S).group(1)
    (tmp_path / "quick.py").write_text(block)
    r = subprocess.run([sys.executable, str(tmp_path / "quick.py")], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "torch.Size([576, 1536])" in r.stdout        # SmolLM2's down projection, d_model x d_ff, in the Kronecker eigenbasis
