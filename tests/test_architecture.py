"""The package's structure (docs/architecture.md): imports point down the data flow, no import cycle,
the CLI stays on top and its commands apart, no function too long to read on a screen or two.

Every module is parsed with ``ast``, every import counted wherever it is (inside functions and
``if TYPE_CHECKING:`` too). The checks take a mapping of file paths (relative, starting with the
package's folder) to source text, so each is also shown to fail on a small synthetic package.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import sleepstage_cli

PACKAGE_DIR = Path(sleepstage_cli.__file__).resolve().parent

LAYERS = ("shared", "io", "simulate", "conditioning", "data", "spectrograms", "model", "scoring", "evaluation",
          "report", "training", "cli")
"""Lowest first. A module may import its own layer and those below; top-level modules are "shared"."""

MAX_FUNCTION_LINES = 100
"""Longest function or method (a command's: not counting its parameter list, the option declarations)."""


# --------------------------------------------------------------------------- reading the package

@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. sleepstage_cli.io.edf (a package's __init__.py is the package's name)
    path: str  # relative, e.g. sleepstage_cli/io/edf.py
    is_package: bool
    tree: ast.Module


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # the module imported: for ``from a.b import c``, a.b.c if that is a module, else a.b
    line: int

    def where(self, modules: dict[str, Module]) -> str:
        return f"{modules[self.importer].path}:{self.line}"


def package_sources(package_dir: Path = PACKAGE_DIR) -> dict[str, str]:
    """Every module of the package under ``package_dir``: relative path -> source."""
    base = package_dir.parent
    return {p.relative_to(base).as_posix(): p.read_text(encoding="utf-8") for p in sorted(package_dir.rglob("*.py"))}


def parse(sources: dict[str, str]) -> dict[str, Module]:
    modules = {}
    for path, text in sources.items():
        parts = path.removesuffix(".py").split("/")
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = Module(name, path, is_package, ast.parse(text, filename=path))
    return modules


def _resolve(module: Module, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    parts = module.name.split(".")
    if not module.is_package:
        parts = parts[:-1]
    parts = parts[:len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def imports(modules: dict[str, Module]) -> list[Import]:
    """Every import of a module of this package, by any module of it."""
    package = next(iter(modules)).split(".")[0]
    out = []
    for module in modules.values():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in dict.fromkeys(targets):
                if (target == package or target.startswith(package + ".")) and target != module.name:
                    out.append(Import(module.name, target, node.lineno))
    return out


def layer(name: str) -> str:
    parts = name.split(".")
    if len(parts) >= 2 and parts[1] == "__main__":  # the entry point: `python -m sleepstage_cli`
        return "cli"
    return parts[1] if len(parts) >= 2 and parts[1] in LAYERS else "shared"


# --------------------------------------------------------------------------- the checks (each returns problems)

def upward_imports(sources: dict[str, str]) -> list[str]:
    modules = parse(sources)
    return [f"{imp.where(modules)}: {imp.importer} ({layer(imp.importer)}) imports {imp.target} "
            f"({layer(imp.target)}), a higher layer"
            for imp in imports(modules) if LAYERS.index(layer(imp.target)) > LAYERS.index(layer(imp.importer))]


def import_cycles(sources: dict[str, str]) -> list[str]:
    """Strongly connected components of more than one module in the import graph, with their edges."""
    modules = parse(sources)
    edges: dict[str, list[Import]] = {m: [] for m in modules}
    for imp in imports(modules):
        if imp.target in modules:
            edges[imp.importer].append(imp)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in modules:  # Tarjan's algorithm, iterative
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = len(index)
                stack.append(v)
                on_stack.add(v)
            if i < len(edges[v]):
                work.append((v, i + 1))
                w = edges[v][i].target
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            for imp in edges[v]:
                if imp.target in on_stack:
                    low[v] = min(low[v], low[imp.target])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    problems = []
    for component in components:
        inside = [f"{imp.where(modules)} {imp.importer} -> {imp.target}" for m in component for imp in edges[m]
                  if imp.target in component]
        problems.append(f"import cycle between {', '.join(component)}: " + "; ".join(inside))
    return problems


def cli_imports(sources: dict[str, str]) -> list[str]:
    """Commands importing each other, and the core importing the CLI."""
    modules = parse(sources)
    package = next(iter(modules)).split(".")[0]
    cli, commands = f"{package}.cli", f"{package}.cli.commands"
    problems = []
    for imp in imports(modules):
        to_commands = imp.target == commands or imp.target.startswith(commands + ".")
        if imp.importer.startswith(commands + ".") and to_commands:
            problems.append(f"{imp.where(modules)}: command module {imp.importer} imports {imp.target} "
                            "(shared pieces go to cli/options.py or cli/display.py)")
        elif layer(imp.importer) != "cli" and (imp.target == cli or imp.target.startswith(cli + ".")):
            problems.append(f"{imp.where(modules)}: {imp.importer} is outside cli/ but imports {imp.target}")
    return problems


def long_functions(sources: dict[str, str], limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Functions and methods longer than ``limit`` lines; in command modules, counted after the signature."""
    modules = parse(sources)
    package = next(iter(modules)).split(".")[0]
    problems = []
    for module in modules.values():
        command = module.name.startswith(f"{package}.cli.commands.")
        for node in ast.walk(module.tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if command:
                parts = [*ast.walk(node.args), *([node.returns] if node.returns else [])]
                signature_end = max([node.lineno, *(n.end_lineno for n in parts if getattr(n, "end_lineno", None))])
                length, what = node.end_lineno - signature_end, "lines after its parameter list"
            else:
                length, what = node.end_lineno - node.lineno + 1, "lines"
            if length > limit:
                problems.append(f"{module.path}:{node.lineno}: {node.name} has {length} {what} (at most {limit}): "
                                "split it into named steps")
    return problems


# --------------------------------------------------------------------------- the package

def _assert_none(problems: list[str]) -> None:
    assert not problems, "\n".join(problems)


def test_no_upward_import() -> None:
    _assert_none(upward_imports(package_sources()))


def test_no_import_cycle() -> None:
    _assert_none(import_cycles(package_sources()))


def test_cli_on_top_and_commands_apart() -> None:
    _assert_none(cli_imports(package_sources()))


def test_no_long_function() -> None:
    _assert_none(long_functions(package_sources()))


def test_the_package_is_read_whole() -> None:
    modules = parse(package_sources())
    assert {"sleepstage_cli", "sleepstage_cli.__main__", "sleepstage_cli.io.edf", "sleepstage_cli.cli.commands.score",
            "sleepstage_cli.model.nets"} <= set(modules)
    assert {layer(m) for m in modules} == set(LAYERS)
    # function-level and relative imports count
    found = {(i.importer, i.target) for i in imports(modules)}
    assert ("sleepstage_cli.model.nets", "sleepstage_cli.model.nets.blocks") in found
    assert ("sleepstage_cli.cli.main", "sleepstage_cli.cli.commands.score") in found


# --------------------------------------------------------------------------- each check fails when it should

def _fake(files: dict[str, str]) -> dict[str, str]:
    """A synthetic package ``pkg``: paths inside it (``io/edf.py``) -> source."""
    return {"pkg/__init__.py": "", **{f"pkg/{path}": text for path, text in files.items()}}


def test_upward_import_is_found_even_inside_a_function() -> None:
    sources = _fake({"io/edf.py": "import os\n",
                     "report/html.py": "from pkg.io.edf import x\n",
                     "evaluation/evaluate.py": "def f():\n    from pkg.report import html\n    return html\n"})
    problems = upward_imports(sources)
    assert problems == ["pkg/evaluation/evaluate.py:2: pkg.evaluation.evaluate (evaluation) imports "
                        "pkg.report.html (report), a higher layer"]
    assert upward_imports({**sources, "pkg/evaluation/evaluate.py": "from pkg.io import edf\n"}) == []


def test_top_level_modules_are_the_lowest_layer_and_main_is_cli() -> None:
    problems = upward_imports(_fake({"errors.py": "from pkg.io.edf import x\n",
                                     "io/edf.py": "from pkg import errors\n",
                                     "__main__.py": "from pkg.cli.main import main\n",
                                     "cli/main.py": ""}))
    assert problems == ["pkg/errors.py:1: pkg.errors (shared) imports pkg.io.edf (io), a higher layer"]


def test_import_cycle_is_found_through_a_function_level_import() -> None:
    sources = _fake({"training/crossval.py": "from pkg.training import jobs\n",
                     "training/jobs.py": "import os\n\n\ndef run():\n    from pkg.training.crossval import finish\n",
                     "training/train.py": "from pkg.training import jobs\n"})
    problems = import_cycles(sources)
    assert problems == ["import cycle between pkg.training.crossval, pkg.training.jobs: "
                        "pkg/training/crossval.py:1 pkg.training.crossval -> pkg.training.jobs; "
                        "pkg/training/jobs.py:5 pkg.training.jobs -> pkg.training.crossval"]
    assert import_cycles({**sources, "pkg/training/jobs.py": "import os\n"}) == []


def test_relative_import_cycle_is_found() -> None:
    sources = _fake({"model/nets/__init__.py": "from .blocks import Net\n",
                     "model/nets/blocks.py": "from . import arnn\n",
                     "model/nets/arnn.py": "from .. import nets\n"})
    problems = import_cycles(sources)
    assert len(problems) == 1, problems
    assert problems[0].startswith("import cycle between pkg.model.nets, pkg.model.nets.arnn, pkg.model.nets.blocks:")
    assert "pkg/model/nets/arnn.py:1 pkg.model.nets.arnn -> pkg.model.nets" in problems[0]


def test_command_importing_a_command_is_found() -> None:
    sources = _fake({"cli/options.py": "X = 1\n",
                     "cli/commands/train.py": "from pkg.cli.options import X\n",
                     "cli/commands/crossval.py": "from pkg.cli.options import X\n\n\n"
                                                 "def f():\n    from pkg.cli.commands.train import X\n"})
    problems = cli_imports(sources)
    assert len(problems) == 1
    assert problems[0].startswith("pkg/cli/commands/crossval.py:5: command module pkg.cli.commands.crossval "
                                  "imports pkg.cli.commands.train")


def test_core_importing_the_cli_is_found() -> None:
    sources = _fake({"interrupts.py": "from pkg.cli import console as con\n",
                     "cli/console.py": "",
                     "cli/main.py": "import pkg.cli\n",
                     "__main__.py": "from pkg.cli.main import main\n"})
    assert cli_imports(sources) == ["pkg/interrupts.py:1: pkg.interrupts is outside cli/ but imports pkg.cli.console"]


def _function(name: str, body_lines: int, params: int = 0, indent: str = "") -> str:
    """A function of 1 + body_lines lines, or with ``params`` parameters one a line, params + 2 + body_lines."""
    if params:
        head = (f"{indent}def {name}(\n" + "".join(f"{indent}    p{i}: int = {i},\n" for i in range(params))
                + f"{indent}) -> None:\n")
    else:
        head = f"{indent}def {name}():\n"
    return head + "".join(f"{indent}    x = {i}\n" for i in range(body_lines))


def test_long_function_and_method_are_found() -> None:
    sources = _fake({"io/edf.py": _function("short", 99) + "\n\n" + _function("long", 100),
                     "report/svg.py": "class A:\n" + _function("method", 101, indent="    ")})
    problems = long_functions(sources)
    assert [p.split(": ")[0] for p in problems] == ["pkg/io/edf.py:103", "pkg/report/svg.py:2"], problems
    assert "long has 101 lines" in problems[0] and "method has 102 lines" in problems[1]


def test_command_parameter_lists_do_not_count() -> None:
    command = "import typer\n\n\n@app.command()\n" + _function("score", 100, params=40)
    assert long_functions(_fake({"cli/commands/score.py": command})) == []
    problems = long_functions(_fake({"cli/commands/score.py": command + "    y = 1\n"}))
    assert len(problems) == 1
    assert problems[0].startswith("pkg/cli/commands/score.py:5: score has 101 lines after its parameter list")
    # outside cli/commands, the parameter list counts
    assert len(long_functions(_fake({"io/edf.py": _function("read", 60, params=40)}))) == 1
