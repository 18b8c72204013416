# Sphinx configuration of the site (`make site`; site/build.py stages the sources and points Sphinx here).
# myst-nb reads the executed notebooks as they are: execution is off, outputs are the committed ones.
import shutil
from importlib import metadata
from pathlib import Path

project = "ortho-nbs"
author = "ortho-nbs developers"
copyright = "ortho-nbs developers"
html_title = "ortho-nbs: the executable paper"

extensions = ["myst_nb"]
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

nb_execution_mode = "off"          # never re-execute: the committed outputs are the paper
nb_merge_streams = True
nb_output_stderr = "show"
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_dmath_double_inline = True

html_theme = "sphinx_book_theme"
html_theme_options = {
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "use_source_button": False,
    "navigation_with_keys": False,
    # the notebooks read best with the whole width: no right-hand contents panel there (the paper pages keep theirs)
    "secondary_sidebar_items": {"[0-9]*": [], "index": [], "cli": []},
}
html_static_path = ["_static"]
html_css_files = ["site.css"]
html_copy_source = False
html_show_sourcelink = False
html_last_updated_fmt = None

# Math without a network: MathJax 3 (SVG output: no web fonts to fetch, so it also works from file://) from the
# PyPI package sphinx-mathjax-offline. Only the one combined file is copied into the site, not the package's 24 MB.
mathjax_path = "mathjax/tex-svg-full.js"
mathjax3_config = {"options": {"enableMenu": False}, "svg": {"fontCache": "global"}}


def _mathjax_file() -> Path:
    dist = metadata.distribution("sphinx-mathjax-offline")
    for f in dist.files or []:
        if str(f).endswith("static/mathjax/tex-svg-full.js"):
            return Path(dist.locate_file(f))
    raise FileNotFoundError("sphinx-mathjax-offline has no static/mathjax/tex-svg-full.js")


def _copy_mathjax(app, exc):
    if exc is None and app.builder.format == "html":
        dest = Path(app.outdir) / "_static" / "mathjax"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_mathjax_file(), dest / "tex-svg-full.js")


def setup(app):
    _mathjax_file()   # fail early, with the package named, when it is missing
    app.connect("build-finished", _copy_mathjax)
