"""The layering that ``docs/ARCHITECTURE.md`` describes, pinned: data flows one way, every module imports only its
own package or layers to its left (imports inside functions and under TYPE_CHECKING count too), there is no
import cycle, and no source file grows past about 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "segscope"

#: Left to right. A module may import the layers to its left and its own package (folder or module).
LAYERS: list[set[str]] = [
    {"_typing", "exceptions", "packs", "_durations", "_arrow_file"},
    {"expressions", "_kafka_setup", "_yaml"},
    {"columns", "config_kafka"},
    {"_params", "_deps", "_io", "_arrays", "_stored_json", "config", "schema", "metrics", "_kafka_outcomes"},
    {"_kafka_python"},
    {"_kafka", "_wire"},
    {"bundle"},
    {"registry"},
    {"sources"},
    {"features"},
    {"unsupervised"},
    {"supervised"},
    {"labels"},
    {"sinks"},
    {"model"},
    {"tuning", "testing", "run", "file_state"},
    {"pipeline", "stream"},
    {"spark", "watch"},
    {"demo", "report"},
    {"web"},
    {"cli"},
    {"__init__"},
]


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str:
    """The top-level part of ``segscope.<part>...`` (``__init__`` for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (imports for annotations only, never run)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            out.update(id(n) for child in node.body for n in ast.walk(child))
    return out


def _imports(*, runtime_only: bool = False) -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        tree = ast.parse(path.read_text())
        skipped = _type_checking_nodes(tree) if runtime_only else set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "segscope":
                submodules = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
                found |= submodules  # `from segscope import registry` imports the module, not the package
                if len(submodules) < len(node.names):
                    found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.split(".")[0] == "segscope")
        graph[name] = {m for m in found if m in modules} - {name}
    return graph


def _layer(module: str) -> int:
    part = _part(module)
    return next(i for i, layer in enumerate(LAYERS) if part in layer)


def test_every_module_has_a_layer() -> None:
    parts = {_part(m) for m in _imports()}
    assert parts <= set().union(*LAYERS), parts - set().union(*LAYERS)


def test_imports_only_go_left_or_within_a_package() -> None:
    wrong = []
    for module, targets in _imports().items():
        for target in targets:
            if target == "segscope" and module != "segscope":
                wrong.append(f"{module} imports the package root")
            elif _part(target) != _part(module) and _layer(target) >= _layer(module):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles() -> None:
    graph = _imports(runtime_only=True)  # annotations-only imports (under TYPE_CHECKING) never run
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_no_source_file_over_500_lines() -> None:
    long = {
        path.relative_to(PACKAGE).as_posix(): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 500
    }
    assert not long, long


def test_the_architecture_page_names_every_module_and_folder() -> None:
    import re

    page = (PACKAGE.parents[1] / "docs" / "ARCHITECTURE.md").read_text()
    table = page.split("```")[1]
    for path in PACKAGE.iterdir():
        if path.name in ("__init__.py", "py.typed") or path.name.startswith(".") or path.suffix not in ("", ".py"):
            continue
        if path.is_dir() and not (path / "__init__.py").exists():
            continue
        name = f"{path.name}/" if path.is_dir() else path.stem
        assert re.search(rf"(^|[\s,]){re.escape(name)}([\s,]|$)", table, re.M), f"ARCHITECTURE.md omits {name}"


def test_entity_feature_kinds_are_in_the_kernel_s_order() -> None:
    """An entity aggregate is a name in ``_typing.EntityFeatureKind``, a constant of the same rank in the kernel and
    its slot count in ``SLOTS`` (docs/ARCHITECTURE.md, "where a new piece goes"): a kind added in one place only
    would compute another kind's aggregate."""
    from typing import get_args

    from segscope._typing import EntityFeatureKind
    from segscope.features import _entity_kernel as kernel

    kinds = get_args(EntityFeatureKind)
    assert [getattr(kernel, k.upper()) for k in kinds] == list(range(len(kinds)))
    assert len(kernel.SLOTS) == len(kinds)


def _model_state_names() -> set[str]:
    """The Model's fitted state: the ``_``-suffixed names its class declares or its methods assign."""
    tree = ast.parse((PACKAGE / "model" / "__init__.py").read_text())
    model = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "Model")
    names = {s.target.id for s in model.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    names |= {
        n.attr
        for n in ast.walk(model)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"
    }
    return {n for n in names if n.endswith("_") and not n.startswith("__")}


def test_only_the_model_package_touches_a_model_s_fitted_state() -> None:
    """Outside ``model/``, a Model is read through its properties and methods (``version``, ``feature_schema``,
    ``training``, ``supervised``, ``prepared(frame)`` ...) and a new version made with ``with_supervised`` or
    ``with_version``: no module reads or writes its ``_``-suffixed attributes (another class's attribute of the
    same name is read through ``self`` only, or renamed)."""
    names = _model_state_names()
    assert {"preparer_", "policy_", "version_", "supervised_", "training_"} <= names, names
    touched = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "model":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            own = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
            if isinstance(node, ast.Attribute) and node.attr in names and not own:
                touched.append(f"{path.relative_to(PACKAGE)}:{node.lineno} .{node.attr}")
    assert not touched, "\n".join(touched)


def test_the_tests_read_a_model_through_its_api() -> None:
    """The tests use a Model as users do (its properties, ``with_version`` ...); a white-box check of a component's
    fitted arrays says so on its line (``# white-box``), so the exceptions are few and visible."""
    names = _model_state_names()
    touched = []
    for path in sorted((PACKAGE.parents[1] / "tests").rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            own = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
            marked = isinstance(node, ast.Attribute) and "# white-box" in lines[node.lineno - 1]
            if isinstance(node, ast.Attribute) and node.attr in names and not own and not marked:
                touched.append(f"tests/{path.name}:{node.lineno} .{node.attr}")
    assert not touched, "\n".join(touched)


def _private_names(path: Path) -> set[str]:
    """The ``_``-prefixed names a module defines: functions, methods, classes and attributes it assigns."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            out.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
    return {n for n in out if n.startswith("_") and not n.startswith("__")}


def test_no_module_reaches_into_another_package_s_private_names() -> None:
    """``obj._name`` (``obj`` not ``self``/``cls``) only where ``_name`` is defined in the same package: a private
    method or attribute is not another package's API. Third-party privates (pyspark's gateway, scikit-learn's forest
    internals) are outside this rule: segscope defines no such names."""
    paths = sorted(PACKAGE.rglob("*.py"))
    defined: dict[str, set[str]] = {}
    for path in paths:
        defined.setdefault(_part(_module(path)), set()).update(_private_names(path))
    ours = set().union(*defined.values())
    reached = []
    for path in paths:
        part = _part(_module(path))
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if node.attr in ours and node.attr not in defined[part]:
                reached.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {ast.unparse(node)}")
    assert not reached, "\n".join(reached)
