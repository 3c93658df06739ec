"""The docs site builds with `mkdocs build --strict` (a broken link, page or image fails), and the command
examples marked in the docs run on digits-lt (the marker is described in docs/development.md)."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ltadv.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Appended to `ltadv train` / `ltadv run` in marked examples so that every page's examples take seconds.
QUICK = ["--epochs", "1", "--train.max_batches", "2", "--eval.max_batches", "1", "--eval.n", "50",
         "--eval.val_n", "20"]
MARKER = re.compile(r"<!-- test: (run|python)((?:, expect(?: \"[^\"]*\")+)?) -->\n```(\w+)\n(.*?)\n```", re.S)


def marked_blocks(text: str) -> list[tuple[str, list[str], str]]:
    """(kind, expected texts, code) of every marked fenced block, in page order."""
    return [(kind, re.findall(r"\"([^\"]*)\"", expect), code) for kind, expect, _, code in MARKER.findall(text)]


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "--site-dir",
                           str(site)], capture_output=True, text=True, env=env, cwd=config.parent)


def test_docs_site_builds_strict(tmp_path):
    proc = _mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode == 0, proc.stderr[-3000:]
    pages = sorted(p.stem for p in DOCS.glob("*.md"))
    for page in pages:  # every page is built (strict mode already fails on one left out of the nav)
        built = tmp_path / "site" / ("index.html" if page == "index" else f"{page}/index.html")
        assert built.is_file(), page
    for fig in DOCS.glob("figures/*.png"):  # the committed figures are copied and linked from a page
        assert (tmp_path / "site" / "figures" / fig.name).is_file()
    html = (tmp_path / "site" / "reports" / "index.html").read_text()
    assert "../figures/tau_b.png" in html and "../figures/seeds_classwise.png" in html


def test_docs_build_fails_on_a_broken_link_or_image(tmp_path):
    """The strict build is what catches a broken page: a copy of the docs with one bad link fails, naming it."""
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    page = tmp_path / "docs" / "data.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md) and ![a plot](figures/none.png).\n")
    proc = _mkdocs(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode != 0
    assert "no-such-page.md" in proc.stderr and "figures/none.png" in proc.stderr


def test_marker_parsing():
    text = ('<!-- test: run, expect "a b" "c" -->\n```bash\nltadv list  # x\n```\n'
            "```bash\nltadv not-marked\n```\n<!-- test: python -->\n```python\nprint(1)\n```\n")
    assert marked_blocks(text) == [("run", ["a b", "c"], "ltadv list  # x"), ("python", [], "print(1)")]


PAGES = sorted(p.name for p in DOCS.glob("*.md") if marked_blocks(p.read_text()))


def test_every_marker_is_parsed():
    """A marker the pattern does not match (a typo, no block after it) would silently test nothing."""
    for page in DOCS.glob("*.md"):
        text = page.read_text()
        assert len(re.findall(r"^<!-- test:", text, re.M)) == len(marked_blocks(text)), page.name
    assert {"evaluation.md", "python-api.md", "reports.md", "data.md"} <= set(PAGES)


def _run_line(line: str) -> None:
    args = shlex.split(line, comments=True)
    assert args and args[0] == "ltadv", f"a marked bash block may hold only ltadv commands: {line!r}"
    args = args[1:] + (QUICK if args[1] in ("train", "run") else [])
    try:
        rc = main(args)
    except SystemExit as e:  # argparse errors exit
        rc = e.code
    assert rc in (0, None), f"`{line}` exited {rc}"


@pytest.mark.parametrize("page", PAGES)
def test_docs_examples_run(page, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    for kind, expect, code in marked_blocks((DOCS / page).read_text()):
        if kind == "run":
            for line in code.splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    _run_line(line.strip())
        else:
            exec(compile(code, f"{page} python block", "exec"), {"__name__": "__docs__"})
        out = capsys.readouterr()
        for text in expect:
            assert text in out.out + out.err, f"{page}: {text!r} not printed by:\n{code}"


def doc_commands():
    """(file, command line, arguments after `ltadv`) of every ltadv command in a bash block of the README
    and the docs (also `torchrun ... -m ltadv ...` and `a && b`); lines with placeholders such as
    `[--n N]` or `...` are left out."""
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)\n```", path.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                for part in line.split("&&"):
                    args = shlex.split(part, comments=True)
                    if not args or args[0] not in ("ltadv", "torchrun") or "ltadv" not in args:
                        continue
                    if any("[" in a or "..." in a for a in args):
                        continue
                    yield path.name, part.strip(), args[args.index("ltadv") + 1:]


def test_every_documented_command_parses(monkeypatch):
    """Each ltadv command shown in the README and the docs names a real command and real flags, and its
    settings resolve to a valid config (nothing runs): a renamed flag or config field fails here."""
    from ltadv.cli import _config_from_args, _parse_overrides, build_parser

    monkeypatch.chdir(ROOT)  # `--config configs/...` paths are relative to the repository
    seen = set()
    for name, line, argv in doc_commands():
        seen.add(argv[0])
        try:
            args, extra = build_parser().parse_known_args(argv)
        except SystemExit as e:  # --help exits 0 after printing; a parse error exits 2
            if e.code == 0:
                continue
            pytest.fail(f"{name}: `{line}` does not parse")
        if args.command in ("train", "run", "config", "subset") and not getattr(args, "resume", None):
            if args.command == "run" and args.data is None and args.config is None and args.protocol is None:
                args.data = "digits-lt"  # as `ltadv run` does
            for method in (args.method or "").split(",") if args.command == "run" else [None]:
                try:
                    _config_from_args(args, extra, method=method or None)
                except ValueError as e:  # ConfigError: an unknown or bad field
                    pytest.fail(f"{name}: `{line}`: {e}")
        elif args.command == "sweep":
            _parse_overrides(extra)
        else:
            assert not extra, f"{name}: `{line}`: unknown arguments {extra}"
    assert {"train", "run", "eval", "report", "sweep", "protocols", "export", "posthoc", "config"} <= seen
