"""MkDocs hooks: the repository's own documents (CHANGELOG.md, the cache format, the synthetic benchmark's
README, the committed reports and their figures, the benchmark scripts) become pages and files of the site
under repo/, so a docs page links them as it would on GitHub (`../reports/synth-logg/report.md`) and a
strict build still checks every such link. Each is documented once, where it lives in the repository.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files, InclusionLevel

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "repo"
# what the site mounts from the repository (globs relative to its root)
MOUNTED = ["CHANGELOG.md", "ARCHITECTURE.md", "featcache/cache/FORMAT.md", "data/README.md",
           "featcache/data/encoders/README.md", "featcache/data/korg/README.md", "featcache/data/lines.csv",
           "reports/README.md", "reports/*/*.md", "reports/*/*.png", "reports/*/*.csv", "reports/*/*/*.md",
           "reports/*/*/*.png", "benchmarks/*.py", "benchmarks/*.sh"]
LINK = re.compile(r"(\]\()([^)\s]+)(\))")


def on_files(files: Files, config: dict) -> Files:
    for pattern in MOUNTED:
        for path in sorted(ROOT.glob(pattern)):
            rel = path.relative_to(ROOT).as_posix()
            files.append(File.generated(config, f"{PREFIX}/{rel}", abs_src_path=str(path),
                                        inclusion=InclusionLevel.NOT_IN_NAV))
    return files


def _rewrite(src_uri: str, mounted: bool):
    """A link function for one page: targets outside docs/ (or, in a mounted file, anywhere in the repository)
    point at their mounted copy under repo/."""
    page_dir = posixpath.dirname(src_uri)

    def replace(match: re.Match[str]) -> str:
        target = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return match.group(0)
        path, _, anchor = target.partition("#")
        if not path:
            return match.group(0)
        resolved = posixpath.normpath(posixpath.join(page_dir, path))
        if mounted:  # a mounted file's links are relative to its place in the repository
            in_repo = resolved[len(PREFIX) + 1:] if resolved.startswith(PREFIX + "/") else None
            if in_repo is None or not (ROOT / in_repo).exists():
                return match.group(0)
            if in_repo.startswith("docs/"):  # a docs page: the site's own
                resolved = in_repo[len("docs/"):]
            elif (ROOT / in_repo).is_dir() and (ROOT / in_repo / "README.md").exists():
                resolved = posixpath.join(resolved, "README.md")
        elif resolved.startswith("../"):
            in_repo = resolved[3:]
            if (ROOT / in_repo).is_dir() and (ROOT / in_repo / "README.md").exists():
                in_repo = posixpath.join(in_repo, "README.md")
            resolved = f"{PREFIX}/{in_repo}"
        else:
            return match.group(0)
        new = posixpath.relpath(resolved, page_dir or ".")
        return f"{match.group(1)}{new}{'#' + anchor if anchor else ''}{match.group(3)}"

    return replace


def on_page_markdown(markdown: str, page, config, files) -> str:
    src = page.file.src_uri
    return LINK.sub(_rewrite(src, src.startswith(PREFIX + "/")), markdown)
