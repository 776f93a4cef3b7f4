"""Sphinx configuration of the collection's book (``make book``).

``python -m metalib.runner book`` assembles the book's sources next to a copy of this file (the executed
notebooks, the landing page, the API pages, MathJax) and runs Sphinx on them; see :mod:`metalib.runner.book`.
The book is self-contained: it loads nothing from the network, so it reads offline and in CI.
"""
from datetime import date

project = "metalib notebooks"
author = "the metalib authors"
copyright = f"{date.today().year}, {author}"

extensions = [
    "myst_nb",                   # the executed notebooks and the Markdown pages
    "sphinx.ext.autodoc",        # the API reference, from metalib's docstrings
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
exclude_patterns = ["_build", "_run/**", "**.ipynb_checkpoints"]

# Notebooks are rendered as executed by `make run`; the book never executes them.
nb_execution_mode = "off"
# Widgets render as the static figure they carry (image/png), not as live views needing JavaScript from a CDN.
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]
nb_ipywidgets_js = {}
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "html_image"]
myst_heading_anchors = 3

# MathJax 3 (the sphinx-mathjax-offline wheel's copy of its browser build), copied into _static/mathjax by the builder
mathjax_path = "mathjax/tex-chtml-full.js"

autosummary_generate = True
# each object documented once, in the module that defines it (packages re-export in __all__)
autodoc_default_options = {"members": True, "show-inheritance": True, "ignore-module-all": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_mock_imports: list[str] = []

html_theme = "sphinx_book_theme"
html_title = "metalib notebooks"
html_static_path = ["_static"]
html_favicon = "_static/favicon.svg"
html_context = {"default_mode": "light"}  # a first visit has no stored mode: say which, not an error
html_css_files = ["book.css"]
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": False,  # the executed copy; each page links the notebook to run
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
}
html_show_sourcelink = False
html_copy_source = False  # each page links the notebook to run instead
html_last_updated_fmt = None
# a subclass of torch.autograd.Function would otherwise show torch's docstrings, with links into torch's docs
autodoc_inherit_docstrings = False
