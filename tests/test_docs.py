"""Documentation: the generated model page is fresh and complete, every card parameter has a
source, the CLI/API references cover the code, and the tutorials are wired into the site.

The tutorials themselves run in ``make tutorials`` (called by ``make docs``, which CI runs before
``make test``), so they are not run again here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ketasim import docsgen
from ketasim.cards import all_parameters, load_param_cards, load_pk_cards
from ketasim.cli import main

ROOT = Path(__file__).resolve().parents[1]
MODEL_MD = ROOT / "docs" / "model.md"


@pytest.fixture(scope="module")
def page() -> str:
    return docsgen.model_page()


def test_committed_model_page_is_not_stale(page: str) -> None:
    committed = MODEL_MD.read_text(encoding="utf-8")
    assert committed == page, (
        "docs/model.md is stale: regenerate it with `ketasim docs model --out docs/model.md` "
        "(or `make model-docs`) and commit it")


def test_staleness_is_detected_when_a_card_changes(tmp_path: Path, monkeypatch,
                                                   page: str) -> None:
    """Changing one card value must change the page, so the check above would fail."""
    from ketasim import cards

    stale = tmp_path / "model.md"
    stale.write_text(page, encoding="utf-8")
    assert not docsgen.model_page_is_stale(stale)
    card = load_param_cards()["receptor"]
    name, p = next(iter(card.parameters.items()))
    changed = card.model_copy(update={"parameters": {
        **card.parameters, name: p.model_copy(update={"value": p.value * 1.37 + 0.011})}})
    monkeypatch.setattr(cards, "load_param_cards",
                        lambda: {**load_param_cards(), "receptor": changed})
    monkeypatch.setattr(docsgen, "load_param_cards",
                        lambda: {**load_param_cards(), "receptor": changed})
    assert docsgen.model_page_is_stale(stale)


def test_cli_check_reports_stale_page(tmp_path: Path, capsys) -> None:
    p = tmp_path / "model.md"
    p.write_text("# old\n", encoding="utf-8")
    assert main(["docs", "model", "--out", str(p), "--check"]) == 2
    assert "is stale" in capsys.readouterr().err
    assert main(["docs", "model", "--out", str(p)]) == 0
    assert main(["docs", "model", "--out", str(p), "--check"]) == 0
    assert p.read_text(encoding="utf-8") == docsgen.model_page()


def test_every_card_parameter_has_a_source() -> None:
    assert docsgen.parameters_without_source() == []


def test_placeholder_source_is_caught(monkeypatch) -> None:
    import ketasim.cards as cards

    rows = [{"card": "x/y", "name": "p", "value": 1.0, "units": "", "evidence": "read",
             "source": "TBD", "note": ""},
            {"card": "x/y", "name": "q", "value": 1.0, "units": "", "evidence": "assumed",
             "source": "a real source", "note": " "}]
    monkeypatch.setattr(cards, "all_parameters", lambda: rows)
    assert docsgen.parameters_without_source() == ["x/y:p (no source)",
                                                   "x/y:q (assumed without a note)"]


def test_every_pk_card_cites_a_pmid_doi_or_url() -> None:
    for card in load_pk_cards().values():
        assert card.pmid or card.doi or card.urls, card.id


def _section_of(page: str, card: str) -> str:
    """The parameter tables of ``card`` (a card may be split over several tables)."""
    out = []
    for m in re.finditer(re.escape(f"Card `{card}") + r"[` ]", page):
        end = page.find("\nCard `", m.start() + 1)
        out.append(page[m.start():] if end < 0 else page[m.start():end])
    assert out, f"no parameter table for {card}"
    return "\n".join(out)


def test_every_card_parameter_appears_with_its_source(page: str) -> None:
    rows = all_parameters()
    assert len(rows) > 200
    for row in rows:
        section = _section_of(page, row["card"])
        line = next((ln for ln in section.splitlines() if ln.startswith(f"| `{row['name']}` |")),
                    None)
        assert line is not None, f"{row['card']}:{row['name']} missing from the model page"
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert cells[2] == f"{row['value']:.6g}", (row, cells)
        assert cells[4] == f"`{row['evidence']}`"
        # the source text survives escaping and linking: compare its words
        words = re.findall(r"[A-Za-z]{4,}", row["source"])[:6]
        for w in words:
            assert w in cells[5], (row["card"], row["name"], w)


def test_pmids_and_dois_are_links(page: str) -> None:
    assert "(https://pubmed.ncbi.nlm.nih.gov/32997732/)" in page  # kamp2020 card
    assert "(https://doi.org/10.1097/ALN.0000000000003577)" in page


def test_every_stage_has_equations(page: str) -> None:
    for heading in ("## 1. Pharmacokinetics", "## 2. Free brain concentration",
                    "## 3. NMDA receptor block", "## 4. Hypothesis branches",
                    "## 5. Shared downstream chain", "## 6. Readouts",
                    "## 7. Mood and the clinic", "## 8. Side effects"):
        start = page.index(heading)
        nxt = page.find("\n## ", start + 1)
        assert "$$" in page[start:nxt], heading
    for h in "abcdef":
        assert f"### ({h})" in page
    # PK equations per card, generated from the card structure
    for card in load_pk_cards().values():
        sec = page[page.index(f"### `{card.id}`"):]
        sec = sec[:sec.find("\n### ", 5)]
        assert r"\begin{aligned}" in sec
        for c in card.compartments:
            assert c.name.replace("_", r"\_") in sec, (card.id, c.name)
        for route in card.routes:
            assert f"| `{route}` |" in sec, (card.id, route)


def test_pk_equations_follow_the_flows() -> None:
    card = load_pk_cards()["kamp2020"]
    eq = docsgen.pk_equations(card)
    # elimination by clearance from the central compartment: CL / V1 times A_central
    assert r"- \frac{\mathrm{CL}}{V_{1}}\,(1-\mathrm{fm}_{\mathrm{NK}})\,A_{\text{central}}" in eq
    assert r"&= \frac{Q_{2}}{V_{2}}\,A_{\text{peripheral1}}" in eq
    assert r"\frac{dC_e}{dt}" in eq


def test_every_mechanism_symbol_is_mapped() -> None:
    """Mechanism and clinic parameters get their symbol from the equations' table; a new
    parameter without one is listed here so its equation gets written into the page."""
    missing = [f"{cid}:{n}" for cid, c in load_param_cards().items()
               for n in c.parameters if n not in docsgen.SYMBOLS]
    assert missing == [], (f"new parameters {missing}: add their LaTeX symbols to "
                           "ketasim.docsgen.SYMBOLS and write their equations into the stage's "
                           "block there, then `make model-docs`")


def test_cli_reference_covers_every_command() -> None:
    import typer

    from ketasim.cli import app

    ref = docsgen.cli_reference()
    root = typer.main.get_command(app)
    for name, cmd in root.commands.items():
        assert f"`ketasim {name}`" in ref
        for sub in getattr(cmd, "commands", {}):
            assert f"`ketasim {name} {sub}`" in ref
    assert "`--json`" in ref and "`ketasim docs model`" in ref


def test_api_reference_lists_public_modules() -> None:
    mods = docsgen.api_modules()
    assert {"ketasim.pk", "ketasim.mechanism", "ketasim.mood", "ketasim.trial",
            "ketasim.docsgen"} <= set(mods)
    assert not any(m.split(".")[-1].startswith("_") for m in mods)
    assert "::: ketasim.mood" in docsgen.api_page("ketasim.mood")


def test_validation_page_reads_committed_reports() -> None:
    text = docsgen.validation_page(ROOT / "docs")
    if (ROOT / "docs" / "calibration-mechanism.json").is_file():
        assert "## Mechanism:" in text and "| target | value | met |" in text


def test_site_config_is_offline_and_complete() -> None:
    cfg = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    conf = yaml.safe_load(cfg.replace("!!python", "#"))
    assert conf["theme"]["font"] is False  # no web fonts
    for js in conf["extra_javascript"]:
        assert not js.startswith("http"), js
        assert (ROOT / "docs" / js).is_file(), js
    for css in conf["extra_css"]:
        assert not css.startswith("http"), css
        assert (ROOT / "docs" / css).is_file(), css
    nav = yaml.safe_dump(conf["nav"])
    for page in re.findall(r"[\w/.-]+\.md", nav):
        generated = page.startswith("reference/") or page == "validation-results.md"
        assert generated or (ROOT / "docs" / page).is_file(), page
    for old in ("user-guide.md", "mechanism.md", "clinic.md", "benchmarks.md", "model.md"):
        assert old in nav


def test_tutorials_are_wired_into_the_site() -> None:
    from importlib import util

    spec = util.spec_from_file_location("run_all", ROOT / "tutorials" / "run_all.py")
    run_all = util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    for name in run_all.TUTORIALS:
        script = ROOT / "tutorials" / f"{name}.py"
        assert script.is_file()
        src = script.read_text(encoding="utf-8")
        assert "def main()" in src and "save(fig" in src and "write_table(" in src
        pages = [p for p in (ROOT / "docs" / "tutorials").glob("*.md")
                 if f"figures/{name}.png" in p.read_text(encoding="utf-8")]
        assert pages, f"no docs page shows the figure of tutorial {name}"


def test_tutorial_published_numbers_come_from_calibration_files() -> None:
    """No tutorial types a published number in: digits in the scripts are only plot/format
    constants, not values matching the calibration observations they cite."""
    import sys

    sys.path.insert(0, str(ROOT / "tutorials"))
    try:
        import _common
    finally:
        sys.path.pop(0)
    if _common.calibration_dir() is None:
        pytest.skip("shared/literature/calibration not available")
    data = _common.study("clinical/murrough2013a.yaml")
    assert _common.value(_common.observation(data, metric="response_rate",
                                             arm="ketamine")) is not None
    published = set()
    for f in ("clinical/murrough2013a.yaml", "clinical/murrough2013b.yaml",
              "clinical/transform2_popova2019.yaml", "clinical/zarate2006.yaml"):
        for obs in (_common.study(f) or {}).get("observations", []):
            v = obs.get("value")
            if isinstance(v, float) and not v.is_integer():
                published.add(f"{v}")
    for script in (ROOT / "tutorials").glob("*.py"):
        src = script.read_text(encoding="utf-8")
        literal = set(re.findall(r"(?<![\w.])\d+\.\d+", src))
        assert not (literal & published), (script.name, literal & published)


def test_every_public_function_and_class_has_a_docstring() -> None:
    """Public (no leading underscore) functions, classes and methods in src/ketasim."""
    import ast

    missing = []
    for path in sorted((ROOT / "src" / "ketasim").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))

        def visit(node, prefix: str, path=path) -> None:
            for n in ast.iter_child_nodes(node):
                if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    if n.name.startswith("_"):
                        continue
                    if ast.get_docstring(n) is None:
                        missing.append(f"{path.relative_to(ROOT)}:{n.lineno} {prefix}{n.name}")
                    if isinstance(n, ast.ClassDef):
                        visit(n, f"{prefix}{n.name}.")

        visit(tree, "")
    assert missing == [], "public objects without a docstring:\n" + "\n".join(missing)


def test_built_site_renders_offline_in_chromium() -> None:
    """The built site (``make docs``) opens from the file system in headless Chromium: math is
    typeset by the vendored KaTeX, the tutorial figure loads, and no page asks the network."""
    site = ROOT / "build" / "site"
    chromium = Path("/usr/bin/chromium")
    if not (site / "model.html").is_file() or not chromium.is_file():
        pytest.skip("needs `make docs` and /usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    external: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        page = browser.new_page()
        page.on("request", lambda r: external.append(r.url)
                if not r.url.startswith(("file:", "data:", "blob:")) else None)
        page.goto((site / "model.html").as_uri())
        page.wait_for_function("document.querySelectorAll('.katex').length > 100",
                               timeout=20_000)
        assert page.evaluate("document.querySelectorAll('.katex-error').length") == 0
        page.goto((site / "tutorials" / "single-infusion.html").as_uri())
        page.wait_for_load_state("load")
        widths = page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
        assert widths and max(widths) > 500, widths
        page.goto((site / "reference" / "cli.html").as_uri())
        assert "ketasim trial" in page.content()
        browser.close()
    assert external == []


def test_doi_links_end_at_the_doi() -> None:
    """Punctuation after a DOI (``):``, ``).``, ``;``) is not part of the link target."""
    for text, doi in (("Malinovsky (doi 10.1093/bja/77.2.203): nasal F", "10.1093/bja/77.2.203"),
                      ("see doi:10.1007/BF00607095).", "10.1007/BF00607095"),
                      ("(DOI 10.2147/DDDT.S224553; READ)", "10.2147/DDDT.S224553")):
        out = docsgen._linkify(text)
        assert f"(https://doi.org/{doi})" in out, out


# --- commands, options and API names named in the user-facing docs --------------------------

#: pages checked: README, CONTRIBUTING and the written docs pages (not the dated benchmark log,
#: the generated model page or the changelog, which records what was true then)
_DOC_SKIP = {"benchmarks.md", "model.md", "changelog.md"}
#: Parquet metadata keys written ``ketasim.<key>`` (web.md, user-guide.md), not Python names
_METADATA_KEYS = {"ketasim.seed", "ketasim.ketasim_version", "ketasim.card_hashes",
                  "ketasim.scenario_hash"}


def _doc_pages() -> list[Path]:
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    return pages + [p for p in sorted((ROOT / "docs").rglob("*.md")) if p.name not in _DOC_SKIP]


def _code_snippets(text: str) -> list[tuple[int, str]]:
    """(line, code) for every line of a fenced block (``\\`` continuations joined, ``#``
    comments dropped) and every inline code span (which may wrap onto the next line)."""
    out: list[tuple[int, str]] = []
    fence, buf, start = False, "", 0
    for i, line in enumerate(text.split("\n"), 1):
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        if not fence:
            continue
        code = re.split(r"(?:^|\s)#(?:\s|$)", line)[0]
        buf, start = (buf + " " + code, start) if buf else (code, i)
        if not code.rstrip().endswith("\\"):
            out.append((start, buf.replace("\\", " ")))
            buf = ""
    prose = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose):
        out.append((prose.count("\n", 0, m.start()) + 1, m.group(1).replace("\n", " ")))
    return out


def _script_options() -> set[str]:
    opts: set[str] = set()
    for script in (ROOT / "scripts").glob("*.py"):
        opts |= set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", script.read_text("utf-8")))
    return opts


def _doc_problems(text: str) -> list[str]:
    """Commands, subcommands, options, shipped example and experiment names (``ketasim ...``)
    and ``ketasim.module.name`` API names in ``text`` that the code does not have."""
    import importlib

    import typer

    from ketasim.cli import app
    from ketasim.experiments import EXPERIMENTS
    from ketasim.trial import example_names

    root = typer.main.get_command(app)

    def options(cmd) -> set[str]:
        return {"--help"} | {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)
                             if o.startswith("--")}

    every_option = set(_script_options()) | {"--help"}
    stack = [root]
    while stack:
        c = stack.pop()
        every_option |= options(c)
        stack += list(getattr(c, "commands", {}).values())

    def resolves(dotted: str) -> bool:
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for attr in parts[i:]:
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
        return False

    problems = []
    for line, code in _code_snippets(text):
        for o in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", code):
            if o not in every_option:
                problems.append(f"line {line}: no command has the option {o}: {code.strip()!r}")
        for m in re.finditer(r"\bketasim(?:\.\w+)+", code):
            name = m.group(0).rstrip(".")
            if name not in _METADATA_KEYS and not resolves(name):
                problems.append(f"line {line}: no Python name {name}")
        for part in re.split(r"(?=(?<![\w.-])ketasim [a-z])", code)[1:]:
            words = part.split()
            name, rest = words[1], words[2:]
            if name not in root.commands:
                problems.append(f"line {line}: no command `ketasim {name}`")
                continue
            cmd, label = root.commands[name], f"ketasim {name}"
            if getattr(cmd, "commands", None) and rest and not rest[0].startswith("-"):
                if rest[0] not in cmd.commands:
                    problems.append(f"line {line}: no command `{label} {rest[0]}`")
                    continue
                cmd, label, rest = cmd.commands[rest[0]], f"{label} {rest[0]}", rest[1:]
            for o in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", " ".join(rest)):
                if o not in options(cmd):
                    problems.append(f"line {line}: `{label}` has no option {o}")
            arg = rest[0] if rest and not rest[0].startswith(("-", "[")) else None
            if arg and name in ("trial", "export-sbml") and arg.isidentifier() \
                    and arg not in example_names():
                problems.append(f"line {line}: no shipped scenario {arg!r} (`{label}`)")
            if arg and name == "experiment" and re.fullmatch(r"[a-z0-9-]+", arg) \
                    and arg not in EXPERIMENTS:
                problems.append(f"line {line}: no experiment {arg!r}")
    return problems


def test_commands_options_and_api_names_in_the_docs_exist() -> None:
    """Every `ketasim COMMAND [SUB] --option`, shipped scenario or experiment name and
    `ketasim.module.name` in a code span or block of the user-facing docs exists in the code
    (option defaults and outputs are checked by the tests of each command)."""
    problems = [f"{p.relative_to(ROOT)} {msg}" for p in _doc_pages()
                for msg in _doc_problems(p.read_text(encoding="utf-8"))]
    assert problems == []


def test_doc_name_check_catches_a_broken_doc() -> None:
    broken = """
Run `ketasim trial murrough2013a --jsn` or `ketasim frobnicate`, then
`ketasim calibrate clinc`, `ketasim experiment rapamycine --json`,
`ketasim export-sbml transform3 --out x.xml` and `ketasim.pk.simulate_pkk(...)`.

```bash
.venv/bin/ketasim pk --drug ketamine \\
    --dose "0.5 mg/kg" --weigth 70     # typo on the continued line
ketasim sensitivity --endpoint "madrs_change@24h"   # --not-checked-in-a-comment
```
The `--no-such-flag` option.
"""
    problems = "\n".join(_doc_problems(broken))
    for expected in ("`ketasim trial` has no option --jsn", "no command `ketasim frobnicate`",
                     "no command `ketasim calibrate clinc`", "no experiment 'rapamycine'",
                     "no shipped scenario 'transform3'", "no Python name ketasim.pk.simulate_pkk",
                     "`ketasim pk` has no option --weigth", "no command has the option "
                     "--no-such-flag"):
        assert expected in problems, (expected, problems)
    assert "--not-checked" not in problems
    good = "`ketasim trial murrough2013a --json`, `ketasim docs model --out docs/model.md`"
    assert _doc_problems(good) == []


@pytest.mark.parametrize("page", ["README.md", "docs/getting-started.md",
                                  "docs/guides/scenario.md", "docs/scale-out.md"])
def test_python_examples_in_the_docs_run(page: str, tmp_path: Path, monkeypatch, capsys) -> None:
    """The self-contained Python blocks of these pages run as written (in a scratch folder
    prepared as the page says: `my-trial.toml` copied from a shipped scenario, `run1` written
    by `ketasim trial ... --out run1`)."""
    import shutil

    from ketasim import scenarios

    text = (ROOT / page).read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, page
    monkeypatch.chdir(tmp_path)
    shutil.copy(Path(scenarios.__path__[0]) / "murrough2013a.toml", "my-trial.toml")
    if "run1" in text:
        assert main(["trial", "murrough2013a", "--n", "12", "--out", "run1"]) == 0
    for block in blocks:
        exec(compile(block, page, "exec"), {"__name__": "__doc_example__"})
    capsys.readouterr()
