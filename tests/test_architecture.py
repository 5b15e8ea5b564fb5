"""The layering of caffe/: no module reads another's private attributes, and no import cycles (issue 15)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "caffe"
GENERATED = {"caffe.proto.caffe_pb2", "caffe.proto.caffe2_pb2"}

# Private reads still allowed outside their module, as (module, attribute): none are left (issue 15, item 2).
KNOWN_PRIVATE: set[tuple[str, str]] = set()


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name not in GENERATED:
            found[name] = ast.parse(path.read_text(), str(path))
    return found


def defined_privates(tree: ast.Module) -> set[str]:
    """Private names a module defines: assigned as attributes, functions, methods and class-level names."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def private_reads(tree: ast.Module) -> list[tuple[int, str]]:
    """``obj._name`` (``obj`` not ``self``/``cls``/``super()``) and ``getattr(obj, "_name")`` in a module."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super":
                continue
            out.append((node.lineno, node.attr))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and node.args[1].value.startswith("_")
            and not node.args[1].value.startswith("__")
        ):
            out.append((node.lineno, node.args[1].value))
    return out


def test_no_module_reads_another_modules_private_attributes():
    trees = modules()
    defined = {name: defined_privates(tree) for name, tree in trees.items()}
    everywhere = set().union(*defined.values())
    bad = []
    for name, tree in trees.items():
        for line, attr in private_reads(tree):
            # a name no caffe module defines is a third party's (torch.ops.mkldnn._..., module-level privates)
            if attr in defined[name] or attr not in everywhere or (name, attr) in KNOWN_PRIVATE:
                continue
            bad.append(f"{name}:{line}: ._{attr.lstrip('_')}")
    assert not bad, "private attributes read outside the module that defines them:\n" + "\n".join(bad)


def imports_of(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The caffe modules ``name`` imports anywhere (module level or inside functions)."""
    package = name if (PACKAGE / Path(*name.split(".")[1:]) / "__init__.py").exists() else name.rpartition(".")[0]
    found: set[str] = set()
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: no import at run time
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def import_graph() -> dict[str, set[str]]:
    trees = modules()
    known = set(trees) | GENERATED
    graph = {name: imports_of(name, tree, known) - GENERATED for name, tree in trees.items()}
    # a package's __init__ re-exporting its modules is not a dependency of those modules on it
    return {
        name: {t for t in targets if not (name.startswith(t + ".") and t in trees)} for name, targets in graph.items()
    }


def test_no_import_cycles_among_caffe_modules():
    found = cycles(import_graph())
    assert not found, "import cycles among caffe/ modules (function-level imports included):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )
