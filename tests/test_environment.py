"""environment.yml (for conda users) describes the same environment as pyproject.toml: every dependency and every
optional extra, with the same version specifier."""
import re, tomllib
from ortho_nbs.provenance import project_root


def _name(spec): return re.split(r"[<>=!~\[ ]", spec, 1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    root = project_root()
    proj = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    wanted = list(proj["dependencies"]) + [d for deps in proj["optional-dependencies"].values() for d in deps]
    lines = (root / "environment.yml").read_text().splitlines()
    pip = [l.strip()[2:].strip() for l in lines if re.match(r"^\s{4,}- ", l) and not l.strip().startswith("- -e")]
    assert sorted(pip, key=_name) == sorted(wanted, key=_name), (
        f"only in pyproject: {sorted(set(wanted) - set(pip))}; only in environment.yml: {sorted(set(pip) - set(wanted))}")
    assert any(l.strip() == "- python=3.11" for l in lines) and proj["requires-python"] == ">=3.11"
