"""MkDocs hooks: pages generated from the code at build time (no network).

* ``reference/cli.md`` from the typer app, ``reference/api/*.md`` (mkdocstrings) for every public
  module, so the references stay right after other branches add commands and modules;
* tutorial figures and result tables from ``build/tutorials`` (``make tutorials``);
* a warning (an error under ``mkdocs build --strict``) when the committed ``docs/model.md`` is
  stale, i.e. differs from ``ketasim docs model``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

from ketasim import docsgen

log = logging.getLogger("mkdocs.hooks.ketasim")
ROOT = Path(__file__).resolve().parents[2]
TUTORIAL_BUILD = ROOT / "build" / "tutorials"


def on_config(config):
    """Put every generated API page into the nav under Reference → Python API."""
    api = [{"Overview": "reference/api/index.md"}]
    api += [{mod: f"reference/api/{mod}.md"} for mod in docsgen.api_modules()]

    def patch(items):
        for i, item in enumerate(items):
            if isinstance(item, dict):
                for k, v in item.items():
                    if v == "reference/api/index.md":
                        items[i] = {k: api}
                    elif isinstance(v, list):
                        patch(v)

    patch(config["nav"])
    return config


def on_files(files: Files, config) -> Files:
    """Add the generated reference pages and the tutorial outputs."""
    files.append(File.generated(config, "reference/cli.md", content=docsgen.cli_reference()))
    files.append(File.generated(config, "reference/api/index.md", content=docsgen.api_index()))
    for mod in docsgen.api_modules():
        files.append(File.generated(config, f"reference/api/{mod}.md",
                                    content=docsgen.api_page(mod)))
    # the calibration tables get their own page: a generated "validation.md" would replace the
    # written one (mkdocs 1.6 only warns, so even --strict does not catch it)
    files.append(File.generated(config, "validation-results.md",
                                content=docsgen.validation_page(config["docs_dir"])))
    if TUTORIAL_BUILD.is_dir():
        for p in sorted(TUTORIAL_BUILD.glob("*.png")):
            files.append(File.generated(config, f"tutorials/figures/{p.name}",
                                        abs_src_path=str(p)))
    model = Path(config["docs_dir"]) / "model.md"
    if docsgen.model_page_is_stale(model):
        log.warning("docs/model.md is stale: it differs from the cards and code; regenerate "
                    "it with `ketasim docs model --out docs/model.md`")
    return files


_ROLE = re.compile(r":(?:func|mod|class|data|meth|attr|exc):(?=<code)")


def on_page_content(html: str, page, config, files) -> str:
    """Drop Sphinx roles (``:func:``, ``:mod:`` ...) left in front of code spans by the
    docstrings; the code span itself stays."""
    return _ROLE.sub("", html)
