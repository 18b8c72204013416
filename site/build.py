"""Build the executable paper as a static website, from the committed, executed notebooks (never re-executed).

    python site/build.py                # -> _site/html/index.html  (what `make site` runs)
    python site/build.py --out DIR      # build somewhere else (the tests build into a temporary folder)
    python site/build.py --json         # print a machine-readable summary (warnings, pages, sizes, seconds)

Steps: copy every notebook of `nbs/` into a staging folder, adjusted for reading (nbdev directives and `#| hide`
cells dropped, an anchor before each claims table, a provenance footer from `results/<nb>.json`, very long text
outputs shortened), write the scoreboard page from `results/*.json`, then run Sphinx with myst-nb (execution off)
and the book theme with `site/conf.py`. Nothing in `nbs/`, `results/` or `figures/` is modified.
"""
from __future__ import annotations

import argparse
import copy
import html
import json
import re
import shutil
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "_site"

def _numbered(pattern: str) -> list[str]:
    "The stems of the notebooks nbs/<pattern>_*.ipynb, in order."
    return sorted(p.stem for p in (ROOT / "nbs").glob(f"{pattern}_*.ipynb"))

# Notebooks in the left-hand navigation, grouped by their numbers; anything in nbs/ not named here goes under "More" (cli last).
NAV_GROUPS = [
    ("Results", ["scoreboard"]),
    ("Foundations", _numbered("0[0-9]")),                                          # every plumbing notebook, in order
    ("Paper 1: targeted ablation", ["papers/1_targeted_ablation", *_numbered("1[0-9]")]),
    ("Paper 2: LibOrtho v2.0", ["papers/2_libortho", *_numbered("[23][0-9]")]),
    ("Paper 3: representation transfer", ["papers/3_representation_transfer", *_numbered("4[0-9]")]),
    ("At the papers' scale", _numbered("5[0-9]")),
]
LAST = ["cli"]   # plumbing: kept, but at the end of the navigation
PAPERS = {"1": "Non-gradient targeted ablation", "2": "LibOrtho v2.0", "3": "Linear Representation Transferability"}

MAX_TEXT_LINES = 60      # a text output longer than this is shortened to its head and tail on the page
KEEP_HEAD, KEEP_TAIL = 40, 10

# verdict slug (CSS class) and label; "other" catches anything a results file of an older schema says
VERDICTS = [("holds", "holds"), ("partly", "partly"), ("does-not-hold", "does not hold"), ("underpowered", "underpowered"),
            ("not-tested", "not tested"), ("other", "other")]
KIND_GROUPS = [("precondition", "Preconditions", "what must hold for a paper claim to be decidable"),
               ("control", "Controls", "comparisons that show an effect is the method's"),
               ("extension", "Extensions", "ours, not in the papers"),
               ("check", "Checks", "tooling and method checks: loading, timing, exactness on small cases")]
# the figure each section page shows at the top, beside its verdicts (else the last figure its results list)
HEADLINE = {"10_ablation": "10_pareto", "20_kfac": "20_curvature_prediction", "21_spectra": "21_hessian_density",
            "30_ogd": "30_tradeoff", "31_lmc": "31_lmc", "40_transfer": "40_retention"}
SAVEFIG = re.compile(r"savefig\(\s*[\w.]+\s*,\s*[\"']([^\"']+)[\"']")
FOLD_CHARS = 160         # a scoreboard cell longer than this is folded (its first words, then the rest on a click)


def verdict_class(v: str) -> str:
    v = (v or "").strip().lower()
    if v in ("holds", "partly", "underpowered"): return v
    if v.startswith("does not hold"): return "does-not-hold"
    if v == "not tested": return "not-tested"
    return "other"


def claim_kind(c: dict) -> str:
    "A claim's kind (results written before claims had kinds count as paper claims)."
    return str(c.get("kind") or "paper")


def is_evidence(c: dict) -> bool:
    "A paper claim that was tested and does not hold by construction: what the headline counts."
    return claim_kind(c) == "paper" and verdict_class(c.get("verdict", "")) != "not-tested" and c.get("diagnosis") != "construction"


def claim_row_id(nb: str, c: dict) -> str:
    "The HTML id of a claim's scoreboard row."
    from docutils.nodes import make_id
    return make_id(f"claim-{nb}-{c.get('id') or c.get('number') or c.get('claim', '')[:40]}")


def claims_anchor(nb: str) -> str:
    "The HTML id of the anchor placed just before a notebook's claims table."
    from docutils.nodes import make_id
    return make_id(f"claims-{nb}")


# --------------------------------------------------------------------------------------------------- inputs
def notebook_order(nbs_dir: Path) -> list[str]:
    "Page names in navigation order: index, the grouped notebooks, any others (sorted), cli last."
    present = sorted(p.stem for p in nbs_dir.glob("*.ipynb") if not p.name.startswith("_"))
    named = [n for _, g in NAV_GROUPS for n in g]
    rest = [n for n in present if n not in named and n not in LAST and n != "index"]
    order = ["index"] + [n for n in named if n in present or n == "scoreboard"] + rest + [n for n in LAST if n in present]
    return order


def load_results(results_dir: Path) -> dict[str, dict]:
    "{notebook: results dict} for every results/*.json that has claims (paper_summary.json has none)."
    out = {}
    for p in sorted(results_dir.glob("*.json")):
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise SystemExit(f"site: {p} is not valid JSON ({e}); is a run still writing it?")
        if isinstance(d, dict) and "claims" in d:
            out[p.stem] = d
    return out


def _git(*args) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def notebook_commits(names: list[str]) -> dict[str, tuple[str, str, bool]]:
    "{nb: (short commit, date, modified in the working tree)} of the last commit that touched nbs/<nb>.ipynb."
    dirty = set()
    for line in _git("status", "--porcelain", "--", "nbs").splitlines():
        m = re.search(r"nbs/([^/]+)\.ipynb", line)
        if m: dirty.add(m.group(1))
    out = {}
    for n in names:
        log = _git("log", "-1", "--format=%h %cs", "--", f"nbs/{n}.ipynb").split()
        out[n] = (log[0] if log else "", log[1] if len(log) > 1 else "", n in dirty)
    return out


def title_of(nb: dict) -> str:
    for c in nb["cells"]:
        if c["cell_type"] == "markdown":
            for line in "".join(c["source"]).splitlines():
                if line.startswith("# "): return line[2:].strip()
    return ""


def paper_and_section(title: str) -> tuple[str, str]:
    "'Paper 2, §3.2: K-FAC ...' -> ('Paper 2', '§3.2 K-FAC ...'); 'Models: ...' -> ('tooling', 'Models')."
    m = re.match(r"Paper\s+(\d+)\s*(?:,\s*(§[^:]+))?\s*:\s*(.*)", title)
    if m:
        sec = " ".join(x for x in (m.group(2), m.group(3)) if x).strip()
        return f"Paper {m.group(1)}", sec
    return "tooling", (title.split(":")[0].strip("` ") if title else "")


# --------------------------------------------------------------------------------------------------- staging
def _cell(kind: str, text: str, cid: str) -> dict:
    c = {"cell_type": kind, "id": cid, "metadata": {}, "source": text}
    if kind == "code": c.update(outputs=[], execution_count=None)
    return c


def _shorten(text: str, where: str) -> str:
    lines = text.splitlines(keepends=True)
    if len(lines) <= MAX_TEXT_LINES: return text
    cut = len(lines) - KEEP_HEAD - KEEP_TAIL
    return "".join(lines[:KEEP_HEAD] + [f"... [{cut} lines not shown here; the full output is in {where}] ...\n"] + lines[-KEEP_TAIL:])


def figure_caption(name: str, figures_dir: Path, heading: str = "") -> str:
    "A figure's caption (MyST): what it is, where it came from (its JSON sidecar's provenance), links to the SVG and sidecar."
    prov = {}
    side = figures_dir / f"{name}.json"
    if side.exists():
        try: prov = json.loads(side.read_text()).get("provenance", {})
        except json.JSONDecodeError: pass
    models = ", ".join(str(m.get("name", "?")) for m in prov.get("models", [])) or "-"
    what = f"{heading}. " if heading else ""
    return (f"**Figure `{name}`.** {what}Profile {prov.get('profile', '?')}, {models}, commit "
            f"`{str(prov.get('git_commit', ''))[:10]}`, {str(prov.get('finished', ''))[:10]}. "
            f"[SVG](figures/{name}.svg) · [provenance](figures/{name}.json)")


def at_a_glance(name: str, results: dict, figures_dir: Path) -> str | None:
    "The box a section page opens with: its verdicts (from its results file) and its headline figure."
    from ortho_nbs.provenance import ClaimsTable
    claims = results.get("claims") or []
    if not claims or any("id" not in c for c in claims): return None     # results of an older schema: no box
    figs = [f for f in results.get("figures", []) if (figures_dir / f"{f}.png").exists()]
    head = HEADLINE.get(name) if HEADLINE.get(name) in figs else (figs[-1] if figs else None)
    counts = {}
    for c in claims: counts[c.get("verdict", "?")] = counts.get(c.get("verdict", "?"), 0) + 1
    line = ", ".join(f"{v} {k}" for k, v in counts.items())
    table = ClaimsTable(claims)._repr_html_()
    fig = (f"\n```{{figure}} figures/{head}.png\n:width: 100%\n\n{figure_caption(head, figures_dir)}\n```\n" if head else "")
    return (f":::{{admonition}} At a glance: {len(claims)} claims ({line})\n:class: tip at-a-glance\n\n"
            f"Decided by the rules declared below, from `results/{name}.json`; the same table closes the page "
            f"([claims](#{claims_anchor(name)})).\n\n```{{raw}} html\n<details class=\"glance\"><summary>the verdicts</summary>{table}</details>\n```\n{fig}:::\n")


def stage_notebook(nb: dict, name: str, results: dict | None, commit: tuple[str, str, bool], figures_dir: Path) -> dict:
    "A reading copy of one notebook."
    nb = copy.deepcopy(nb)
    nb["metadata"]["language_info"] = {"name": "python", "pygments_lexer": "ipython3"}
    cells = []
    claims_idx, heading, glanced = None, "", False
    for c in nb["cells"]:
        src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        if c["cell_type"] == "code":
            directives = [l for l in src.splitlines() if l.startswith("#|")]
            if any(re.match(r"#\|\s*(hide|default_exp|include:\s*false)\b", d) for d in directives):
                continue
            c["source"] = "\n".join(l for l in src.splitlines() if not l.startswith("#|")).strip("\n")
            tags = c.setdefault("metadata", {}).setdefault("tags", [])
            if any(re.match(r"#\|\s*echo:\s*false\b", d) for d in directives):
                tags.append("remove-input")        # code that only writes the prose below it: the prose is what a reader needs
            elif not c.get("outputs") and re.search(r"\b(test_eq|test_fail|test_close)\(", src) and not re.search(r"^\s*def ", src, re.M):
                tags.append("hide-input")          # a check cell: folded on the page, kept in the notebook
            if not c["source"].strip() and not c.get("outputs"):
                continue
            outs = []
            for o in c.get("outputs", []):
                if o["output_type"] == "stream":
                    o["text"] = _shorten("".join(o["text"]), f"nbs/{name}.ipynb")
                elif o["output_type"] in ("execute_result", "display_data"):
                    data = o.get("data", {})
                    if set(data) == {"text/plain"}:
                        data["text/plain"] = _shorten("".join(data["text/plain"]), f"nbs/{name}.ipynb")
                outs.append(o)
            c["outputs"] = outs
            saved = SAVEFIG.findall(src)
            if len(saved) == 1 and any(k.startswith("image/") for o in outs for k in o.get("data", {})):
                c["metadata"]["mystnb"] = {"figure": {"caption": figure_caption(saved[0], figures_dir, heading)}}
            if "claims_table(" in src and results is not None:
                claims_idx = len(cells)
        else:
            c["source"] = re.sub(r"\]\(\.\./papers/", "](papers/", src)   # the paper pages sit beside the notebooks' pages
            hs = re.findall(r"^#{2,4} (.+)$", src, flags=re.M)
            if hs: heading = hs[-1].strip()
        cells.append(c)
        if c["cell_type"] == "markdown" and not glanced and results is not None:
            glanced = True
            box = at_a_glance(name, results, figures_dir)
            if box: cells.append(_cell("markdown", box, f"site-glance-{name}"))
    if results is not None:   # the scoreboard links here; without a claims_table() cell, to the provenance footer
        at = claims_idx if claims_idx is not None else len(cells)
        cells.insert(at, _cell("markdown", f"({claims_anchor(name)})=", f"site-claims-{name}"))
    cells.append(_cell("markdown", provenance_footer(name, results, commit), f"site-provenance-{name}"))
    nb["cells"] = cells
    return nb


def provenance_footer(name: str, results: dict | None, commit: tuple[str, str, bool]) -> str:
    sha, date, dirty = commit
    nb_line = f"`nbs/{name}.ipynb`" + (f", last committed in `{sha}` ({date})" if sha else "")
    if dirty: nb_line += "; the working tree holds uncommitted changes to it"
    rows = [("notebook", nb_line)]
    if results is not None:
        p = results.get("provenance", {})
        pk = p.get("packages", {})
        rows += [
            ("results file", f"`results/{name}.json`: profile **{p.get('profile', '?')}**, commit `{str(p.get('git_commit', ''))[:10]}`"),
            ("run", f"{p.get('started', '?')} to {p.get('finished', '?')} ({p.get('duration_s', '?')} s), "
                    f"peak memory {p.get('peak_memory_mb', '?')} MB, device {p.get('device', '?')}, "
                    f"{p.get('torch_threads', '?')} threads, seed {p.get('seed', '?')}"),
            ("packages", ", ".join(f"{k} {v}" for k, v in pk.items())),
        ]
        models = p.get("models") or []
        if models:
            rows.append(("models", "; ".join(f"{m.get('name')} (sha256 `{str(m.get('sha256', ''))[:12]}`)" for m in models)))
        if results.get("figures"):
            rows.append(("figures", ", ".join(f"`figures/{f}.png`" for f in results["figures"])))
    else:
        rows.append(("results file", "none: this notebook writes no results file; its outputs are the committed ones"))
    table = "| record | where this page's numbers came from |\n|---|---|\n" + "\n".join(f"| {k} | {v.replace('|', '/')} |" for k, v in rows)
    return f":::{{admonition}} Provenance\n:class: provenance\n\n{table}\n:::\n"


def _fold(text: str) -> str:
    "A cell's text, folded behind its first words when long."
    t = html.escape(str(text))
    if len(text) <= FOLD_CHARS: return t
    cut = str(text)[:FOLD_CHARS].rsplit(" ", 1)[0]
    return f'<details class="fold"><summary>{html.escape(cut)} …</summary>{t}</details>'


def _verdict_cell(c: dict) -> str:
    k = verdict_class(c.get("verdict", ""))
    bits = [f'<span class="verdict-badge verdict-{k}">{html.escape(str(c.get("verdict", "")))}</span>']
    if c.get("diagnosis"):
        bits.append(f'<span class="diagnosis" title="{html.escape(str(c.get("diagnosis_note", "")))}">{html.escape(c["diagnosis"])}</span>')
    if c.get("amended"):
        a = c["amended"][-1]
        bits.append(f'<span class="amended" title="was: {html.escape(a.get("old", ""))}; why: {html.escape(a.get("reason", ""))}">'
                    f'rule amended {html.escape(a.get("date", ""))}</span>')
    return "<br>".join(bits)


def _claims_table(entries: list, pages: set, titles: dict, with_paper: bool) -> str:
    "One scoreboard table: a header row per notebook (paper, section, setting once, link), then its claims."
    head = ("<tr><th>#</th><th>claim</th>" + ("<th>the paper says</th>" if with_paper else "") +
            "<th>ours</th><th class=\"verdict\">verdict</th><th>why</th></tr>")
    ncol = 6 if with_paper else 5
    rows, last_nb = [], None
    for nb, c in entries:
        if nb != last_nb:
            paper, section = paper_and_section(titles.get(nb, ""))
            pname = f" ({PAPERS[paper.split()[-1]]})" if paper.startswith("Paper") and paper.split()[-1] in PAPERS else ""
            link = (f'<a href="{nb}.html#{claims_anchor(nb)}">{html.escape(nb)}</a>' if nb in pages else html.escape(nb))
            settings = list(dict.fromkeys(str(x.get("setting", "")) for n, x in entries if n == nb))
            setting = (f'<div class="setting">setting: {html.escape(settings[0])}</div>' if len(settings) == 1 and settings[0] else "")
            rows.append(f'<tr class="section"><td colspan="{ncol}"><b>{html.escape(paper)}{html.escape(pname)}</b>: '
                        f'{html.escape(section)} · {link}{setting}</td></tr>')
            last_nb = nb
        k = verdict_class(c.get("verdict", ""))
        req = c.get("requires") or []
        req_html = ("<br><span class=\"requires\">requires " + ", ".join(
            f'<a href="#{claim_row_id(nb, dict(id=r))}">{html.escape(r)}</a>' for r in req) + "</span>") if req else ""
        settings = {str(x.get("setting", "")) for n, x in entries if n == nb}
        own_setting = (f'<br><span class="setting">setting: {html.escape(str(c.get("setting", "")))}</span>'
                       if len(settings) > 1 and c.get("setting") else "")
        rows.append(
            f'<tr id="{claim_row_id(nb, c)}" class="verdict-{k}" data-notebook="{html.escape(nb)}" data-kind="{html.escape(claim_kind(c))}">'
            f'<td class="num">{html.escape(str(c.get("number", "")))}</td>'
            f'<td>{html.escape(str(c.get("claim", "")))}<br><code class="claim-id">{html.escape(str(c.get("id", "")))}</code>{req_html}{own_setting}</td>'
            + (f'<td>{_fold(str(c.get("paper", "")))}</td>' if with_paper else "") +
            f'<td>{_fold(str(c.get("measured", "")))}</td><td class="verdict">{_verdict_cell(c)}</td>'
            f'<td>{_fold(str(c.get("why", "")))}</td></tr>')
    return (f'<div class="scoreboard-wrap"><table class="scoreboard{" with-paper" if with_paper else ""}"><thead>{head}</thead><tbody>\n'
            + "\n".join(rows) + "\n</tbody></table></div>")


def scoreboard_page(results: dict[str, dict], titles: dict[str, str], pages: set[str]) -> tuple[str, int]:
    "The scoreboard in MyST (tables as raw HTML, coloured by verdict) and the number of claims it lists."
    order = {nb: i for i, nb in enumerate(notebook_order(ROOT / "nbs"))}
    ranked = sorted(results, key=lambda k: (paper_and_section(titles.get(k, ""))[0] == "tooling", order.get(k, 999), k))
    every = [(nb, c) for nb in ranked for c in results[nb]["claims"]]
    paper = [(nb, c) for nb, c in every if claim_kind(c) == "paper"]
    counts = {k: 0 for k, _ in VERDICTS}
    for _, c in paper:
        if is_evidence(c): counts[verdict_class(c.get("verdict", ""))] += 1
    n_construction = sum(1 for _, c in paper if c.get("diagnosis") == "construction")
    n_untested = sum(1 for _, c in paper if verdict_class(c.get("verdict", "")) == "not-tested")
    badges = "".join(f'<span class="verdict-count verdict-{k}"><b>{counts[k]}</b> {label}</span>'
                     for k, label in VERDICTS if k not in ("not-tested", "other") or counts[k])
    aside = "".join(f'<span class="verdict-aside">{t}</span>' for t in (
        f"<b>{n_untested}</b> not tested (a precondition failed)" if n_untested else "",
        f"<b>{n_construction}</b> hold or fail by construction (not evidence)" if n_construction else "") if t)
    groups = []
    for kind, title, what in KIND_GROUPS:
        entries = [(nb, c) for nb, c in every if claim_kind(c) == kind]
        if not entries: continue
        cnt = {k: sum(1 for _, c in entries if verdict_class(c.get("verdict", "")) == k) for k, _ in VERDICTS}
        line = ", ".join(f"{cnt[k]} {label}" for k, label in VERDICTS if cnt[k])
        groups.append(f"## {title}\n\n{len(entries)} claims, {what}: {line}.\n\n```{{raw}} html\n"
                      f"{_claims_table(entries, pages, titles, with_paper=False)}\n```\n")
    files, total_s = [], 0.0
    for nb in ranked:
        p = results[nb].get("provenance", {})
        total_s += float(p.get("duration_s") or 0)
        link = f'<a href="{nb}.html">{nb}</a>' if nb in pages else html.escape(nb)
        files.append(f"<tr><td><code>results/{html.escape(nb)}.json</code></td><td>{link}</td>"
                     f"<td>{html.escape(str(p.get('profile', '?')))}</td><td><code>{html.escape(str(p.get('git_commit', ''))[:10])}</code></td>"
                     f"<td>{html.escape(str(p.get('finished', '')))}</td><td class=\"num\">{float(p.get('duration_s') or 0) / 60:.1f}</td>"
                     f"<td class=\"num\">{len(results[nb]['claims'])}</td></tr>")
    text = f"""---
html_theme.sidebar_secondary.remove: true
---

# Scoreboard: every claim, reproduced or not

Every claim the notebooks decide, generated from `results/*.json` when the site is built. **The papers' claims come
first**, and only they are counted at the top: a paper claim that was tested and does not hold by construction is
evidence about the paper. Preconditions, controls, our extensions and the tooling's checks follow, each in its own
table. Each row links to its notebook's claims table; a paper claim links to the preconditions it requires.

```{{raw}} html
<div class="verdict-counts"><span class="verdict-total"><b>{sum(counts.values())}</b> paper claims tested</span>{badges}</div>
<div class="verdict-counts aside">{aside}</div>
```

**Verdicts.** *holds*: our number meets the rule declared before the run (from the paper's statement); *partly*: it meets
the weaker rule declared beside it; *does not hold*: it meets neither; *underpowered*: a 95% interval lies on both sides
of the bar, so this sample cannot decide; *not tested*: a declared precondition failed, so the experiment could not have
found the claim holding. Every negative verdict carries a **diagnosis**: `scale` (the paper's scale might differ),
`proxy` (our substitute data or metric), `construction` (follows from definitions), `deviation` (our reading of the
method), `power`, `precondition`. Hover over a diagnosis for its note.

## The papers' claims

```{{raw}} html
{_claims_table(paper, pages, titles, with_paper=True)}
```

{chr(10).join(groups)}
## The results files

Each row above comes from one of these files, written by its notebook's run; a claim is only as recent as its file.
Their runs took {total_s / 60:.0f} minutes in all (each file's `duration_s`; see the README for the machine and a first
run).

```{{raw}} html
<table class="results-files"><thead><tr><th>file</th><th>notebook</th><th>profile</th><th>commit</th><th>finished</th><th>minutes</th><th>claims</th></tr></thead><tbody>
{chr(10).join(files)}
</tbody></table>
```
"""
    return text, len(every)


def nav_label(name: str, title: str) -> str:
    "A short navigation label: 'Models', '§3.2 K-FAC curvature and ...', 'Non-gradient ablation of ...'."
    if name == "scoreboard": return "Scoreboard: every claim"
    if name.startswith("papers/"): return "The paper, its method and claims"
    if not title: return name
    paper, section = paper_and_section(title)
    label = section if paper != "tooling" else title.split(":")[0]
    label = label.replace("`", "").strip()
    label = label[:1].upper() + label[1:]
    if name in LAST: label = f"{name}: {label}"
    return label.replace("<", "").replace(">", "")


def stage_index(nb: dict, order: list[str], n_claims: int, counts_line: str, titles: dict[str, str]) -> dict:
    "The home page: the notebook names in its table become links, a pointer to the scoreboard, the hidden toctree."
    pages = set(order) | {n for _, g in NAV_GROUPS for n in g if n.startswith("papers/") and (ROOT / f"{n}.md").exists()}
    for c in nb["cells"]:
        if c["cell_type"] == "markdown":
            c["source"] = re.sub(r"^\| `([0-9]{2}_[A-Za-z0-9_]+)` \|",
                                 lambda m: f"| [`{m.group(1)}`]({m.group(1)}.ipynb) |" if m.group(1) in pages else m.group(0),
                                 c["source"], flags=re.M)
    callout = (f":::{{admonition}} The scoreboard\n:class: tip scoreboard-callout\n\n"
               f"{n_claims} claims, each with the paper's number, ours and a verdict; {counts_line}. "
               f"**[Read the scoreboard](scoreboard.md)** first, then any section from the navigation on the left.\n:::\n")
    for i, c in enumerate(nb["cells"]):   # right after the introduction: before the index's first "## " heading
        m = re.search(r"^## ", c["source"], flags=re.M) if c["cell_type"] == "markdown" else None
        if m:
            c["source"] = c["source"][:m.start()] + callout + "\n" + c["source"][m.start():]
            break
    else:
        nb["cells"].insert(1, _cell("markdown", callout, "site-scoreboard-callout"))
    toc = []
    groups = [(cap, [n for n in names if n in pages]) for cap, names in NAV_GROUPS]
    named = {n for _, g in NAV_GROUPS for n in g}
    more = [n for n in order if n not in named and n != "index"]
    if more: groups.append(("More", more))
    for cap, names in groups:
        if names:
            entries = "\n".join(f"{nav_label(n, titles.get(n, ''))} <{n}>" for n in names)
            toc.append(f"```{{toctree}}\n:hidden:\n:caption: {cap}\n:maxdepth: 1\n\n{entries}\n```\n")
    nb["cells"].append(_cell("markdown", "\n".join(toc), "site-toctree"))
    return nb


def stage_papers(papers_dir: Path, dest: Path) -> list[str]:
    "Copy papers/*.md (the papers in our words) into the site; their links to ../nbs/X.ipynb become links to the pages."
    names = []
    if not papers_dir.is_dir(): return names
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(papers_dir.glob("*.md")):
        (dest / p.name).write_text(re.sub(r"\]\(\.\./nbs/", "](../", p.read_text()))
        names.append(f"papers/{p.stem}")
    return names


def stage(src: Path, root: Path = ROOT) -> dict:
    "Write the reading copies and the scoreboard into `src`; return what the checks need."
    nbs_dir, results_dir, figures_dir = root / "nbs", root / "results", root / "figures"
    if src.exists(): shutil.rmtree(src)
    src.mkdir(parents=True)
    order = notebook_order(nbs_dir)
    results = load_results(results_dir)
    notebooks = {n: json.loads((nbs_dir / f"{n}.ipynb").read_text()) for n in order if n != "scoreboard"}
    titles = {n: title_of(nb) for n, nb in notebooks.items()}
    commits = notebook_commits(list(notebooks))
    pages = set(order)
    if figures_dir.is_dir(): shutil.copytree(figures_dir, src / "figures")   # captions link the SVG and the sidecar
    papers = stage_papers(root / "papers", src / "papers")
    pages |= set(papers)
    board, n_claims = scoreboard_page(results, titles, pages)
    (src / "scoreboard.md").write_text(board)
    counts = {k: 0 for k, _ in VERDICTS}
    for d in results.values():
        for c in d["claims"]:
            if is_evidence(c): counts[verdict_class(str(c.get("verdict", "")))] += 1
    counts_line = "of the papers' claims tested, " + ", ".join(f"{counts[k]} {label}" for k, label in VERDICTS if counts[k])
    n_images = {}
    for name, nb in notebooks.items():
        staged = stage_notebook(nb, name, results.get(name), commits[name], figures_dir)
        if name == "index":
            staged = stage_index(staged, order, n_claims, counts_line, titles)
        n_images[name] = sum(1 for c in staged["cells"] for o in c.get("outputs", [])
                             if any(k.startswith("image/") for k in o.get("data", {})))
        n_images[name] += sum(1 for c in staged["cells"] if c["id"].startswith("site-glance-") and "{figure}" in c["source"])
        (src / f"{name}.ipynb").write_text(json.dumps(staged, ensure_ascii=False, indent=1))
    return dict(order=order, n_claims=n_claims, counts=counts, n_images=n_images,
                titles=titles)


# --------------------------------------------------------------------------------------------------- build
def build(out: Path = DEFAULT_OUT, root: Path = ROOT) -> dict:
    "Stage, then build the HTML into `out`/html. Returns a summary (warnings, pages, sizes, seconds)."
    from sphinx.application import Sphinx
    t0 = time.perf_counter()
    out = Path(out).resolve()
    src, html_dir, doctrees = out / "src", out / "html", out / "doctrees"
    info = stage(src, root)
    if html_dir.exists(): shutil.rmtree(html_dir)
    status, warnings = StringIO(), StringIO()
    app = Sphinx(str(src), str(SITE_DIR), str(html_dir), str(doctrees), "html", status=status, warning=warnings,
                 freshenv=True, keep_going=True, verbosity=0)
    app.build()
    for m in (html_dir / "_static").rglob("*.map"):   # the theme's source maps: only developer tools fetch them
        m.unlink()
    warn_lines = [l for l in warnings.getvalue().splitlines() if l.strip()]
    (out / "warnings.txt").write_text("\n".join(warn_lines) + ("\n" if warn_lines else ""))
    pages = sorted(html_dir.glob("*.html"))
    sizes = {p.name: p.stat().st_size for p in pages}
    largest = max(sizes, key=sizes.get) if sizes else None
    summary = dict(html=str(html_dir), seconds=round(time.perf_counter() - t0, 1), warnings=warn_lines,
                   pages=[p.name for p in pages], largest_page=largest, largest_page_bytes=sizes.get(largest, 0),
                   site_bytes=sum(f.stat().st_size for f in html_dir.rglob("*") if f.is_file()), **info)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: _site/)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the build printed any warning")
    a = ap.parse_args(argv)
    s = build(a.out)
    if a.json:
        print(json.dumps(s, default=str))
    else:
        for w in s["warnings"]: print("warning:", w, file=sys.stderr)
        print(f"site: {len(s['pages'])} pages, {s['n_claims']} claims on the scoreboard, {len(s['warnings'])} warnings, "
              f"{s['seconds']} s; largest page {s['largest_page']} ({s['largest_page_bytes'] / 1024:.0f} KiB); "
              f"whole site {s['site_bytes'] / 2**20:.1f} MiB\nopen {Path(s['html']) / 'index.html'}")
    return 1 if (a.strict and s["warnings"]) else 0


if __name__ == "__main__":
    sys.exit(main())
