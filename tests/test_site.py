"""The executable paper as a website (`make site`, site/build.py): built from the committed notebooks, never executed.

The build runs once per test session into a temporary folder. The checks: no build warnings, every notebook a page
in notebook order, every figure present, every internal link resolving, the scoreboard listing exactly the claims of
results/*.json (counted now, not hard-coded), math bundled (no network), page sizes; and, when Chromium is installed
(`make site-check` installs it), the home page, the scoreboard and one section page opened from disk, with screenshots
and checks that the figures load and the equations are typeset.
"""
import base64, json, os, re, shutil, subprocess, sys, time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import urlopen

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("myst_nb", reason="the site extra is not installed: pip install -e '.[site]' (make setup does)")

# Warnings that change nothing a reader sees; every other warning (a missing image, a broken cross-reference, an
# unknown document, a lexer failure...) fails test_build_has_no_warnings.
HARMLESS_WARNINGS = [r"\[myst\.header\]"]
MAX_PAGE_BYTES = 1_500_000      # one HTML page (images are separate files)
SECTION_PAGES = ["20_kfac", "10_ablation", "30_ogd", "40_transfer", "31_lmc", "21_spectra"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, str(ROOT / "site" / "build.py"), "--out", str(out), "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"site build failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    summary["html"] = Path(summary["html"])
    return summary


class Page(HTMLParser):
    "The ids, links, images, scripts and tables of one HTML page (stdlib parser: no extra dependency)."
    def __init__(self, path: Path):
        super().__init__(convert_charrefs=True)
        self.path, self.ids, self.links, self.images, self.scripts, self.styles = path, set(), [], [], [], []
        self.nav, self.score_rows, self.badges, self.files_rows = [], [], {}, []
        self._stack, self._in_nav, self._badge, self._in_files = [], 0, None, False
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        for k in ("id", "name"):
            if a.get(k): self.ids.add(a[k])
        if tag == "a" and a.get("href") is not None:
            self.links.append(a["href"])
            if self._in_nav: self.nav.append(a["href"])
        if tag == "img": self.images.append(a.get("src", ""))
        if tag == "script" and a.get("src"): self.scripts.append(a["src"])
        if tag == "link" and a.get("href"): self.styles.append(a["href"])
        if tag == "nav" and "bd-docs-nav" in cls: self._in_nav = 1
        elif tag == "nav" and self._in_nav: self._in_nav += 1
        if tag == "tr" and any(c.startswith("verdict-") for c in cls):
            self.score_rows.append((next(c[8:] for c in cls if c.startswith("verdict-")), a.get("data-notebook")))
        if tag == "span" and "verdict-count" in cls:
            self._badge = next(c[8:] for c in cls if c.startswith("verdict-") and c != "verdict-count")
        if tag == "table" and "results-files" in cls: self._in_files = True
        if tag == "tr" and self._in_files: self.files_rows.append("")

    def handle_endtag(self, tag):
        if tag == "nav" and self._in_nav: self._in_nav -= 1
        if tag == "table": self._in_files = False
        if tag == "span": self._badge = None

    def handle_data(self, data):
        if self._badge and data.strip().isdigit():
            self.badges[self._badge] = int(data.strip()); self._badge = None
        if self._in_files and self.files_rows: self.files_rows[-1] += data + " "


@pytest.fixture(scope="module")
def pages(site):
    return {p.name: Page(p) for p in sorted(site["html"].glob("*.html"))}


def results_claims():
    "Every claim in results/*.json right now (the scoreboard must list exactly these)."
    out = {}
    for p in sorted((ROOT / "results").glob("*.json")):
        d = json.loads(p.read_text())
        if isinstance(d, dict) and "claims" in d: out[p.stem] = d
    return out


def test_build_has_no_warnings(site):
    matter = [w for w in site["warnings"] if not any(re.search(h, w) for h in HARMLESS_WARNINGS)]
    assert not matter, "the site build printed warnings:\n" + "\n".join(matter)
    assert site["seconds"] < 300, f"the site build took {site['seconds']} s"


def test_every_notebook_is_a_page_in_notebook_order(site, pages):
    notebooks = sorted(p.stem for p in (ROOT / "nbs").glob("*.ipynb") if not p.name.startswith("_"))
    for nb in notebooks:
        assert f"{nb}.html" in pages, f"nbs/{nb}.ipynb has no page"
    assert "scoreboard.html" in pages
    # the home page is index.ipynb, and the left-hand navigation lists the scoreboard first, then the notebooks in order
    home = pages["index.html"]
    nav = [urlsplit(h).path.removesuffix(".html") for h in home.nav if not h.startswith("#")]
    nav = [n for n in nav if n and n != "index"]
    assert nav[0] == "scoreboard", f"the scoreboard is not the first page after the introduction: {nav[:3]}"
    numbered = [n for n in nav if re.match(r"\d\d_", n)]   # (the paper pages sit between them)
    assert numbered == sorted(numbered), f"navigation out of notebook order: {numbered}"
    papers = sorted(f"papers/{p.stem}" for p in (ROOT / "papers").glob("*.md"))
    assert len(papers) == 3 and all(f"{p}.html" in {str(x.relative_to(site["html"])) for x in site["html"].rglob("*.html")} for p in papers)
    assert set(nav) == set(notebooks) - {"index"} | {"scoreboard"} | set(papers), f"navigation {nav} vs notebooks {notebooks}"
    # each paper's page comes first in its group, right before the paper's first notebook
    for p, first in zip(papers, ["10_ablation", "20_kfac", "40_transfer"]):
        assert nav.index(p) == nav.index(first) - 1, (p, nav)
    assert nav[-1] == "cli" or "cli" not in notebooks, "cli (plumbing) should come last"
    # each notebook page keeps its prose and has its provenance footer
    for nb in notebooks:
        text = (site["html"] / f"{nb}.html").read_text(encoding="utf-8")
        assert re.search(r'class="(provenance admonition|admonition provenance)"', text), f"{nb}.html has no provenance footer"


def test_every_figure_exists(site, pages):
    html = site["html"]
    for name, page in pages.items():
        for src in page.images:
            parts = urlsplit(src)
            if parts.scheme or src.startswith("data:"): continue
            f = (html / unquote(parts.path)).resolve()
            assert f.is_file() and f.stat().st_size > 0, f"{name}: image {src} is missing"
    for nb, n in site["n_images"].items():     # every figure stored in a notebook's outputs is on its page
        shown = [s for s in pages[f"{nb}.html"].images if s.startswith("_images/")]
        assert len(shown) == n, f"{nb}: {n} figures in the notebook's outputs, {len(shown)} on the page"


def test_every_internal_link_resolves(site, pages):
    html = site["html"]
    broken = []
    for name, page in pages.items():
        for href in page.links + page.images + page.scripts + page.styles:
            parts = urlsplit(href)
            if parts.scheme or href.startswith("//"): continue    # external links are not followed
            target = (html / name).parent / unquote(parts.path) if parts.path else html / name
            target = target.resolve()
            if not target.exists():
                broken.append(f"{name}: {href} (no such file)"); continue
            if parts.fragment and target.suffix == ".html":
                ids = pages[target.name].ids if target.parent == html.resolve() and target.name in pages else Page(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{name}: {href} (no id {parts.fragment!r})")
    assert not broken, "broken internal links:\n" + "\n".join(broken)


def test_scoreboard_lists_every_claim(site, pages):
    results = results_claims()
    total = sum(len(d["claims"]) for d in results.values())
    board = pages["scoreboard.html"]
    assert len(board.score_rows) == total == site["n_claims"], \
        f"scoreboard rows {len(board.score_rows)}, claims in results/*.json {total}"
    for nb, d in results.items():
        assert sum(1 for _, n in board.score_rows if n == nb) == len(d["claims"]), nb
    from collections import Counter
    sys.path.insert(0, str(ROOT / "site"))
    from build import verdict_class, is_evidence
    every = [c for d in results.values() for c in d["claims"]]
    assert Counter(k for k, _ in board.score_rows) == Counter(verdict_class(c["verdict"]) for c in every)
    # the badges at the top count the papers' claims that are evidence only (tested, not by construction)
    evidence = Counter(verdict_class(c["verdict"]) for c in every if is_evidence(c))
    for k, n in evidence.items():
        assert board.badges.get(k) == n, f"count of {k!r} at the top: {board.badges.get(k)} vs {n}"
    assert sum(board.badges.values()) == sum(evidence.values())
    # paper claims come first: every row before the first non-paper row is a paper claim
    text = (site["html"] / "scoreboard.html").read_text(encoding="utf-8")
    kinds = re.findall(r'<tr id="[^"]+" class="verdict-[a-z-]+" data-notebook="[^"]+" data-kind="([a-z]+)"', text)
    assert len(kinds) == total and kinds[:kinds.count("paper")] == ["paper"] * kinds.count("paper")
    # each results file, with its commit and profile
    files = " ".join(board.files_rows)
    for nb, d in results.items():
        p = d["provenance"]
        assert f"results/{nb}.json" in files and p["git_commit"][:10] in files and p["profile"] in files, nb
    # the home page sends the reader to it, and each row links to its notebook's claims table (checked to resolve above)
    assert "scoreboard.html" in pages["index.html"].links
    assert any("#claims-" in h for h in board.links)


def test_math_is_bundled_and_pages_are_small(site, pages):
    html = site["html"]
    for name, page in pages.items():
        external = [s for s in page.scripts + page.styles if urlsplit(s).scheme in ("http", "https") or s.startswith("//")]
        assert not external, f"{name} loads from the network: {external}"
    mj = [s for p in pages.values() for s in p.scripts if "mathjax" in s.lower()]
    assert mj, "no page loads MathJax"
    assert all((html / urlsplit(s).path).is_file() for s in mj), "MathJax is not in the site"
    with_math = [n for n, p in pages.items() if 'class="math' in (html / n).read_text(encoding="utf-8")]
    assert with_math, "no page has an equation"
    sizes = {n: (html / n).stat().st_size for n in pages}
    largest = max(sizes, key=sizes.get)
    print(f"\nlargest page: {largest} {sizes[largest] / 1024:.0f} KiB; site {site['site_bytes'] / 2**20:.1f} MiB; "
          f"build {site['seconds']} s")
    assert sizes[largest] < MAX_PAGE_BYTES, f"{largest} is {sizes[largest]} bytes"


# ------------------------------------------------------------------------------------------------ in a browser
def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name): return shutil.which(name)
    return None


class Browser:
    "Headless Chromium driven over the DevTools protocol (loopback only), with a fresh profile."
    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-port=0", "--window-size=1280,1000", "--hide-scrollbars"]

    def __init__(self, exe: str, profile: Path):
        import websocket
        self.proc = subprocess.Popen([exe, *self.FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        t0 = time.time()
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.time() - t0 > 60:
                self.close(); raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=120, suppress_origin=True)
        self.n = 0
        self.call("Emulation.setDeviceMetricsOverride", width=1280, height=1000, deviceScaleFactor=1, mobile=False)

    def call(self, method, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                if "error" in msg: raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r: raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def open(self, url):
        self.call("Page.navigate", url=url)
        t0 = time.time()
        while self.evaluate("document.readyState") != "complete" or self.evaluate("location.href") != url:
            if time.time() - t0 > 60: raise RuntimeError(f"{url} did not load")
            time.sleep(0.1)

    def screenshot(self, path: Path):
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self):
        try: self.ws.close()
        except Exception: pass
        self.proc.terminate()
        try: self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired: self.proc.kill()


INSPECT = r"""(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })));
  const main = document.querySelector('main') || document.body;
  const skip = 'pre, code, script, style, mjx-container, .highlight';
  const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT,
      {acceptNode: n => n.parentElement && n.parentElement.closest(skip) ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT});
  let text = ''; while (walker.nextNode()) text += walker.currentNode.data;
  const maths = Array.from(main.querySelectorAll('.math'));
  return {
    title: document.title,
    mathjax: !!(window.MathJax && MathJax.version),
    images: imgs.map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0})),
    math: maths.length,
    typeset: maths.filter(m => m.querySelector('mjx-container svg')).length,
    errors: main.querySelectorAll('mjx-merror, [data-mjx-error]').length,
    raw_dollars: text.includes('$$'),
    raw_delims: /\\\[|\\\]|\\\(/.test(text),
    nav: Array.from(document.querySelectorAll('nav.bd-docs-nav a')).length,
    rows: document.querySelectorAll('table.scoreboard tbody tr[data-kind]').length,
    claims_tables: main.querySelectorAll('table.claims-table').length,
    code_overflow: Array.from(main.querySelectorAll('div.cell_input pre')).filter(p => p.scrollWidth > p.clientWidth + 1).length,
    uncaptioned: Array.from(main.querySelectorAll("img[src^='_images/']")).filter(i => !(i.closest('figure') && i.closest('figure').querySelector('figcaption'))).length,
    truncated: Array.from(main.querySelectorAll('table.claims-table td, table.scoreboard td'))
                    .filter(td => /(\.\.\.|…)$/.test(td.innerText.trim()) && !td.querySelector('details')).length,
  };
})()"""


def test_pages_in_chromium(site, pages, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium; `make site-check` installs it)")
    pytest.importorskip("websocket", reason="websocket-client (in the site extra) drives Chromium")
    shots = Path(os.environ.get("ORTHO_SITE_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    section = next((s for s in SECTION_PAGES if f"{s}.html" in pages), None)
    assert section, "no section page to look at"
    browser = Browser(exe, tmp_path / "profile")
    try:
        seen = {}
        for name in ("index", "scoreboard", section):
            browser.open((site["html"] / f"{name}.html").resolve().as_uri())
            seen[name] = info = browser.evaluate(INSPECT)
            browser.screenshot(shots / f"{name}.png")
            assert info["nav"] > 5, f"{name}: no navigation"
            bad = [i["src"] for i in info["images"] if not i["ok"]]
            assert not bad, f"{name}: images that did not load: {bad}"
            assert not info["raw_dollars"], f"{name}: raw $$ left in the rendered page"
            assert info["typeset"] == info["math"], f"{name}: {info['math'] - info['typeset']} of {info['math']} equations not typeset"
            assert not info["raw_delims"], rf"{name}: raw \[ or \( left in the rendered page"
            assert info["errors"] == 0, f"{name}: MathJax errors"
        # the section page: equations typeset by the bundled MathJax, figures loaded; screenshots at both
        info = seen[section]
        assert info["mathjax"] and info["math"] > 0, f"{section}: no typeset equation ({info})"
        assert sum(i["src"].startswith("_images/") for i in info["images"]) >= 1, f"{section}: no figure"
        for what, sel in (("equation", "main .math"), ("figure", "main img[src^='_images/']"), ("claims", "main [id^='claims-']")):
            browser.evaluate(f"document.querySelector(\"{sel}\").scrollIntoView({{block: 'center'}}); "
                             "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
            browser.screenshot(shots / f"{section}-{what}.png")
        assert seen["scoreboard"]["rows"] == site["n_claims"]
        assert seen[section]["claims_tables"] >= 2, f"{section}: the declared and the decided claims tables are not on the page"
        for name, info in seen.items():
            assert info["truncated"] == 0, f"{name}: {info['truncated']} claims cells end in '...'"
            assert info["code_overflow"] == 0, f"{name}: {info['code_overflow']} code cells are wider than the column at 1280 px"
            assert info["uncaptioned"] == 0, f"{name}: {info['uncaptioned']} figures without a caption"
    finally:
        browser.close()
    for p in shots.glob("*.png"):
        assert p.stat().st_size > 10_000, f"{p} looks empty"
    print(f"\nscreenshots in {shots}")
