"""Sphinx extension for the book (listed under ``sphinx: local_extensions`` in ``_config.yml``).

* **No Thebe.** Jupyter Book always loads ``sphinx_thebe``, whose set-up script is added twice
  and declares ``THEBE_JS_URL`` twice: a JavaScript error on every page, for a live-code button
  the book does not offer (the chapters need the pinned environment, see the landing page). Its
  event handlers are disconnected here, so no Thebe script is written.
* **Author-year bibliography.** The text cites author-year ("Kingma and Ba (2015)"); the
  bibliography page uses the same labels ("Kingma & Ba 2015"), sorted by author and year.
* **Run this chapter.** Each chapter page starts with one line saying how to run it: download
  the executed notebook and open it in the README's environment.
"""
from __future__ import annotations

import re

from docutils import nodes

CHAPTER = re.compile(r"^book/\d\d_")


def _drop_thebe(app) -> None:
    for event, listeners in app.events.listeners.items():
        listeners[:] = [lst for lst in listeners
                        if getattr(lst.handler, "__module__", "") != "sphinx_thebe"]


def _run_this_chapter(app, doctree) -> None:
    docname = app.env.docname
    if not CHAPTER.match(docname):
        return
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None:
        return
    notebook = docname.split("/")[-1] + ".ipynb"
    para = nodes.paragraph(classes=["run-this-chapter"])
    para += nodes.emphasis(text="Run this chapter: ")
    para += nodes.reference(text=notebook, refuri=f"../_sources/{docname}.ipynb")
    para += nodes.Text(" is this page as a notebook, with its outputs. Open it in the pinned "
                       "environment (")
    para += nodes.reference(text="how to run it", refuri="intro.html#how-to-run-it")
    para += nodes.Text(").")
    title = next(iter(section.findall(nodes.title)), None)
    section.insert(section.index(title) + 1 if title is not None else 0, para)


def _author_year_style():
    from pybtex.style.formatting.unsrt import Style as UnsrtStyle
    from pybtex.style.labels import BaseLabelStyle

    class AuthorYearLabels(BaseLabelStyle):
        def format_labels(self, sorted_entries):
            for entry in sorted_entries:
                people = entry.persons.get("author") or entry.persons.get("editor") or []
                names = [" ".join(p.last_names).replace("{", "").replace("}", "") for p in people]
                if len(names) > 2:
                    who = f"{names[0]} et al."
                elif len(names) == 2:
                    who = f"{names[0]} & {names[1]}"
                else:
                    who = names[0] if names else entry.key
                yield f"{who} {entry.fields.get('year', '')}".strip()

    class AuthorYearStyle(UnsrtStyle):
        default_label_style = AuthorYearLabels
        default_sorting_style = "author_year_title"

    return AuthorYearStyle


def setup(app):
    from pybtex.plugin import register_plugin

    register_plugin("pybtex.style.formatting", "authoryear", _author_year_style())
    app.connect("builder-inited", _drop_thebe)
    app.connect("doctree-read", _run_this_chapter)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
