"""Architecture checks, by static analysis (``ast``) only: nothing of kappaflow is imported.

1. Layering: the package-level import graph of ``src/kappaflow`` (every ``import`` anywhere in a
   file, ``if TYPE_CHECKING:`` blocks and function bodies included, relative imports resolved, lazy
   ``_EXPORTS`` tables of ``__init__`` files counted as imports) has no cycle, and every edge goes
   down :data:`LAYERS` (same-layer edges only where :data:`SAME_LAYER_EDGES` lists them). No
   library package imports ``kappaflow.stages`` or ``kappaflow.cli``.
2. DVC completeness: each stage of ``dvc.yaml`` runs ``pipelines/<name>.py``, a thin script that
   imports only ``kappaflow.stages.<name>``; every source file in the transitive import closure of
   that module is covered by a ``deps`` entry of the stage (the file, or a folder above it), and
   every top-level config node the closure reads (``cfg.graphs.cutoff``, ``cfg["screen"]``,
   ``cfg.get("seed")``) by a ``params`` entry. Otherwise ``dvc repro`` would not re-run a stage
   whose code or parameters changed.
3. A self-test: the checker reports a dependency deleted on purpose.
"""

from __future__ import annotations

import ast
import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "kappaflow"

#: Package-level layers, bottom first: a node may import only from layers below its own.
#: Top-level modules (``kappaflow/layout.py``...) are nodes of their own; ``__init__`` is
#: ``kappaflow/__init__.py``.
LAYERS: list[tuple[str, ...]] = [
    ("__init__", "_lazy", "cards", "layout", "io_utils", "config", "logging_utils", "processes"),
    ("tracking",),
    ("structure",),
    ("phonons",),
    ("data", "features"),
    ("graphs",),
    ("models",),
    ("training",),
    ("evaluation",),
    ("transfer",),
    ("registry",),
    ("screen",),
    ("sweep",),
    ("stages",),
    ("cli",),
]

#: The only edges allowed inside one layer (importer, imported). Anything else, in particular a
#: pair in both directions (data <-> features), fails.
SAME_LAYER_EDGES: set[tuple[str, str]] = {
    ("config", "layout"),  # stage_main / load_params find params.yaml at the project root
    ("layout", "cards"),  # dataset lookup returns the dataset cards
}

#: Code that no library package may import (the entry-point layers).
ENTRY_PACKAGES = ("stages", "cli")

#: Config nodes a stage may read without declaring them as DVC params, and why.
#: ``paths``: where inputs and outputs live. Every stage reads it (through ``kappaflow.layout``)
#: and the files it names are already the stage's ``deps``/``outs`` by path in dvc.yaml (the
#: ingest source is ``${paths.data_root}/...``), so declaring it would only re-run every stage
#: when a directory moves. ``tracking``: the MLflow destination (URI, experiment, whether to log);
#: it changes where a run is recorded, never a stage's outputs. Every stage reads both.
UNDECLARED_PARAMS_OK: dict[str, str] = {
    "paths": "locations; the files themselves are deps/outs by path",
    "tracking": "MLflow destination only; no effect on the stage's outputs",
}

#: Execution knobs that do not change a stage's outputs (so need not re-run it), and why.
EXECUTION_ONLY_PARAMS: dict[tuple[str, str], str] = {
    ("graphs", "n_jobs"): "worker processes; serial == parallel cache (tests/graphs)",
    ("graphs", "chunk_size"): "crystals per worker task; same cache bytes (tests/graphs)",
}

#: DictConfig / dict methods: ``cfg.graphs.items()`` reads the whole ``graphs`` node.
_NODE_METHODS = frozenset(
    {"items", "keys", "values", "copy", "pop", "setdefault", "update", "__contains__"}
)


# --------------------------------------------------------------------------------------------
# Source model: modules, their imports, the lazy export tables of packages
# --------------------------------------------------------------------------------------------


@dataclass
class Module:
    """One ``.py`` file of the package."""

    name: str  # dotted, e.g. kappaflow.graphs.cache (a package: kappaflow.graphs)
    path: Path
    is_package: bool
    tree: ast.Module
    #: (imported module, imported attribute or None), in-function and TYPE_CHECKING included.
    imports: list[tuple[str, str | None]] = field(default_factory=list)
    #: lazy exports of a package ``__init__``: public name -> module that defines it.
    exports: dict[str, str] = field(default_factory=dict)

    @property
    def rel(self) -> str:
        """Path relative to the repository root (as dvc.yaml writes it)."""
        return self.path.relative_to(ROOT).as_posix()


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _resolve_from(mod: Module, node: ast.ImportFrom) -> str:
    """Absolute module of a ``from X import ...`` (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    package = mod.name if mod.is_package else mod.name.rpartition(".")[0]
    parts = package.split(".")
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _string_constants(tree: ast.Module) -> dict[str, str]:
    out = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            out[node.targets[0].id] = node.value.value
    return out


def _lazy_exports(mod: Module) -> dict[str, str]:
    """``_EXPORTS`` of a package: a dict literal, or ``{name: _S for name in (...)}``."""
    consts = _string_constants(mod.tree)

    def text(expr: ast.expr) -> str:
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return expr.value
        if isinstance(expr, ast.Name) and expr.id in consts:
            return consts[expr.id]
        raise AssertionError(f"{mod.rel}: unsupported _EXPORTS entry {ast.unparse(expr)}")

    for node in mod.tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if not any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in targets):
                continue
            value = node.value
            if isinstance(value, ast.Dict):
                return {text(k): text(v) for k, v in zip(value.keys, value.values, strict=True)}
            if (
                isinstance(value, ast.DictComp)
                and len(value.generators) == 1
                and isinstance(value.generators[0].iter, ast.Tuple | ast.List)
                and isinstance(value.key, ast.Name)
                and value.key.id == getattr(value.generators[0].target, "id", None)
            ):
                target = text(value.value)
                return {text(e): target for e in value.generators[0].iter.elts}
            raise AssertionError(f"{mod.rel}: unsupported _EXPORTS form {ast.unparse(value)}")
    return {}


@cache
def modules() -> dict[str, Module]:
    """Every module of ``src/kappaflow`` by dotted name, with its imports and lazy exports."""
    out: dict[str, Module] = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        name, is_package = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        out[name] = Module(name, path, is_package, tree)
    for mod in out.values():
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.Import):
                mod.imports += [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_from(mod, node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    # `from pkg import submodule` imports the submodule; else an attribute
                    mod.imports.append((sub, None) if sub in out else (base, alias.name))
        if mod.is_package:
            mod.exports = _lazy_exports(mod)
        mod.imports = [(m, a) for m, a in mod.imports if m.split(".")[0] == PACKAGE]
    return out


def _owner(name: str) -> str:
    """The known module a dotted import names (``kappaflow.a.b.attr`` -> ``kappaflow.a.b``)."""
    mods = modules()
    while name not in mods:
        if "." not in name:
            raise AssertionError(f"import of unknown module {name!r}")
        name = name.rpartition(".")[0]
    return name


def _parents(name: str) -> Iterator[str]:
    """Enclosing packages that have an ``__init__.py`` (a namespace package has no file)."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        if (parent := ".".join(parts[:i])) in modules():
            yield parent


def direct_imports(name: str) -> set[str]:
    """Modules that importing ``name`` executes directly (its imports, their parent packages,
    and for a lazy package the modules behind the names imported from it)."""
    mods = modules()
    mod = mods[name]
    out: set[str] = set()
    for target, attr in mod.imports:
        owner = _owner(target)
        out.add(owner)
        exports = mods[owner].exports
        if exports and owner == target:
            if attr is None:  # `import kappaflow.graphs`: any export may be used
                out.update(exports.values())
            elif attr in exports:  # `from kappaflow.graphs import build_graph_cache`
                out.add(exports[attr])
    return {m for o in out for m in (o, *_parents(o))} - {name}


# --------------------------------------------------------------------------------------------
# 1. Layering
# --------------------------------------------------------------------------------------------


def node_of(name: str) -> str:
    """Package-level node: ``kappaflow.graphs.cache`` -> ``graphs``, ``kappaflow`` -> ``__init__``.

    A top-level module is its own node (``kappaflow.layout`` -> ``layout``).
    """
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def package_graph() -> dict[str, dict[str, set[str]]]:
    """``{importer node: {imported node: {"file: import", ...}}}`` over explicit imports and lazy
    export tables (implicit parent-package imports are not edges)."""
    graph: dict[str, dict[str, set[str]]] = {}
    for mod in modules().values():
        src = node_of(mod.name)
        graph.setdefault(src, {})
        targets = [(_owner(t), f"import {t}" + (f" ({a})" if a else "")) for t, a in mod.imports]
        targets += [(m, f"_EXPORTS[{k!r}]") for k, m in mod.exports.items()]
        for target, how in targets:
            dst = node_of(target)
            if dst != src:
                graph[src].setdefault(dst, set()).add(f"{mod.rel}: {how}")
    return graph


def _cycles(graph: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_package_has_a_layer() -> None:
    layered = {n for layer in LAYERS for n in layer}
    nodes = {node_of(name) for name in modules()}
    assert not nodes - layered, f"place these in LAYERS: {sorted(nodes - layered)}"
    assert not layered - nodes, f"LAYERS names missing packages/modules: {sorted(layered - nodes)}"


def test_no_package_cycles() -> None:
    graph = package_graph()
    cycles = _cycles(graph)
    lines = []
    for comp in cycles:
        lines.append(" <-> ".join(comp))
        for a in comp:
            for b in comp:
                for how in sorted(graph[a].get(b, ())):
                    lines.append(f"    {a} -> {b}: {how}")
    assert not cycles, "import cycles between packages:\n" + "\n".join(lines)


def test_imports_go_down_the_layers() -> None:
    layer = {n: i for i, names in enumerate(LAYERS) for n in names}
    bad = []
    for src, targets in sorted(package_graph().items()):
        for dst, hows in sorted(targets.items()):
            if src not in layer or dst not in layer:
                continue  # test_every_package_has_a_layer reports it
            if layer[dst] < layer[src] or (src, dst) in SAME_LAYER_EDGES:
                continue
            kind = "same layer" if layer[dst] == layer[src] else "upward"
            bad.append(f"{src} -> {dst} ({kind}):\n    " + "\n    ".join(sorted(hows)))
    assert not bad, "imports against the layering (LAYERS):\n" + "\n".join(bad)


def test_library_does_not_import_entry_points() -> None:
    bad = []
    for mod in modules().values():
        if node_of(mod.name) in ENTRY_PACKAGES:
            continue
        for target, _ in mod.imports:
            if node_of(_owner(target)) in ENTRY_PACKAGES:
                bad.append(f"{mod.rel}: import {target}")
    assert not bad, "library code imports stages/cli:\n" + "\n".join(bad)


def test_same_layer_edges_are_real() -> None:
    graph = package_graph()
    stale = sorted(e for e in SAME_LAYER_EDGES if e[1] not in graph.get(e[0], {}))
    assert not stale, f"SAME_LAYER_EDGES lists edges that no longer exist: {stale}"


# --------------------------------------------------------------------------------------------
# 2. DVC stages: deps and params cover what the stage's code imports and reads
# --------------------------------------------------------------------------------------------


def closure(name: str) -> set[str]:
    """Transitive import closure of a module (module-level and in-function imports)."""
    seen = {name, *_parents(name)}
    todo = list(seen)
    while todo:
        for dep in direct_imports(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def _key_of(expr: ast.expr) -> str:
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return expr.value
    return "*"  # computed key: some child of the node


def _in_raise(node: ast.AST, parent: dict[ast.AST, ast.AST]) -> bool:
    while node in parent:
        node = parent[node]
        if isinstance(node, ast.Raise):
            return True
    return False


def cfg_reads(tree: ast.AST, var: str = "cfg") -> set[tuple[str, ...]]:
    """Config paths (up to two levels) read through a variable named ``cfg``.

    ``cfg.graphs.cutoff`` -> ``("graphs", "cutoff")``; ``cfg["screen"]`` / ``cfg.screen.items()``
    -> ``("screen",)`` (the whole node); ``cfg.get("seed")`` -> ``("seed",)``;
    ``cfg.models[name]`` and ``name in cfg.models`` -> ``("models", "*")`` (some child);
    ``OmegaConf.select(cfg, "a.b")`` -> ``("a", "b")``. A bare ``cfg`` handed to a function is read
    there (the closure holds that function too). Reads inside a ``raise`` (error messages) do not
    count.
    """
    parent: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parent[child] = node
    reads: set[tuple[str, ...]] = set()
    for node in ast.walk(tree):
        if _in_raise(node, parent):
            continue
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("OmegaConf.select"):
            args = node.args
            if len(args) >= 2 and isinstance(args[0], ast.Name) and args[0].id == var:
                reads.add(tuple(_key_of(args[1]).split("."))[:2])
            continue
        if not (isinstance(node, ast.Name) and node.id == var and isinstance(node.ctx, ast.Load)):
            continue
        keys: list[str] = []
        cur: ast.AST = node
        while len(keys) < 2:
            up = parent.get(cur)
            if isinstance(up, ast.Attribute) and up.value is cur:
                call = parent.get(up)
                is_call = isinstance(call, ast.Call) and call.func is up
                if up.attr == "get" and is_call:
                    assert isinstance(call, ast.Call)
                    keys.append(_key_of(call.args[0]) if call.args else "*")
                    cur = call
                    continue
                if up.attr in _NODE_METHODS or (is_call and not keys):
                    break  # whole node (or a method of the config object itself)
                keys.append(up.attr)
                cur = up
            elif isinstance(up, ast.Subscript) and up.value is cur:
                keys.append(_key_of(up.slice))
                cur = up
            else:
                break
        up = parent.get(cur)
        if (
            len(keys) == 1
            and isinstance(up, ast.Compare)
            and any(
                c is cur and isinstance(op, ast.In | ast.NotIn)
                for op, c in zip(up.ops, up.comparators, strict=True)
            )
        ):
            keys.append("*")  # `name in cfg.datasets`: a membership test reads one child
        if keys:
            reads.add(tuple(keys))
    return reads


def _units(tree: ast.Module) -> Iterator[tuple[str | None, ast.stmt]]:
    """Top-level statements: ``(name, node)`` of a function or class, ``(None, node)`` else."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield (None if node.decorator_list else node.name), node  # decorated: registered
        else:
            yield None, node


def _names_used(node: ast.AST) -> set[str]:
    return {
        n.id if isinstance(n, ast.Name) else n.attr
        for n in ast.walk(node)
        if isinstance(n, ast.Name | ast.Attribute)
    }


def live_cfg_reads(names: set[str], entry: str) -> dict[tuple[str, ...], set[str]]:
    """Config reads of the code a stage can reach: read path -> files.

    Reachability is by name, per top-level function/class: the entry module and module-level code
    are live; a function or class is live once a live unit uses its name (``foo(...)``,
    ``mod.foo``). Dead helpers (e.g. a card loader only tests call) do not count.
    """
    mods = modules()
    units = [(m, n, node) for m in sorted(names) for n, node in _units(mods[m].tree)]
    live = {i for i, (m, n, _) in enumerate(units) if m == entry or n is None}
    todo = sorted(live)
    used: set[str] = set()
    while todo:
        used |= _names_used(units[todo.pop()][2])
        new = {i for i, (_, n, _) in enumerate(units) if i not in live and n in used}
        live |= new
        todo += sorted(new)
    out: dict[tuple[str, ...], set[str]] = {}
    for i in sorted(live):
        m, _, node = units[i]
        for read in cfg_reads(node):
            out.setdefault(read, set()).add(mods[m].rel)
    return out


@cache
def top_level_params() -> frozenset[str]:
    """Top-level keys of params.yaml: reads of other names are of a sub-config named ``cfg``."""
    return frozenset(yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8")))


def _entries(items: Any) -> list[str]:
    """Paths/keys of a dvc.yaml list (``- path`` or ``- path: {options}``)."""
    out = []
    for item in items or ():
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            for key, value in item.items():
                # `- params.yaml: [a, b]` names the file; its list holds the keys
                if isinstance(value, list) and str(key).endswith((".yaml", ".yml", ".json")):
                    out.extend(str(v) for v in value)
                else:
                    out.append(str(key))
    return out


def stage_bodies(dvc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Stage name -> its definition (the ``do`` of a ``foreach``; a ``matrix`` stage itself)."""
    out = {}
    for name, stage in dvc["stages"].items():
        out[name] = stage["do"] if "foreach" in stage else stage
    return out


_TEMPLATE = re.compile(r"\$\{[^}]*\}")
_CMD = re.compile(r"^python\s+pipelines/(\w+)\.py\b")


def _declared_params(entries: list[str]) -> set[tuple[str, ...]]:
    """Declared params as key paths; a ``${...}`` part matches any key (``*``), and only the
    first two levels count (``datasets.${key}.path`` covers reads of ``datasets.<name>``)."""
    return {tuple(_TEMPLATE.sub("*", e).split("."))[:2] for e in entries}


def _covered(read: tuple[str, ...], declared: set[tuple[str, ...]]) -> bool:
    for decl in declared:
        if decl[0] != read[0]:
            continue
        if len(decl) == 1:
            return True  # `graphs` covers cfg.graphs.*
        if len(read) == 2 and (decl[1] == "*" or decl[1] == read[1]):
            return True  # `graphs.cutoff` covers cfg.graphs.cutoff; `models.${item.model}` too
    return False


def _fmt(read: tuple[str, ...]) -> str:
    return ".".join(read) if len(read) > 1 else f"{read[0]} (whole node)"


def coverage_problems(dvc: dict[str, Any]) -> dict[str, list[str]]:
    """What each stage of a parsed dvc.yaml misses: source files, its script, config params."""
    mods = modules()
    top = top_level_params()
    problems: dict[str, list[str]] = {}
    for stage, body in stage_bodies(dvc).items():
        cmd = body["cmd"] if isinstance(body["cmd"], str) else " && ".join(body["cmd"])
        found = _CMD.match(cmd)
        if not found:
            problems[stage] = [f"cmd {cmd!r} is not `python pipelines/<stage>.py ...`"]
            continue
        script = f"pipelines/{found.group(1)}.py"
        entry = f"{PACKAGE}.stages.{found.group(1)}"
        missing: list[str] = []
        if entry not in mods:
            problems[stage] = [f"no stage module {entry} for {script}"]
            continue
        deps = {d.rstrip("/") for d in _entries(body.get("deps")) if not _TEMPLATE.search(d)}
        files = {mods[m].rel for m in closure(entry)}
        if script not in deps:
            missing.append(f"missing dep {script} (the stage's script)")
        for dep in sorted(deps):
            if dep.startswith(("src/", "pipelines/")) and not (ROOT / dep).exists():
                missing.append(f"stale dep {dep}: no such file or folder (dvc repro would fail)")
        for rel in sorted(files):
            if not any(rel == d or rel.startswith(d + "/") for d in deps):
                missing.append(f"missing dep {rel}")
        declared = _declared_params(_entries(body.get("params")))
        reads = {
            read: where
            for read, where in live_cfg_reads(closure(entry), entry).items()
            if read[0] in top
            and read[0] not in UNDECLARED_PARAMS_OK
            and read[:2] not in EXECUTION_ONLY_PARAMS
        }
        for read, where in sorted(reads.items()):
            if not _covered(read, declared):
                missing.append(f"missing param {_fmt(read)} (read in {', '.join(sorted(where))})")
        if missing:
            problems[stage] = missing
    return problems


def _report(problems: dict[str, list[str]]) -> str:
    return "\n".join(f"{stage}:\n    " + "\n    ".join(items) for stage, items in problems.items())


@cache
def dvc_yaml() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))


def test_pipeline_scripts_are_thin() -> None:
    """``pipelines/<stage>.py`` imports its stage module only, so that module's closure is all."""
    bad = []
    scripts = {
        m.group(1)
        for body in stage_bodies(dvc_yaml()).values()
        if (m := _CMD.match(body["cmd"] if isinstance(body["cmd"], str) else body["cmd"][0]))
    }
    for name in sorted(scripts):
        tree = ast.parse((ROOT / "pipelines" / f"{name}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = [node.module or ""]
            else:
                continue
            for t in targets:
                if t.split(".")[0] == PACKAGE and t != f"{PACKAGE}.stages.{name}":
                    bad.append(f"pipelines/{name}.py: import {t}")
    assert not bad, f"pipeline scripts must import only kappaflow.stages.<stage>:\n{bad}"


def test_dvc_stages_declare_code_and_params() -> None:
    problems = coverage_problems(dvc_yaml())
    assert not problems, (
        "dvc.yaml deps/params do not cover what the stage code imports and reads "
        "(add the folder/file to deps, the key to params):\n" + _report(problems)
    )


# --------------------------------------------------------------------------------------------
# 3. The checker itself
# --------------------------------------------------------------------------------------------


def test_checker_reports_a_removed_dep_and_param() -> None:
    dvc = copy.deepcopy(dvc_yaml())
    body = dvc["stages"]["featurize"]["do"]
    assert "src/kappaflow/graphs" in body["deps"]
    body["deps"].remove("src/kappaflow/graphs")
    body["params"] = [p for p in body["params"] if p != "graphs.cutoff"]
    problems = coverage_problems(dvc)
    print(_report(problems))
    assert set(problems) == {"featurize"}
    missing = problems["featurize"]
    assert "missing dep src/kappaflow/graphs/cache.py" in missing
    assert "missing dep src/kappaflow/graphs/__init__.py" in missing
    assert any(m.startswith("missing param graphs.cutoff (read in ") for m in missing)
    assert not any("structure" in m for m in missing)  # still covered by its own entry


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("cfg.graphs.cutoff", {("graphs", "cutoff")}),
        ("cfg['screen']", {("screen",)}),
        ("cfg.get('seed')", {("seed",)}),
        ("cfg.graphs.get('n_jobs', 1)", {("graphs", "n_jobs")}),
        ("cfg.models[name].depth", {("models", "*")}),
        ("OmegaConf.select(cfg, 'registry.dataset')", {("registry", "dataset")}),
        ("for k, v in cfg.transfer.items(): pass", {("transfer",)}),
        ("f(cfg)", set()),
    ],
)
def test_cfg_reads(source: str, expected: set[tuple[str, ...]]) -> None:
    assert cfg_reads(ast.parse(source)) == expected


def test_covered() -> None:
    declared = _declared_params(["graphs.cutoff", "models.${item.model}", "datasets.${key}.path"])
    assert _covered(("graphs", "cutoff"), declared)
    assert not _covered(("graphs", "n_jobs"), declared)
    assert not _covered(("graphs",), declared)
    assert _covered(("models", "cgcnn"), declared)
    assert _covered(("datasets", "*"), declared)
    assert _covered(("graphs",), _declared_params(["graphs"]))


def test_cycle_detection() -> None:
    graph = {"a": {"b": {"x"}}, "b": {"c": {"x"}}, "c": {"a": {"x"}}, "d": {"a": {"x"}}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b": {"x"}}, "b": {}}) == []
