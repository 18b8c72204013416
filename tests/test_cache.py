"""The cache heals (issue #17, item 4): damaged entries are rebuilt with a warning naming them; concurrent builders leave one.

Cheap stand-ins replace the 20-60 s dequantisation: a tiny random model written by `save_model`."""""
import json, os, re, subprocess, sys, textwrap, time
from pathlib import Path
import pytest, torch
import ortho_nbs.models as M
from ortho_nbs.models import CacheWarning, entry_problem, load_model, save_model, tiny_model, tiny_tokenizer

NAME = "smollm2-135m-instruct"
FAKE_SHA = "ab" * 32


@pytest.fixture
def fake_packaged(tmp_path, monkeypatch):
    "load_model(NAME) against a cache in tmp_path, built from a tiny model instead of the GGUF; counts the builds."
    monkeypatch.setenv("ORTHO_NBS_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "fake.gguf"; gguf.write_bytes(b"GGUF stand-in")
    builds = []
    def dequantise(name, gguf, sha, target): builds.append(target); save_model(tiny_model(), tiny_tokenizer(), target)
    monkeypatch.setattr(M, "packaged_gguf", lambda name: (gguf, FAKE_SHA))
    monkeypatch.setattr(M, "_dequantise", dequantise)
    return tmp_path / "cache" / "models" / f"{NAME}-{FAKE_SHA[:16]}", builds


def _logits(model):
    with torch.no_grad(): return model(torch.tensor([[5, 9, 13, 20]])).logits


def test_truncated_model_cache_is_rebuilt_with_a_warning(fake_packaged):
    folder, builds = fake_packaged
    model, _ = load_model(NAME, progress=False)
    before = _logits(model); del model       # its weights are memory-mapped from the file truncated below
    assert len(builds) == 1 and entry_problem(folder) is None and (folder / "manifest.json").exists()
    load_model(NAME, progress=False); assert len(builds) == 1                   # a good entry is reused
    weights = folder / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)                          # the damage
    with pytest.warns(CacheWarning) as w: again, _ = load_model(NAME, progress=False)
    assert len(w) == 1 and str(folder) in str(w[0].message) and "model.safetensors" in str(w[0].message)
    assert "\n" not in str(w[0].message) and len(builds) == 2
    assert torch.equal(before, _logits(again)) and entry_problem(folder) is None
    assert sorted(p.name for p in folder.parent.iterdir()) == [f".{folder.name}.lock", folder.name]   # nothing half-built left


def test_missing_manifest_or_file_is_rebuilt(fake_packaged):
    folder, builds = fake_packaged
    load_model(NAME, progress=False)
    (folder / "config.json").unlink()
    with pytest.warns(CacheWarning, match=re.escape(f"{folder} is missing config.json")): load_model(NAME, progress=False)
    (folder / "manifest.json").write_text("{not json")
    with pytest.warns(CacheWarning, match="unreadable manifest"): load_model(NAME, progress=False)
    assert len(builds) == 3


def test_touched_file_is_rehashed_and_kept(fake_packaged):
    folder, builds = fake_packaged
    load_model(NAME, progress=False)
    os.utime(folder / "model.safetensors", ns=(10**18, 10**18))                 # same bytes, new time (a copy, a touch)
    load_model(NAME, progress=False)
    assert len(builds) == 1
    assert json.loads((folder / "manifest.json").read_text())["files"]["model.safetensors"]["mtime_ns"] == 10**18


def test_entry_from_before_manifests_is_adopted_when_whole(fake_packaged):
    folder, builds = fake_packaged
    save_model(tiny_model(), tiny_tokenizer(), folder)                          # as the old code left it: no manifest
    load_model(NAME, progress=False)
    assert builds == [] and entry_problem(folder) is None                       # adopted: manifest written, not rebuilt
    (folder / "manifest.json").unlink()
    w = folder / "model.safetensors"; os.truncate(w, w.stat().st_size - 100)    # an old entry that is damaged
    with pytest.warns(CacheWarning, match=re.escape(str(folder))): load_model(NAME, progress=False)
    assert len(builds) == 1 and entry_problem(folder) is None


def test_assembled_gguf_is_rebuilt_when_its_hash_differs(tmp_path, monkeypatch):
    import hashlib
    monkeypatch.setenv("ORTHO_NBS_CACHE", str(tmp_path / "cache"))
    data = b"chunk" * 1000; sha = hashlib.sha256(data).hexdigest(); target = tmp_path / "cache" / "gguf" / "m.gguf"
    calls = []
    def build(tmp): calls.append(tmp); tmp.write_bytes(data)
    assert M._cached_file(target, build, sha, "chunks").read_bytes() == data
    M._cached_file(target, build, sha, "chunks"); assert len(calls) == 1
    os.truncate(target, 100)
    with pytest.warns(CacheWarning, match=re.escape(str(target))): M._cached_file(target, build, sha, "chunks")
    assert target.read_bytes() == data and len(calls) == 2


SCRIPT = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    import ortho_nbs.models as M
    tmp = Path(sys.argv[1]); gguf = tmp / "fake.gguf"
    def dequantise(name, gguf, sha, target):
        with open(tmp / "builds.log", "a") as f: f.write(f"{os.getpid()}\\n")
        time.sleep(1.0)                                      # a slow build: the other process arrives meanwhile
        M.save_model(M.tiny_model(), M.tiny_tokenizer(), target)
    M.packaged_gguf = lambda name: (gguf, "ab" * 32)
    M._dequantise = dequantise
    (tmp / f"ready-{os.getpid()}").touch()
    t0 = time.time()
    while len(list(tmp.glob("ready-*"))) < 2 and time.time() - t0 < 60: time.sleep(0.01)   # start together
    model, tok = M.load_model("smollm2-135m-instruct", progress=False)
    print(model.ortho_source["path"], flush=True)
''')


def test_two_processes_building_the_same_entry_leave_one_good_entry(tmp_path):
    (tmp_path / "fake.gguf").write_bytes(b"GGUF stand-in")
    env = dict(os.environ, ORTHO_NBS_CACHE=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    folder = tmp_path / "cache" / "models" / f"{NAME}-{FAKE_SHA[:16]}"
    assert [o[0].strip() for o in outs] == [str(folder)] * 2                   # both loaded the same entry
    assert len((tmp_path / "builds.log").read_text().split()) == 1              # built once: the other used it
    assert entry_problem(folder) is None
    assert sorted(p.name for p in folder.parent.iterdir()) == [f".{folder.name}.lock", folder.name]


# ---- the same for 30_ogd's cached fine-tunes ----

def _finetunes(**kw):
    from ortho_nbs.training import linear_modules, lm_batches
    from ortho_nbs.ogd import libortho_finetunes
    m, tok = tiny_model(), tiny_tokenizer()
    mods = linear_modules(m, include=["mlp.down_proj"], layers=[3])
    fb = lm_batches(tok, ["the quick brown fox jumps over the lazy dog"] * 2, seq_len=12, batch_size=2)
    return libortho_finetunes(m, tok, ["abc 1-2-3"] * 2, ["the lazy dog"] * 2, fb, mods, steps=2, batch_size=2,
                              progress=False, **kw)


def test_finetune_cache_heals(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTHO_NBS_CACHE", str(tmp_path))
    first = _finetunes()
    path = Path(first["cached"]); folder = path.parent
    assert not first["loaded"] and path.name == "runs.pt" and entry_problem(folder) is None
    assert _finetunes()["loaded"]
    os.truncate(path, path.stat().st_size // 2)
    with pytest.warns(CacheWarning, match=re.escape(str(folder))): again = _finetunes()
    assert not again["loaded"] and entry_problem(folder) is None
    for label in ("plain", "ogd"):
        for n, d in first[label]["delta"].items(): assert torch.equal(d, again[label]["delta"][n])


def test_finetune_cache_from_before_manifests_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTHO_NBS_CACHE", str(tmp_path))
    first = _finetunes()
    folder = Path(first["cached"]).parent
    legacy = folder.with_name(folder.name + ".pt")
    os.replace(folder / "runs.pt", legacy); import shutil; shutil.rmtree(folder)   # the old layout: one .pt file
    again = _finetunes()
    assert again["loaded"] and not legacy.exists() and entry_problem(folder) is None   # moved into an entry, not re-run
