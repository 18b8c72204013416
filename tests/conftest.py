import logging, os, re
import pytest

logging.getLogger("transformers").setLevel(logging.ERROR)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# `make test` runs pytest-xdist workers side by side (the smoke notebooks are mostly generation loops, which do not
# keep two cores busy); each worker then gets its share of the cores, and so do the notebook kernels it starts
# (they inherit OMP_NUM_THREADS), so that the workers never oversubscribe the machine.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_threads)
    import torch
    torch.set_num_threads(_threads)


@pytest.fixture(scope="session")
def smoke_dir(tmp_path_factory):
    "One run folder shared by the notebook tests (each runs its own notebook into it)."
    return tmp_path_factory.mktemp("smoke")



def _strings(obj):
    "Every string in a JSON value."
    if isinstance(obj, str): yield obj
    elif isinstance(obj, dict):
        for v in obj.values(): yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj: yield from _strings(v)


@pytest.fixture
def run_notebook(smoke_dir):
    "Execute one notebook through the runner with the smoke profile into `smoke_dir`; its results, common fields checked."
    import json
    from ortho_nbs.runner import reproduce

    def run(stem):
        s = reproduce("smoke", only=[stem], out=smoke_dir)
        res = json.loads((smoke_dir / "results" / f"{stem}.json").read_text()) if s["notebooks"][0]["results"] else None
        if res:
            assert res["provenance"]["profile"] == "smoke"
            assert res["provenance"]["git_commit"] is None or len(res["provenance"]["git_commit"]) >= 40
            assert all(c["verdict"] for c in res["claims"])
            absolute = [x for x in _strings(res) if x.startswith("/") or re.match(r"[A-Za-z]:\\", x)]
            assert not absolute, f"{stem}'s results name absolute paths: {absolute[:3]}"
        return res
    return run


# `make test` runs each test file on one pytest-xdist worker (--dist loadfile --no-loadscope-reorder), in collection
# order: the two notebook files first, so that each worker starts with one half of the smoke notebooks (test_notebooks.py
# and test_notebooks_b.py take about as long), then the longest of the others (a worker takes the next file as its
# current one runs out), so that the short unit-test files fill in at the end.
_FIRST = ["test_notebooks.py", "test_notebooks_b.py", "test_own_models.py", "test_check.py", "test_distributed.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_FIRST)}
    items.sort(key=lambda it: rank.get(it.path.name, len(rank)))
