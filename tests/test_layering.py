"""core/ must import with bpy and torch unavailable (it runs inside Blender's Python)."""

import os
import pkgutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BLOCKER = r"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('bpy', 'torch', 'diffusers', 'transformers', 'PIL', 'cv2'):
            raise ImportError('blocked in this test: ' + name)
sys.meta_path.insert(0, Block())
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
print('imported', len(sys.argv) - 1)
"""


def core_modules():
    return ["archviz_controlnet.core." + m.name for m in pkgutil.iter_modules([os.path.join(ROOT, "core")])]


def test_core_imports_without_bpy_or_torch():
    mods = core_modules()
    assert "archviz_controlnet.core.passes" in mods and len(mods) >= 4
    out = subprocess.run([sys.executable, "-c", BLOCKER, "archviz_controlnet", *mods],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"imported {len(mods) + 1}"


def test_blocker_really_blocks():
    out = subprocess.run([sys.executable, "-c", BLOCKER, "bpy"], capture_output=True, text=True)
    assert out.returncode != 0 and "blocked in this test: bpy" in out.stderr


# ---------------------------------------------------------------- who may import whom

import ast  # noqa: E402

PACKAGE = "archviz_controlnet"
SKIP_DIRS = {".git", ".venv", ".ci", "tests", "examples", "docs", "presets", "dist", "out", "__pycache__"}

#: Of our own packages, what each may import (besides itself). Every import counts, also
#: those inside functions. The root package itself is allowed everywhere (``__version__``).
MAY_IMPORT = {
    "core": set(),
    "blender": {"core", "distributed.options"},  # archviz sweep --ray: the option parser only, no ray
    "operators": {"core", "blender"},
    "panels": {"core", "blender"},
    "backend": {"core", "distributed"},
    "distributed": {"core", "backend"},
    "bench": {"core", "backend", "distributed", "blender.capture", "blender.compat"},
    "cli": set(),  # finds each command's module by name (COMMANDS), imports none directly
    "__init__": {"blender", "operators", "panels"},
}


def _modules():
    """{module name: path} of every module of the package (tests, examples and docs left out)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        rel = os.path.relpath(dirpath, ROOT)
        parts = [] if rel == "." else rel.split(os.sep)
        if parts and not os.path.exists(os.path.join(dirpath, "__init__.py")):
            dirnames[:] = []
            continue
        for name in filenames:
            if name.endswith(".py"):
                mod = parts + ([] if name == "__init__.py" else [name[:-3]])
                found[".".join([PACKAGE, *mod])] = os.path.join(dirpath, name)
    return found


def _imports(module, path, modules):
    """Our modules that ``module`` imports (anywhere in the file)."""
    is_package = path.endswith("__init__.py")
    package = module.split(".") if is_package else module.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            base = ".".join(base + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` where c is a name
                target = target.rpartition(".")[0]
            if target.startswith(PACKAGE) and target != module:
                out.add(target)
    return out


def _graph():
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def _room(module):
    """The top-level part a module belongs to: core, blender, operators, ..., or __init__."""
    parts = module.split(".")[1:]
    return parts[0] if parts else "__init__"


def _allowed(source, target):
    if target == PACKAGE or _room(target) == _room(source):
        return True
    name = target[len(PACKAGE) + 1:]
    # a package whose module is allowed is allowed too (Python runs its __init__ first anyway)
    return any(name == rule or name.startswith(rule + ".") or rule.startswith(name + ".")
               for rule in MAY_IMPORT[_room(source)])


def test_the_import_graph_is_read_from_the_source():
    graph = _graph()
    assert f"{PACKAGE}.blender.tasks" in graph and f"{PACKAGE}.blender.capture.render" in graph
    assert f"{PACKAGE}.core.sweep" in graph[f"{PACKAGE}.blender.tasks"]  # from ..core.sweep import SweepRunner
    assert f"{PACKAGE}.blender.results" in graph[f"{PACKAGE}.blender.tasks"]  # from . import results
    assert f"{PACKAGE}.blender.properties" in graph[PACKAGE]  # inside register()


def test_each_room_imports_only_what_the_code_map_allows():
    graph = _graph()
    assert set(map(_room, graph)) == set(MAY_IMPORT)  # a new top-level package needs a rule here
    wrong = sorted(f"{s} -> {t}" for s, targets in graph.items() for t in targets if not _allowed(s, t))
    assert wrong == []


#: backend/'s rooms: each package's docstring ends with its "May import:" line, which this
#: test reads and holds it to (imports inside the same room are always allowed).
BACKEND_ROOMS = ("engine", "models", "server", "cli", "train", "setup")


def _may_import_line(package_dir):
    doc = ast.get_docstring(ast.parse(open(os.path.join(package_dir, "__init__.py"), encoding="utf-8").read()))
    lines = [line for line in (doc or "").splitlines() if line.startswith("May import:")]
    assert len(lines) == 1, f"{package_dir}/__init__.py: its docstring needs one 'May import:' line"
    return {name.strip() for name in lines[0][len("May import:"):].rstrip(".").split(",") if name.strip()}


def test_backend_has_few_rooms_and_each_says_what_it_holds():
    backend = os.path.join(ROOT, "backend")
    entries = sorted(n for n in os.listdir(backend) if n != "__pycache__")
    assert len(entries) <= 8, entries
    assert entries == sorted(["__init__.py", *BACKEND_ROOMS])
    for room in BACKEND_ROOMS:
        assert _may_import_line(os.path.join(backend, room))
    assert _may_import_line(backend) == MAY_IMPORT["backend"]


def test_each_backend_room_imports_only_what_its_docstring_allows():
    graph = _graph()
    prefix = f"{PACKAGE}.backend."
    rules = {room: _may_import_line(os.path.join(ROOT, "backend", room)) for room in BACKEND_ROOMS}
    wrong, seen = [], set()
    for source, targets in graph.items():
        if not source.startswith(prefix):
            continue
        room = source[len(prefix):].split(".")[0]
        seen.add(room)
        for target in targets:
            name = target[len(PACKAGE) + 1:]
            if target == PACKAGE or name.startswith(f"backend.{room}") or name == "backend":
                continue
            if not any(name == rule or name.startswith(rule + ".") or rule.startswith(name + ".")
                       for rule in rules[room]):
                wrong.append(f"{source} -> {target}")
    assert seen == set(BACKEND_ROOMS)
    assert sorted(wrong) == []


def test_the_backend_rule_reader_sees_a_wrong_import():
    """Two rooms that may not import each other: server -> cli would be found."""
    rules = _may_import_line(os.path.join(ROOT, "backend", "server"))
    assert "backend.engine" in rules and "core" in rules
    assert not any("backend.cli" == rule or "backend.cli".startswith(rule + ".") for rule in rules)


def test_no_import_circle():
    graph = _graph()
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(target):] + [target]))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_a_circle_is_found():
    """The circle check on a made-up graph: properties -> panels -> operators -> properties."""
    graph = {"p": {"panels"}, "panels": {"ops"}, "ops": {"p"}}
    state = {}

    def visit(module, stack):
        state[module] = "open"
        for target in graph[module]:
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target, stack + [target])
                if found:
                    return found
        state[module] = "done"
        return None

    assert visit("p", ["p"]) == ["p", "panels", "ops", "p"]


def _imports_of(module_path):
    tree = ast.parse(open(module_path, encoding="utf-8").read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_what_touches_blender_lives_in_blender_operators_or_panels():
    touching = sorted(m for m, p in _modules().items() if _imports_of(p) & {"bpy", "mathutils", "addon_utils"})
    assert f"{PACKAGE}.blender.capture.render" in touching
    outside = [m for m in touching if _room(m) not in ("blender", "operators", "panels", "bench")]
    assert outside == []
    # the top level holds the add-on's entry point and the command, no other module
    assert sorted(n for n in os.listdir(ROOT) if n.endswith(".py")) == ["__init__.py", "cli.py"]


def test_operators_and_panels_stay_thin():
    """Threads, queues and child processes live in blender/ (the task runner, the runs);
    operators start them through it, panels only draw."""
    for room in ("operators", "panels"):
        for module, path in _modules().items():
            if _room(module) == room:
                assert not _imports_of(path) & {"threading", "queue", "subprocess"}, module


def test_every_command_is_found_from_cli_commands():
    """cli.py COMMANDS is the one place: each entry's module exists and defines
    add_arguments(parser) and run(args) (read from the source, nothing imported)."""
    from archviz_controlnet.cli import COMMANDS

    modules = _modules()
    assert {"passes", "sweep", "serve", "presets", "bench", "doctor", "models", "dataset",
            "train-controlnet"} <= set(COMMANDS)
    for name, (module, _help) in COMMANDS.items():
        assert module in modules, (name, module)
        tree = ast.parse(open(modules[module], encoding="utf-8").read())
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert {"add_arguments", "run"} <= defined, (name, module)


def test_only_blender_compat_asks_which_blender_runs():
    """The differences between Blender 4.2 and 5.2 live in blender/compat.py: no other module
    of the add-on reads bpy.app.version (or names a Blender-only attribute by version)."""
    asking = []
    for module, path in _modules().items():
        if _room(module) not in ("blender", "operators", "panels", "__init__") or module.endswith(".compat"):
            continue
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            if (isinstance(node, ast.Attribute) and node.attr in ("version", "version_string")
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "app"):
                asking.append(f"{module}:{node.lineno}")
    assert asking == []
