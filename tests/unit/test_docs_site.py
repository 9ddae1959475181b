"""The docs site builds with ``mkdocs build --strict`` (a broken link, a missing page or a bad reference fails it), its
generated pages cover every command and config section, and the README's links point at files that exist."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MISSING = [
    m
    for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
    if importlib.util.find_spec(m.split(".")[0]) is None
    or (m == "mkdocstrings_handlers.python" and importlib.util.find_spec(m) is None)
]
needs_mkdocs = pytest.mark.skipif(
    bool(MISSING), reason=f"the docs extra is not installed (missing {', '.join(MISSING)}): pip install -e '.[docs]'"
)


def _load_docs_pages():
    spec = importlib.util.spec_from_file_location("docs_pages", ROOT / "scripts" / "docs_pages.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )


@needs_mkdocs
def test_site_builds_strict(tmp_path):
    res = _mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
    assert res.returncode == 0, res.stdout + res.stderr
    site = tmp_path / "site"
    for page in (
        "index.html",
        "reference/cli/index.html",
        "reference/config/index.html",
        "api/index.html",
        "results/SMALL_SIZES/index.html",
        "results/demo/report/index.html",
        "ARCHITECTURE/index.html",
    ):
        assert (site / page).is_file(), page
    api = (site / "api/index.html").read_text(encoding="utf-8")
    assert "compute_loss" in api and "build_config" in api  # mkdocstrings rendered the docstrings


class _KeepTags(yaml.SafeLoader):
    """mkdocs.yml's ``!!python/name:`` tags read as plain strings (the test only needs the other keys)."""


_KeepTags.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: suffix)


@needs_mkdocs
@pytest.mark.parametrize("link, fails", [("good.md", False), ("missing-page.md", True)])
def test_site_settings_make_a_broken_link_fatal(tmp_path, link, fails):
    """The site's own strict / validation settings, on a two-page site: a link to a missing page fails the build."""
    site_cfg = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_KeepTags)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(f"# Home\n\nSee [the other page]({link}).\n", encoding="utf-8")
    (docs / "good.md").write_text("# Good\n", encoding="utf-8")
    cfg = {
        "site_name": "t",
        "docs_dir": str(docs),
        "strict": site_cfg["strict"],
        "validation": site_cfg["validation"],
        "nav": ["index.md", "good.md"],
    }
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    res = _mkdocs(tmp_path / "mkdocs.yml", tmp_path / "site")
    if fails:
        assert res.returncode != 0 and "missing-page.md" in res.stdout + res.stderr, res.stdout + res.stderr
    else:
        assert res.returncode == 0, res.stdout + res.stderr


def test_cli_reference_has_every_command():
    from dpolab.cli import build_parser

    page = _load_docs_pages().cli_reference()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        assert f"## dpolab {name}\n" in page, name
        assert p.format_usage().split()[1:3] == ["dpolab", name]
    assert "## dpolab rm train\n" in page and "## dpolab rm score\n" in page
    for flag in ("--data", "--methods", "--dry-run", "--rows"):  # options of compare / inspect-data reach the page
        assert flag in page


def test_config_reference_has_every_section_and_key():
    from dpolab.config import describe_config

    page = _load_docs_pages().config_reference()
    text = describe_config()
    sections = re.findall(r"^\[([\w.]+)\]", text, flags=re.M)
    assert sections and all(f"## `{s}`" in page for s in sections)
    keys = re.findall(r"^  ([\w.]+) = ", text, flags=re.M)
    assert len(keys) > 50 and all(f"  {k} = " in page for k in keys)


def test_index_page_points_docs_links_inside_the_site():
    page = _load_docs_pages().index_page(
        "[a](docs/training.md) [b](docs/results/demo/report.md) [c](docs/) [d](https://x.org/docs/y.md)"
    )
    assert page == "[a](training.md) [b](results/demo/report.md) [c](index.md) [d](https://x.org/docs/y.md)"


def test_readme_links_exist():
    """Every relative link of the README (what GitHub and PyPI show) names a file or folder of the repository."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = [m for m in re.findall(r"\]\(([^)\s]+)\)", readme) if not re.match(r"[a-z]+:|#", m)]
    assert links
    missing = [m for m in links if not (ROOT / m.split("#")[0]).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_readme_stays_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200
