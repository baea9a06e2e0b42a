"""The package's layers: a module never imports from a layer above its own.

Reads every import in ``oppy/`` (function-level and TYPE_CHECKING imports included: each is a dependency
arrow all the same) and checks it against the order in README.md's layout section. Layers with a strictly
increasing rank cannot import each other in a circle, so the one rule covers both.

``KNOWN_VIOLATIONS`` lists the arrows that point up today, while the re-cut removes them: an arrow not in the
list fails, and so does a listed arrow that is gone (so the list only shrinks, and reaches empty).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "oppy"

#: Bottom to top. A layer may import its own modules and any layer of a lower rank.
LAYERS: dict[str, int] = {
    "__init__": 0, "logs": 0, "cstring": 0, "cell": 0,
    # closing: a set of open connections that says when the last has closed (Twisted only).
    "closing": 0,
    "crypto": 1,
    "netdoc": 2,
    # pt (pluggable transports) imports only logs: config parses ClientTransportPlugin with it, and the link
    # layer reaches a transport bridge through its endpoints.
    "pt": 2,
    # config reads torrc text and the command line; it needs crypto (hashed control passwords), logs
    # (LogSpec) and netdoc (DirAuthority/FallbackDir lines) only, so every layer above may take its values.
    "config": 3,
    # hs: onion services' pure half (addresses, blinding, hash ring, descriptors); reads cell, crypto and
    # netdoc only, beside config, below path and every layer that builds circuits.
    "hs": 3,
    "path": 4,
    "link": 5,
    "stream": 6,
    "circuit": 7,
    "socks": 8,
    # The DNSPort, a front door beside socks (which also serves the HTTPTunnelPorts).
    "dns": 8,
    # Front doors for Twisted programs: connections through an oppy (in process, or over a SocksPort).
    "endpoints": 8, "web": 8,
    "directory": 9,
    # hsclient: the onion-service client; builds on the circuit manager and directory's BEGIN_DIR client
    # (beside directory, which never imports it), below control, which reports its HS_DESC events.
    "hsclient": 9,
    # The listeners of every client port (SocksPort, HTTPTunnelPort, DNSPort), over the protocols they speak.
    "doors": 9,
    "control": 10,
    "daemon": 11, "cli": 11, "__main__": 11,
    # oppy.launch: the daemon in a Twisted program's own process.
    "library": 12,
}

#: The package's public face: ``oppy.launch`` is resolved on first attribute access (PEP 562
#: ``__getattr__`` in oppy/__init__.py), never when a module imports ``oppy`` for ``__version__``.
PUBLIC_FACADE: set[tuple[str, str]] = {("oppy", "oppy.library")}

#: (importing module, imported module) arrows that point up today; the re-cut empties this list.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every ``oppy`` module named by an import anywhere in the file, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
    return {name for name in names if name == "oppy" or name.startswith("oppy.")}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward_imports() -> set[tuple[str, str]]:
    arrows = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        for imported in imported_modules(path):
            if LAYERS[layer_of(imported)] > LAYERS[layer_of(importer)] \
                    and (importer, imported) not in PUBLIC_FACADE:
                arrows.add((importer, imported))
    return arrows


def test_every_layer_is_ranked():
    layers = {layer_of(module_name(path)) for path in PACKAGE.rglob("*.py")}
    assert layers <= set(LAYERS), f"unranked layers: {sorted(layers - set(LAYERS))}"


def test_no_import_points_up_beyond_the_known_ones():
    found = upward_imports()
    assert found - KNOWN_VIOLATIONS == set(), "imports from a higher layer"
    assert KNOWN_VIOLATIONS - found == set(), "fixed: remove these from KNOWN_VIOLATIONS"


def test_the_checker_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    package = tmp_path / "oppy"
    (package / "cell").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "cell" / "__init__.py").write_text("")
    (package / "cell" / "a.py").write_text("def f():\n    from ..control import x\n")
    (package / "cell" / "b.py").write_text("from . import a\nimport oppy.daemon\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    assert upward_imports() == {("oppy.cell.a", "oppy.control"), ("oppy.cell.b", "oppy.daemon")}
