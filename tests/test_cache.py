"""The cache heals (issue #17, item 4): damaged entries are rebuilt with a warning naming them; concurrent builders leave one.

Cheap stand-ins replace the 20-60 s dequantisation: a tiny random model written by `save_model`."""""
import json, os, re, shutil, subprocess, sys, textwrap, time
from pathlib import Path
import pytest, torch
import ortho_nbs.cache as C
import ortho_nbs.models as M
from ortho_nbs.cache import CacheWarning, entry_problem
from ortho_nbs.models import load_model, save_model, tiny_model, tiny_tokenizer

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
    assert C.cached_file(target, build, sha, "chunks").read_bytes() == data
    C.cached_file(target, build, sha, "chunks"); assert len(calls) == 1
    os.truncate(target, 100)
    with pytest.warns(CacheWarning, match=re.escape(str(target))): C.cached_file(target, build, sha, "chunks")
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


# ---- bit rot, a full hash once per reproduce run, `ortho-nbs cache verify`, a read-only cache ----

LEDGER = "ORTHO_NBS_CACHE_VERIFIED"      # where `ortho-nbs reproduce` keeps the entries it hashed in full


def _entry(cache: Path, name: str = "e") -> Path:
    "A small cache entry (1000 bytes of x) under cache/models."
    return C.cached_entry(cache / "models" / name, lambda t: (t.mkdir(), (t / "w.bin").write_bytes(b"x" * 1000)), "a test source")


def _rot(path: Path, data: bytes):
    "Change a file's bytes keeping its size and modification time (what bit rot or a careless copy does)."
    st = path.stat(); path.write_bytes(data); os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_bit_rot_is_found_by_the_full_hash_of_a_reproduce_run(fake_packaged, tmp_path, monkeypatch):
    folder, builds = fake_packaged
    load_model(NAME, progress=False)
    weights = folder / "model.safetensors"
    _rot(weights, weights.read_bytes()[:-64] + b"\xff" * 64)
    load_model(NAME, progress=False); assert len(builds) == 1      # outside a run: the quick size/time check passes it
    monkeypatch.setenv(LEDGER, str(tmp_path / "ledger"))            # inside `ortho-nbs reproduce`
    with pytest.warns(CacheWarning, match=re.escape(f"{folder} has model.safetensors changed since it was written")):
        load_model(NAME, progress=False)
    assert len(builds) == 2 and entry_problem(folder, full=True) is None
    load_model(NAME, progress=False); assert len(builds) == 2       # hashed once per run, not on every load
    assert (tmp_path / "ledger").read_text().splitlines() == [str(folder)]


def test_reproduce_hashes_each_cache_entry_it_uses(tmp_path, monkeypatch):
    "A notebook run by `ortho-nbs reproduce` that uses a bit-rotted entry gets it rebuilt."
    import nbformat
    from ortho_nbs.runner import reproduce
    cache = tmp_path / "cache"; monkeypatch.setenv("ORTHO_NBS_CACHE", str(cache))
    e = _entry(cache); _rot(e / "w.bin", b"y" * 1000)
    root = tmp_path / "proj"; (root / "nbs").mkdir(parents=True); (root / "settings.ini").write_text("[smoke]\n")
    nb = nbformat.v4.new_notebook(metadata=dict(kernelspec=dict(name="python3", display_name="python3", language="python")))
    nb.cells = [nbformat.v4.new_code_cell("profile = 'paper'\nout_dir = None", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("from pathlib import Path\nfrom ortho_nbs.cache import cached_entry\n"
                                          f"cached_entry(Path({str(e)!r}), lambda t: (t.mkdir(), (t / 'w.bin').write_bytes(b'x' * 1000)), 'src')")]
    nbformat.write(nb, root / "nbs" / "01_demo.ipynb")
    reproduce("smoke", root=root, out=tmp_path / "run", progress_s=0)
    assert (e / "w.bin").read_bytes() == b"x" * 1000 and LEDGER not in os.environ


def test_cache_verify_command(tmp_path, monkeypatch, capsys):
    from ortho_nbs.runner import main
    monkeypatch.setenv("ORTHO_NBS_CACHE", str(tmp_path))
    good, bad = _entry(tmp_path, "good"), _entry(tmp_path, "bad")
    assert main(["cache", "verify"]) == 0 and "2 entries, 0 damaged" in capsys.readouterr().out
    _rot(bad / "w.bin", b"z" * 1000)
    assert main(["cache", "verify"]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED  {bad}: has w.bin changed since it was written (its SHA-256 differs)" in out and f"ok       {good}" in out
    assert main(["cache", "verify", "--repair"]) == 0 and not bad.exists() and good.exists()
    assert _entry(tmp_path, "bad") and (bad / "w.bin").read_bytes() == b"x" * 1000      # its next use rebuilds it


def test_cache_verify_command_hashes_the_assembled_ggufs(tmp_path, monkeypatch, capsys):
    import hashlib, ortho_nbs.models as M
    from ortho_nbs.runner import main
    monkeypatch.setenv("ORTHO_NBS_CACHE", str(tmp_path))
    f = tmp_path / "gguf" / "m.gguf"; f.parent.mkdir(); f.write_bytes(b"assembled")
    sha = hashlib.sha256(b"assembled").hexdigest()
    monkeypatch.setattr(M, "cached_ggufs", lambda: [(f, sha)])
    assert main(["cache", "verify"]) == 0 and f"ok       {f}" in capsys.readouterr().out
    f.write_bytes(b"assembleD")
    assert main(["cache", "verify"]) == 1
    assert f"DAMAGED  {f}: does not have the SHA-256 {sha[:16]}... it should" in capsys.readouterr().out
    assert main(["cache", "verify", "--repair"]) == 0 and not f.exists()


def _read_only(cache: Path, code: str) -> subprocess.CompletedProcess:
    "Run `code` in a Python whose view of `cache` is read-only: a read-only bind mount (root), else chmod."
    env = dict(os.environ, ORTHO_NBS_CACHE=str(cache), ORTHO_NBS_CACHE_VERIFIED=str(cache.parent / "ledger"))
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(cache)], check=True)
        try: return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        finally: subprocess.run(["chmod", "-R", "u+w", str(cache)], check=True)
    if not shutil.which("unshare"): pytest.skip("running as root without unshare: no way to make a read-only folder")
    r = subprocess.run(["unshare", "-m", "sh", "-c", 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && exec "$2" -c "$3"',
                        "sh", str(cache), sys.executable, code], env=env, capture_output=True, text=True, timeout=120)
    if "mount" in r.stderr and r.returncode and "Traceback" not in r.stderr: pytest.skip(f"cannot mount read-only here: {r.stderr[:200]}")
    return r


PROBE = "import os\ntry: open(os.path.join(os.environ['ORTHO_NBS_CACHE'], 'probe'), 'w'); print('WRITABLE')\nexcept OSError: pass\n"


def test_read_only_cache_with_good_entries_just_works(tmp_path, monkeypatch):
    import hashlib
    cache = tmp_path / "cache"; monkeypatch.setenv("ORTHO_NBS_CACHE", str(cache))
    e = _entry(cache)
    (cache / "data.bin").write_bytes(b"data")                       # hashed for the first time: its memo cannot be written
    r = _read_only(cache, PROBE + textwrap.dedent(f"""
        from pathlib import Path
        import hashlib, ortho_nbs.cache as C
        print('ENTRY', C.cached_entry(Path({str(e)!r}), lambda t: 1 / 0, 'nowhere'))
        print('SHA', C.file_sha256(Path({str(cache / 'data.bin')!r})) == hashlib.sha256(b'data').hexdigest())"""))
    assert r.returncode == 0 and "WRITABLE" not in r.stdout, r.stderr[-3000:]
    assert f"ENTRY {e}" in r.stdout and "SHA True" in r.stdout
    assert sorted(p.name for p in cache.iterdir()) == ["data.bin", "models"]     # nothing written: no memo, no lock


def test_read_only_cache_with_a_damaged_entry_says_which_and_how_to_fix_it(tmp_path, monkeypatch):
    cache = tmp_path / "cache"; monkeypatch.setenv("ORTHO_NBS_CACHE", str(cache))
    e = _entry(cache)
    os.truncate(e / "w.bin", 10)
    r = _read_only(cache, PROBE + textwrap.dedent(f"""
        from pathlib import Path
        import ortho_nbs.cache as C
        try: C.cached_entry(Path({str(e)!r}), lambda t: 1 / 0, 'the GGUF')
        except C.CacheError as err: print('CacheError:', err)"""))
    assert r.returncode == 0 and "WRITABLE" not in r.stdout, r.stderr[-3000:]
    msg = r.stdout.split("CacheError: ", 1)[1]
    assert msg.startswith(f"ortho-nbs cache: {e} has w.bin of 10 bytes where 1000 were written, and it cannot be rebuilt")
    assert "set ORTHO_NBS_CACHE to a writable folder" in msg and "the GGUF" in msg
