"""The documentation stays true: README.md and the pages under docs/ link only to files and headings that exist,
the README's set-up commands are the ones CI runs, every option a command's --help lists is documented on that
command's page, and every --help ends with worked examples that the real parser accepts."""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

from DistilIQALib.cli import EXAMPLES, build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

#: The page that documents each command (a command's options must be named there). The options of an argument
#: group named here go to that group's page instead.
COMMAND_PAGES = {
    "score": "docs/command-line.md", "demo": "docs/command-line.md", "info": "docs/command-line.md",
    "batch": "docs/batch.md", "merge": "docs/batch.md", "listen": "docs/dicom-server.md",
    "preprocess": "docs/training.md", "train-teacher": "docs/training.md", "train-student": "docs/training.md",
    "evaluate": "docs/training.md", "recipe": "docs/training.md", "calibrate": "docs/training.md",
}
GROUP_PAGES = {("batch", "DICOMweb server"): "docs/dicom-server.md"}
GLOBAL_PAGE = "docs/command-line.md"

FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.S | re.M)
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SRC = re.compile(r"""<(?:img|a)\b[^>]*?\b(?:src|href)=["']([^"']+)["']""")


def _prose(text: str) -> str:
    """The Markdown without its fenced code blocks (a ``# comment`` in a shell block is no heading, a ``[x](y)``
    in code no link)."""
    return FENCE.sub("", text)


def _anchors(path: Path) -> Set[str]:
    """GitHub's anchors for the headings of a Markdown file: lower case, punctuation dropped (hyphens and
    underscores kept), spaces to hyphens; a repeated heading gets -1, -2 ..."""
    seen: Dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", _prose(path.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        anchors.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return anchors


def _links(path: Path) -> List[str]:
    text = _prose(path.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code
    return LINK.findall(text) + HTML_SRC.findall(text)


def _relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)


def test_the_pages_exist_and_each_opens_with_what_its_reader_will_do():
    names = {path.name for path in DOCS.glob("*.md")}
    assert {"slicer.md", "command-line.md", "batch.md", "dicom-server.md", "training.md",
            "development.md"} <= names
    for path in DOCS.glob("*.md"):
        first = _prose(path.read_text()).split("\n\n")[1]
        assert first.startswith("On this page you "), (
            f"{path.relative_to(ROOT)}: the first paragraph after the title should say what its reader will do "
            f"('On this page you ...'), not {first[:60]!r}")


def test_every_relative_link_and_picture_exists_with_its_heading():
    broken = []
    for page in PAGES:
        for target in _links(page):
            if not _relative(target):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (page.parent / file_part).resolve() if file_part else page
            name = f"{page.relative_to(ROOT)}: ({target})"
            if not linked.exists():
                broken.append(f"{name}: no file {linked.relative_to(ROOT) if ROOT in linked.parents else linked}")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{name}: {linked.relative_to(ROOT)} has no heading with the anchor #{anchor}")
            elif anchor and linked.suffix != ".md":
                broken.append(f"{name}: an anchor into a file that is not Markdown")
    assert not broken, "broken links in the documentation:\n  " + "\n  ".join(broken)


def test_the_link_check_finds_broken_links_and_anchors(tmp_path):
    """The checker itself: GitHub's anchors, code blocks ignored, a missing file or heading found."""
    page = tmp_path / "page.md"
    page.write_text("# The page\n\n## DICOMweb: `batch --dicomweb`\n\n## 4. DICOM database (batch)\n\n## Speed\n\n"
                    "## Speed\n\n```bash\n# not a heading [x](missing.md)\n```\n\n"
                    "[a](#dicomweb-batch---dicomweb) [b](#4-dicom-database-batch) [c](#speed-1) ![d](pic.png) "
                    "[e](other.md#nowhere) [f](https://example.org/x.md) `[g](code.md)`\n")
    assert _anchors(page) == {"the-page", "dicomweb-batch---dicomweb", "4-dicom-database-batch", "speed", "speed-1"}
    assert _links(page) == ["#dicomweb-batch---dicomweb", "#4-dicom-database-batch", "#speed-1", "pic.png",
                            "other.md#nowhere", "https://example.org/x.md"]
    assert not _relative("https://example.org/x.md") and _relative("../LICENSE")


def test_every_picture_under_docs_images_is_shown_somewhere():
    """A picture that no page shows is either stale or a page lost its picture."""
    shown = set()
    for page in PAGES:
        shown |= {(page.parent / target).resolve() for target in _links(page) if _relative(target)}
    shown_elsewhere = (ROOT / "CMakeLists.txt").read_text()  # the Extensions Index screenshot
    orphans = [path.name for path in sorted((DOCS / "images").iterdir())
               if path.resolve() not in shown and f"docs/images/{path.name}" not in shown_elsewhere]
    assert not orphans, f"pictures under docs/images that no page shows: {orphans}"


def _setup_commands() -> Tuple[str, str, str]:
    readme = (ROOT / "README.md").read_text()
    setup = readme[readme.index("\n## Set-up\n"):]
    setup = setup[:setup.index("\n## ", 1)]
    commands = re.findall(r"```bash\n(.*?)\n```", setup, re.S)
    assert len(commands) == 2, f"README's Set-up should hold exactly two bash commands, holds {len(commands)}"
    return commands[0].strip(), commands[1].strip(), setup


def test_the_readme_test_command_is_the_one_ci_runs():
    demo, tests, _ = _setup_commands()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci, f"README's test command is not a line of .ci/run:\n  {tests}"
    # the demo command installs the same way, without the test extras, and runs the demo
    venv, install, run = [part.strip() for part in demo.split("&&")]
    ci_venv, ci_install, _ = [part.strip() for part in tests.split("&&")]
    assert venv == ci_venv
    assert install == ci_install.replace(' -e ".[test]"', " -e ."), install
    assert run == ".venv/bin/python -m DistilIQALib demo", run


def test_the_demo_writes_what_the_readme_says():
    """The files the README's set-up names are the demo command's defaults, as the real parser reads them."""
    demo, _, setup = _setup_commands()
    argv = shlex.split(demo.split("&&")[-1])[3:]  # after .venv/bin/python -m DistilIQALib
    args = build_parser().parse_args(argv)
    assert args.command == "demo"
    for written in (args.out, args.plot, args.json, f"{args.sample}/"):
        assert f"`{written}`" in setup, f"README's Set-up does not name the demo's output `{written}`"


def _subcommands() -> Dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> List[Tuple[str, str]]:
    """(option, argument group title) of every option --help lists."""
    found = []
    for group in parser._action_groups:
        for action in group._group_actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            found += [(option, group.title) for option in action.option_strings if option.startswith("--")]
    return found


def _named(option: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def test_every_command_has_a_page():
    missing = sorted(set(_subcommands()) - set(COMMAND_PAGES))
    assert not missing, (f"commands without a documentation page: {missing}; document each on its page under docs/ "
                         f"and name that page in COMMAND_PAGES of {Path(__file__).relative_to(ROOT)}")


def test_every_option_of_help_is_documented_on_its_page():
    undocumented = []
    texts = {page: (ROOT / page).read_text() for page in {*COMMAND_PAGES.values(), *GROUP_PAGES.values()}}
    for name, parser in _subcommands().items():
        for option, group in _options(parser):
            page = GROUP_PAGES.get((name, group), COMMAND_PAGES.get(name))
            if page and not _named(option, texts[page]):
                undocumented.append(f"`{name} {option}`: add a row to the options table of `{name}` on {page}")
    top = build_parser()
    for option, _ in _options(top):
        if not _named(option, (ROOT / GLOBAL_PAGE).read_text()):
            undocumented.append(f"`distiliqa {option}`: document it on {GLOBAL_PAGE}")
    assert not undocumented, "options that --help lists but the documentation does not:\n  " + "\n  ".join(
        undocumented)


def _option_tables() -> List[Tuple[str, str, List[str]]]:
    """(page, command, options in its rows) of every 'The options of `command` ...:' table."""
    tables = []
    for page in DOCS.glob("*.md"):
        text = page.read_text()
        for match in re.finditer(r"^The options of `([\w-]+)`[^\n]*:\n\n((?:\|[^\n]*\n?)+)", text, re.M):
            rows = [row for row in match.group(2).splitlines()[2:]]
            options = [re.match(r"\| `(--[\w-]+)", row).group(1) for row in rows if row.startswith("| `--")]
            tables.append((f"docs/{page.name}", match.group(1), options))
    return tables


def test_every_option_table_lists_only_options_the_command_has():
    """An option removed or renamed in the code leaves no stale row behind."""
    commands = _subcommands()
    tables = _option_tables()
    assert {command for _, command, _ in tables} >= set(commands) - {"info"}  # info: a positional only
    stale = []
    for page, command, options in tables:
        assert command in commands, f"{page}: an options table of `{command}`, which is no command"
        known = {option for option, _ in _options(commands[command])}
        stale += [f"{page}: `{command} {option}` is no option of `{command}`" for option in options
                  if option not in known]
        assert len(options) == len(set(options)), f"{page}: a row twice in the options table of `{command}`"
    assert not stale, "rows of options tables that --help does not list:\n  " + "\n  ".join(stale)


def test_every_help_ends_with_worked_examples_the_parser_accepts():
    commands = _subcommands()
    assert set(EXAMPLES) == set(commands), "every command has examples in cli.EXAMPLES, and only commands do"
    for name, parser in commands.items():
        text = parser.format_help()
        assert "\nexamples:\n" in text and text.rstrip().endswith(EXAMPLES[name][-1][1].splitlines()[-1].strip()), (
            f"`{name} --help` does not end with its examples")
        for _, lines in EXAMPLES[name]:
            for line in lines.splitlines():
                argv = shlex.split(line.replace("~/", "/home/user/"))
                assert argv[:2] == ["distiliqa", name], f"an example of `{name}` runs another command: {line}"
                try:
                    parsed = build_parser().parse_args(argv[1:])
                except SystemExit:
                    pytest.fail(f"the parser refuses the example of `{name}`: {line}")
                assert parsed.command == name


def test_a_stale_option_row_and_an_undocumented_option_are_caught(tmp_path, monkeypatch):
    """The two option checks on a page that lacks an option and names one the command does not have."""
    fake = tmp_path / "docs"
    fake.mkdir()
    (fake / "command-line.md").write_text("# CLI\n\nOn this page you score.\n\nThe options of `demo`:\n\n"
                                          "| option | what it does |\n|---|---|\n| `--sample DIR` | folder |\n"
                                          "| `--no-such-option` | none |\n")
    monkeypatch.setattr(sys.modules[__name__], "DOCS", fake)
    page, command, options = next(table for table in _option_tables() if table[1] == "demo")
    assert options == ["--sample", "--no-such-option"]
    known = {option for option, _ in _options(_subcommands()["demo"])}
    assert "--no-such-option" not in known and "--out" in known
    assert not _named("--out", (fake / "command-line.md").read_text())
    assert _named("--sample", (fake / "command-line.md").read_text())
    assert not _named("--sample", "--sample-size")


def test_the_project_addresses_in_the_module_and_the_extension_name_files_that_exist():
    """The Slicer module's help links to its page, and the extension's screenshot, icon and pages are addressed on
    the project's repository: each path must exist in this tree."""
    pattern = re.compile(r"https://(?:github\.com|raw\.githubusercontent\.com)/DistilIQA/SlicerDistilIQA/"
                         r"(?:blob/|raw/)?main/([^\s\"'#)<>]+)")
    sources = [ROOT / "DistilIQA" / "DistilIQA.py", ROOT / "CMakeLists.txt", *PAGES]
    found = {(path.relative_to(ROOT), target) for path in sources for target in pattern.findall(path.read_text())}
    assert (Path("DistilIQA/DistilIQA.py"), "docs/slicer.md") in found, "the module's help links to docs/slicer.md"
    missing = [f"{source}: {target}" for source, target in sorted(found) if not (ROOT / target).exists()]
    assert not missing, "project addresses naming no file of this tree:\n  " + "\n  ".join(missing)
