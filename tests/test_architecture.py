"""The house rules ARCHITECTURE.md states, held by reading the code: each package imports only what its
`__init__` says it may (its row of ARCHITECTURE.md), no module-level import cycle, no leading-underscore name
imported from another module, and no function over 80 lines or file over 500 without a reason in its docstring."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "featcache"
PACKAGES = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
MAX_FUNCTION_LINES, MAX_FILE_LINES = 80, 500


def _allowed(package: str) -> set[str] | None:
    """The featcache packages (or modules) `package` may import, from its __init__'s 'May import:' paragraph;
    None: any."""
    doc = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text())) or ""
    match = re.search(r"May import:(.*?)(?:\n\s*\n|$)", doc, re.S)
    assert match, f"featcache/{package}/__init__.py says nothing of what it may import"
    text = match.group(1)
    if "every other" in text:
        return None
    text = re.sub(r"\(never [^)]*\)", "", text)
    named = set(re.findall(r"featcache\.([a-z_]+(?:\.[a-z_]+)?)", text))
    bare = {w for w in re.findall(r"(?<![.\w])([a-z_]+)(?![.\w])", text) if w in PACKAGES}  # "common, spectra"
    return named | bare


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool = False) -> list[tuple[str, list[str]]]:
    """(absolute featcache module, imported names) of every import in a file (function-local ones too)."""
    tree = ast.parse(path.read_text())
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("featcache"):
                out.append((module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("featcache")]
    return out


def _files(package: str | None = None) -> list[Path]:
    return sorted((PACKAGE / package if package else PACKAGE).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_its_init_allows(package):
    allowed = _allowed(package)
    if allowed is None:
        return
    wrong = []
    for path in _files(package):
        for module, names in _imports(path):
            parts = module.split(".")
            if len(parts) < 2 or parts[1] in (package, "_version"):  # the version string sits below everything
                continue
            targets = [module] + [f"{module}.{n}" for n in names]  # `from ..model import taps` names a module
            ok = any(".".join(t.split(".")[1:3]) in allowed or t.split(".")[1] in allowed for t in targets)
            if not ok:
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not wrong, f"featcache/{package} may import only {sorted(allowed)}:\n" + "\n".join(wrong)


def test_no_module_level_import_cycle():
    graph: dict[str, set[str]] = {}
    modules = {_module_name(p) for p in _files()}
    for path in _files():
        edges = set()
        for module, names in _imports(path, top_level_only=True):
            for target in [f"{module}.{n}" for n in names] + [module]:
                if target in modules:
                    edges.add(target)
                    break
        graph[_module_name(path)] = edges - {_module_name(path)}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [node, nxt]))
            if nxt not in state:
                visit(nxt, trail + [node] if nxt not in trail else trail)
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_no_private_name_is_imported_from_another_module():
    paths = _files() + sorted((ROOT / "cli").glob("*.py"))
    wrong = [f"{path.relative_to(ROOT)}: {name} from {module}" for path in paths
             for module, names in _imports(path) for name in names if name.startswith("_") and name != "__version__"]
    assert not wrong, "\n".join(wrong)


def _reasoned(doc: str | None) -> bool:
    return bool(doc) and bool(re.search(r"\b(long|large|longer|larger) because\b|\bone place\b|\bkept whole\b",
                                        doc or "", re.I))


def test_functions_and_files_are_short_or_say_why():
    long = []
    for path in _files() + sorted((ROOT / "cli").glob("*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        if len(source.splitlines()) > MAX_FILE_LINES and not _reasoned(ast.get_docstring(tree)):
            long.append(f"{path.relative_to(ROOT)}: {len(source.splitlines())} lines")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and not _reasoned(ast.get_docstring(node)):
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "over the limits without a reason ('long because ...') in the docstring:\n" + "\n".join(long)


def test_the_wheel_lists_every_package():
    """pyproject.toml names the packages the wheel holds: a package missing there imports from a checkout and
    fails in the installed wheel (as featcache.information did)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert {f"featcache.{name}" for name in PACKAGES} | {"featcache", "featcache_cli"} == listed
