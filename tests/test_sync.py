"The notebooks are the source: the library and the cleaned notebooks must agree with them (environment.yml: test_environment.py)."
import re, shutil, subprocess, sys
from pathlib import Path
import pytest
from ortho_nbs.provenance import project_root

ROOT = project_root()
BIN = Path(sys.executable).parent


def _copy(tmp):
    for name in ("nbs", "ortho_nbs"): shutil.copytree(ROOT / name, tmp / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "settings.ini", "README.md"): shutil.copy(ROOT / name, tmp / name)
    return tmp


def _tree(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def test_library_in_sync_with_notebooks(tmp_path):
    tmp = _copy(tmp_path)
    subprocess.run([str(BIN / "nbdev-export")], cwd=tmp, check=True, capture_output=True)
    before, after = _tree(ROOT / "ortho_nbs"), _tree(tmp / "ortho_nbs")
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"nbdev-export changes {changed}: edit nbs/, run nbdev-export, commit both"


def test_notebooks_clean(tmp_path):
    tmp = _copy(tmp_path)
    subprocess.run([str(BIN / "nbdev-clean")], cwd=tmp, check=True, capture_output=True)
    before, after = _tree(ROOT / "nbs"), _tree(tmp / "nbs")
    changed = sorted(k for k in before if before[k] != after.get(k))
    assert not changed, f"nbdev-clean changes {changed}: run nbdev-clean and commit"


def test_parameters_tag_survives_clean():
    import json
    for p in sorted((ROOT / "nbs").glob("[0-9][0-9]_*.ipynb")):
        tags = [t for c in json.loads(p.read_text())["cells"] for t in c.get("metadata", {}).get("tags", [])]
        assert tags.count("parameters") == 1, p.name


def _name(req): return re.split(r"[<>=!~ \[]", req.strip(), 1)[0].lower()


def test_papermill_parses_every_parameter():
    "papermill reads each parameters cell line by line; a comment it cannot parse hides that parameter from its checks."
    import json
    import papermill.translators as T
    for p in sorted((ROOT / "nbs").glob("*.ipynb")):
        for c in json.loads(p.read_text())["cells"]:
            if "parameters" not in c["metadata"].get("tags", []): continue
            src = "".join(c["source"])
            names = {l.split("=")[0].strip() for l in src.splitlines() if "=" in l and not l.startswith((" ", "#"))}
            got = {x.name for x in T.PythonTranslator.inspect({"source": src})}
            assert names <= got, f"{p.name}: papermill cannot parse {sorted(names - got)} (no '=', quotes or apostrophes in their comments)"
