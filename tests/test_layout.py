"""The import rules of the README's "Layout", checked in fresh interpreters (sys.modules):
each install gets only what it needs, and arrows point down the stack only."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
