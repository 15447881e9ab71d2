"""The import rules of the README's "Layout": read from the source (every import statement,
inside functions too, `if TYPE_CHECKING:` blocks excluded), so that an import deferred into a
function cannot hide a cycle or a forbidden arrow; and checked in fresh interpreters
(sys.modules), so that each install loads only what it needs."""

from __future__ import annotations

import ast
import graphlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folders and the package names they install as.
PACKAGES = {
    "imgsim_client": "imgsim_client",
    "imgsim_server": "imgsim_server",
    "imgsim_lab": "imgsim_lab",
    "datasets": "imgsim_datasets",
    "imgsim_verify": "imgsim_verify",
}


def _module_files() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


MODULES = _module_files()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, module: str) -> list[tuple[str, list[str]]]:
    """Every import statement of the file, anywhere (TYPE_CHECKING blocks excluded), as
    (module imported from, names): `import a.b` is ("a.b", []), `from a import b` ("a", ["b"])."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = parts[: len(parts) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            out.append((base, [alias.name for alias in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return out


def _resolve(name: str) -> str | None:
    """The project module an imported name lands in (its longest known prefix), or None."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return None


def _edges(module: str, modules: dict[str, Path] = MODULES) -> set[str]:
    """The project modules `module` imports: `from pkg import sub` points at pkg.sub when that
    is a module, else at pkg (its __init__)."""
    out = set()
    for base, names in _imports(modules[module], module):
        targets = [f"{base}.{n}" if f"{base}.{n}" in modules else base for n in names] or [base]
        out |= {t for t in map(_resolve, targets) if t and t != module}
    return out


def _names(module: str) -> set[str]:
    """Every dotted name `module` imports from, with the names it takes from each."""
    out = set()
    for base, names in _imports(MODULES[module], module):
        out |= {base, *(f"{base}.{n}" for n in names)}
    return out


def _external(module: str) -> set[str]:
    """Top-level names of everything `module` imports."""
    return {name.split(".")[0] for name in _names(module)}


def test_no_import_cycle_anywhere():
    """Imports inside functions count: a cycle they close is still a design cycle."""
    graph = {module: _edges(module) for module in MODULES}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_cycle_check_can_fail(tmp_path, monkeypatch):
    """The checker finds a cycle closed by an import inside a function."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("import imgsim_fake.b\n")
    b.write_text("def f():\n    from imgsim_fake import a\n")
    monkeypatch.setitem(MODULES, "imgsim_fake.a", a)
    monkeypatch.setitem(MODULES, "imgsim_fake.b", b)
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycle_anywhere()


SERVING_MAY_EXPORT = {"imgsim_server.__main__"}


def test_serving_code_never_imports_export_or_the_lab():
    for module in MODULES:
        if not module.startswith("imgsim_server") or module in SERVING_MAY_EXPORT:
            continue
        if module.startswith("imgsim_server.export"):
            continue
        bad = {
            name
            for name in _names(module)
            if name.startswith(("imgsim_server.export", "imgsim_lab", "imgsim_datasets"))
        }
        assert not bad, f"{module} imports {sorted(bad)}"


def test_no_transport_imports_another():
    transport = "imgsim_server.transport."
    for module in MODULES:
        if not module.startswith(transport):
            continue
        own = module[len(transport) :].split("_")[0]  # grpc, http, metrics, stream
        names = _names(module)
        for other in ("grpc_", "http_"):
            if other.startswith(own + "_"):
                continue
            assert not {n for n in names if n.startswith(transport + other)}, module
        if own != "grpc":
            assert not _external(module) & {"grpc", "grpc_health", "grpc_reflection"}, module
        if own != "http":
            assert not _external(module) & {"fastapi", "starlette", "uvicorn"}, module


def test_the_client_never_imports_the_server_or_the_lab():
    for module in MODULES:
        if module.startswith("imgsim_client"):
            bad = _external(module) & {"imgsim_server", "imgsim_lab", "imgsim_datasets"}
            assert not bad, f"{module} imports {bad}"


def test_verification_is_a_room_of_its_own():
    """imgsim_verify serves the server and the client, so it imports neither (nor the lab)."""
    for module in MODULES:
        if module.startswith("imgsim_verify"):
            bad = _external(module) & {"imgsim_server", "imgsim_client", "imgsim_lab"}
            assert not bad, f"{module} imports {bad}"


def _modules_after(code: str, top_level: bool = True) -> set[str]:
    """Module names (top-level only, by default) loaded by running `code` in a fresh
    interpreter."""
    probe = f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    names = json.loads(out.splitlines()[-1])
    return {name.split(".")[0] for name in names} if top_level else set(names)


def test_client_help_path_imports_no_grpc():
    loaded = _modules_after("import imgsim_client.cli as c; c.build_parser().format_help()")
    assert not loaded & {"grpc", "google", "tqdm", "numpy", "imgsim_server", "imgsim_lab"}


def test_client_imports_nothing_of_the_server_or_heavy_stacks():
    loaded = _modules_after(
        "import imgsim_client, imgsim_client.client, imgsim_client.scoring, imgsim_client.cli\n"
        "imgsim_client.ImgsimClient"
    )
    forbidden = {"imgsim_server", "imgsim_lab", "imgsim_datasets", "torch", "onnxruntime"}
    forbidden |= {"pandas", "pyarrow", "matplotlib", "sklearn", "numpy", "PIL", "fastapi"}
    assert not loaded & forbidden, loaded & forbidden


def test_evaluate_loads_only_the_eval_extra():
    loaded = _modules_after("import imgsim_client.evaluate")
    assert {"sklearn", "numpy"} <= loaded
    # (scikit-learn itself imports pandas when it happens to be installed; [eval] does not
    # install it, which `make check-installs` checks in a fresh venv.)
    assert not loaded & {"imgsim_server", "imgsim_lab", "torch", "grpc"}


def test_embedders_and_serving_stack_load_no_torch():
    loaded = _modules_after("import imgsim_server.embedders as e; e.list_models()")
    assert not loaded & {"torch", "onnxruntime", "onnx", "imagehash", "scipy"}, loaded
    serving = _modules_after("import imgsim_server.transport.grpc_server, imgsim_server.__main__")
    assert not serving & {"torch", "torchvision", "imgsim_lab", "imgsim_datasets", "sklearn"}
    full = _modules_after("import imgsim_server.transport.grpc_server", top_level=False)
    assert "imgsim_server.export" not in full


def test_grpc_and_http_transports_do_not_import_each_other():
    http = _modules_after("import imgsim_server.transport.http_server", top_level=False)
    assert "grpc" not in {m.split(".")[0] for m in http}
    assert not {m for m in http if m.startswith("imgsim_server.transport.grpc_")}, http
    grpc_side = _modules_after("import imgsim_server.transport.grpc_server", top_level=False)
    assert not {m for m in grpc_side if m.startswith("imgsim_server.transport.http_")}
    assert "fastapi" not in {m.split(".")[0] for m in grpc_side}


@pytest.mark.parametrize("package", ["imgsim_client", "imgsim_server", "imgsim_lab", "datasets"])
def test_no_sys_path_edits_and_client_never_imports_server(package):
    for path in (ROOT / package).rglob("*.py"):
        text = path.read_text()
        assert "sys.path" not in text, path
        if package == "imgsim_client":
            assert not re.search(r"^\s*(from|import) imgsim_(server|lab)", text, re.M), path


def test_evaluate_without_the_eval_extra_says_what_to_install(tmp_path):
    scores = tmp_path / "s.csv"
    scores.write_text("image_a,image_b,label,score\na,b,1,0.9\nc,d,0,0.1\n")
    code = (
        "import sys; sys.modules.update(sklearn=None)\n"
        "from imgsim_client.cli import main; sys.exit(main(['evaluate', sys.argv[1]]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(scores)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1, run.stderr
    assert 'python -m pip install "imgsim[eval]"' in run.stderr
    assert "Traceback" not in run.stderr


def test_every_package_is_listed_for_the_wheel():
    """setuptools installs only the packages pyproject lists: a new subpackage left out works
    in the editable checkout and breaks every real install."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("imgsim_client", "imgsim_server", "imgsim_lab")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found <= listed, found - listed
