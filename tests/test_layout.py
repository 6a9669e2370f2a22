"""The layout of the code, read from the source (ast; nothing is imported): the core imports no
plugin, no import loop anywhere, ``metrics/`` sits below the trainer, and every function of the
core longer than 40 lines is a plain sequence of statements."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
CORE = ROOT / "core"
# the plugins' import packages (an install's onestep_*.egg-info folders beside them are not)
PLUGIN_DIRS = sorted(p for p in ROOT.glob("plugins/*/onestep_*") if (p / "__init__.py").is_file())
PLUGIN_PACKAGES = [p.name for p in PLUGIN_DIRS]
MAX_LINES = 40
MAX_BLOCK = 2  # statements a loop or branch of a "plain sequence" may hold
LONG_ON_PURPOSE = {"onestep.trainer._train"}
"""Functions exempt from the length rule, each named: the training loop reads top to bottom in
one screen (a step, then its chores in order) rather than split into pieces."""


def module_name(path: Path, base: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(base: Path, package: str) -> dict[str, Path]:
    return {module_name(p, base): p for p in sorted((base / package).rglob("*.py"))}


def imports(path: Path, name: str, known: set[str], top_level_only: bool = False) -> set[str]:
    """The modules of ``known`` that module ``name`` (file ``path``) imports."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph(base: Path, package: str, top_level_only: bool = False) -> dict[str, set[str]]:
    mods = modules(base, package)
    known = set(mods) | set(PLUGIN_PACKAGES)
    return {m: imports(p, m, known, top_level_only) for m, p in mods.items()}


def find_loop(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt in edges and not state.get(nxt):
                loop = visit(nxt, path + [node])
                if loop:
                    return loop
        state[node] = 2
        return None

    for start in sorted(edges):
        if not state.get(start):
            loop = visit(start, [])
            if loop:
                return loop
    return None


def core_graph() -> dict[str, set[str]]:
    return graph(CORE, "onestep")


def test_the_core_imports_no_plugin():
    offenders = {m: sorted(deps & set(PLUGIN_PACKAGES)) for m, deps in core_graph().items() if deps & set(PLUGIN_PACKAGES)}
    assert not offenders


@pytest.mark.parametrize("base, package", [(CORE, "onestep")] + [(p.parent, p.name) for p in PLUGIN_DIRS])
def test_no_import_loop(base, package):
    """Module-level imports form no loop; neither do all imports, deferred ones included."""
    assert find_loop(graph(base, package, top_level_only=True)) is None
    assert find_loop(graph(base, package)) is None


def test_metrics_sit_below_the_trainer():
    """``metrics/`` (evaluation) imports neither the trainer nor anything built on it: the API,
    the CLI, the commands, compare, export."""
    above = ("onestep.trainer", "onestep.api", "onestep.cli", "onestep.commands", "onestep.compare", "onestep.export")
    edges = core_graph()
    reach: dict[str, set[str]] = {}

    def reachable(m: str) -> set[str]:
        if m not in reach:
            reach[m] = set()
            for d in edges.get(m, ()):
                reach[m] |= {d} | reachable(d)
        return reach[m]

    for m in edges:
        if m.startswith("onestep.metrics"):
            bad = sorted(d for d in reachable(m) if d.startswith(above))
            assert not bad, (m, bad)


def plain_sequence(fn: ast.AST) -> bool:
    """Straight-line code: no loop, branch, ``with`` or ``try`` in it holds more than
    ``MAX_BLOCK`` statements (e.g. a parser built by a row of ``add_argument`` calls)."""
    blocks = (ast.For, ast.While, ast.If, ast.With, ast.Try, ast.AsyncFor, ast.AsyncWith)
    for node in ast.walk(fn):
        if isinstance(node, blocks):
            inner = sum(1 for n in ast.walk(node) if isinstance(n, ast.stmt)) - 1
            if inner > MAX_BLOCK:
                return False
    return True


def test_no_long_function_in_the_core_but_plain_sequences():
    long, exempt = [], set()
    for m, path in modules(CORE, "onestep").items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES and not plain_sequence(node):
                    name = f"{m}.{node.name}"
                    if name in LONG_ON_PURPOSE:
                        exempt.add(name)
                    else:
                        long.append(f"{name} ({lines} lines)")
    assert not long, long
    assert exempt == LONG_ON_PURPOSE, f"exempt but no longer long (drop the exemption): {LONG_ON_PURPOSE - exempt}"


def test_the_checks_see_what_they_look_for(tmp_path):
    """The checks can fail: a loop, a plugin import and a long branching function are found."""
    pkg = tmp_path / "demo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\nimport onestep_wflow\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    edges = graph(tmp_path, "demo")
    assert find_loop(edges) == ["demo.a", "demo.b", "demo.a"] and find_loop(graph(tmp_path, "demo", True)) is None
    assert PLUGIN_PACKAGES and "onestep_wflow" in edges["demo.a"]
    body = "\n".join(f"        x += {i}" for i in range(45))
    fn = ast.parse(f"def g(x):\n    for i in range(3):\n{body}\n    return x\n").body[0]
    assert not plain_sequence(fn)
    assert plain_sequence(ast.parse("def h(p):\n" + "\n".join(f"    p.add({i})" for i in range(45))).body[0])


# Words that are plugin component names and also the core's own vocabulary: config sections
# (guidance, features), a data kind (latents), a network role (classifier) and the core's own
# metric (sinkhorn). Every other plugin name in a core string is the core naming a method.
CORE_VOCABULARY = {"guidance", "features", "latents", "classifier", "sinkhorn"}


def registered_names(files) -> set[str]:
    """The ``name = "..."`` class attributes of ``files`` (components as users name them)."""
    names = set()
    for f in files:
        for node in ast.walk(ast.parse(Path(f).read_text())):
            if isinstance(node, ast.ClassDef):
                for st in node.body:
                    if (isinstance(st, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "name" for t in st.targets)
                            and isinstance(st.value, ast.Constant) and isinstance(st.value.value, str)):
                        names.add(st.value.value)
    return names


def plugin_names() -> set[str]:
    """Every name a plugin brings: its components, its package and its distribution name."""
    names = registered_names(ROOT.glob("plugins/*/onestep_*/*.py")) | set(PLUGIN_PACKAGES)
    names |= {f"onestep-{p.name}" for p in ROOT.glob("plugins/*") if p.is_dir()}
    hooks = {n.name for n in ast.walk(ast.parse((CORE / "onestep" / "hookspecs.py").read_text()))
             if isinstance(n, ast.FunctionDef)}  # onestep_couplers is a hook as well as a package
    return names - CORE_VOCABULARY - hooks - registered_names(CORE.rglob("*.py"))


def strings_naming(path: Path, names: set[str]) -> list[str]:
    """``name: text`` for each string of ``path`` (docstrings aside: they may give examples) that
    holds one of ``names`` as a whole word."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef,
            ast.AsyncFunctionDef)) and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            found += [f"{n}: {node.value[:60]!r} (line {node.lineno})" for n in sorted(names)
                      if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", node.value)]
    return found


def test_no_core_string_names_a_plugin():
    """The core names no method, backbone or latent format: roles such as the multi-step baseline
    are declared by plugins (``Objective.comparison_role``), data formats decode through the data
    source's own hooks."""
    names = plugin_names()
    assert {"flow-matching", "torchcfm-ot-cfm", "autoencoded", "wflow", "dit"} <= names
    offenders = {str(p.relative_to(ROOT)): hits for p in sorted(CORE.rglob("*.py")) if (hits := strings_naming(p, names))}
    assert not offenders


def test_the_plugin_name_check_sees_a_plugin_name(tmp_path):
    sample = tmp_path / "board.py"
    sample.write_text('"""A docstring may name flow-matching as an example."""\nBASELINE = "flow-matching"\n'
                      'HELP = f"default: {1} rows of wflow"\nOK = "a workflow, ditto"\n')
    hits = strings_naming(sample, plugin_names())
    assert len(hits) == 2 and hits[0].startswith("flow-matching:") and hits[1].startswith("wflow:")
