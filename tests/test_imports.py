"""The package import graph: odir_core imports no framework, keras_odir never imports torch_odir or
torchvision (nor timm), odir_core's layers import only downwards, and no module imports itself back through a cycle
(imports inside functions included)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("odir_core", "keras_odir", "torch_odir")
FORBIDDEN = {
    "odir_core": {"keras", "torch", "torchvision", "timm", "tensorflow", "jax", "keras_odir", "torch_odir"},
    "keras_odir": {"torch_odir", "torchvision", "timm"},
    "torch_odir": {"keras", "keras_odir"},
}
LAYERS = ("data", "model", "training", "evaluation", "serving")  # odir_core's layer folders, lowest first, above its root
# The package's face (a lazy demo_dataset) and the commands kept at the root: above every layer.
ENTRY_POINTS = {"odir_core", "odir_core.audit", "odir_core.metrics", "odir_core.prepare", "odir_core.synthetic",
                "odir_core.tfds", "odir_core.tfds.__main__"}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, module: str) -> set[str]:
    """Every module an import statement anywhere in the file names (relative imports resolved)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m in _imports(path, name) if m in modules and m != name} for name, path in modules.items()}


def test_no_package_imports_what_it_must_not():
    offences = []
    for name, path in _modules().items():
        package = name.split(".")[0]
        for imported in _imports(path, name):
            if imported.split(".")[0] in FORBIDDEN[package]:
                offences.append(f"{name} imports {imported}")
    assert not offences


def test_package_graph_has_no_cycles_and_both_build_on_odir_core():
    edges = {(a.split(".")[0], b.split(".")[0]) for a, targets in _graph().items() for b in targets}
    edges = {(a, b) for a, b in edges if a != b}
    assert edges == {("keras_odir", "odir_core"), ("torch_odir", "odir_core")}


def _layer(module: str, path: Path) -> int:
    """Rank of an odir_core module: 0 at the root, 1 + the index in LAYERS of its folder, top for ENTRY_POINTS."""
    if module in ENTRY_POINTS:
        return len(LAYERS) + 1
    folders = path.relative_to(ROOT / "odir_core").parts[:-1]
    assert not folders or folders[0] in LAYERS, f"{module}: odir_core/{folders[0]}/ is not a layer folder"
    return 1 + LAYERS.index(folders[0]) if folders else 0


def test_layer_comes_from_the_folder():
    core = ROOT / "odir_core"
    paths = {"odir_core.labels": "labels.py", "odir_core.data.tfds.builder": "data/tfds/builder.py",
             "odir_core.model": "model/__init__.py", "odir_core.training.new": "training/new.py",
             "odir_core.evaluation.new": "evaluation/new.py", "odir_core.serving.new": "serving/new.py",
             "odir_core.prepare": "prepare.py"}
    assert [_layer(module, core / path) for module, path in paths.items()] == [0, 1, 2, 3, 4, 5, 6]
    with pytest.raises(AssertionError, match="not a layer folder"):
        _layer("odir_core.extra", core / "extra" / "__init__.py")


def test_odir_core_layers_import_only_their_own_and_lower_layers():
    """root < data < model < training < evaluation < serving; no module imports an entry point (importing the
    package itself, odir_core, goes with importing any of its modules)."""
    rank = {name: _layer(name, path) for name, path in _modules().items() if name.split(".")[0] == "odir_core"}
    offences = [f"{name} imports {target}" for name, targets in _graph().items() if name in rank
                for target in sorted(targets) if target in rank and target != "odir_core" and rank[target] > rank[name]]
    assert not offences


# What odir_core may import beyond the standard library: the base install's packages (pyproject's
# dependencies, by import name) everywhere, an extra's only in the modules that need it.
BASE_IMPORTS = {"numpy", "pandas", "openpyxl", "sklearn", "cv2", "PIL", "matplotlib", "tqdm", "tomli", "tomli_w"}
EXTRA_IMPORTS = {  # module (or package) prefix -> (extra, its import names)
    "odir_core.training.tensorboard": ("train", {"tensorboard"}),
    "odir_core.data.tfds": ("tfds", {"tensorflow_datasets"}),
    "odir_core.serving": ("serve", {"fastapi", "uvicorn", "python_multipart"}),
    "odir_core.evaluation.onnx_predictor": ("serve", {"onnxruntime"}),
}


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_odir_core_imports_only_base_packages_outside_the_extras_modules():
    """A base install (no framework, no extra) can import every odir_core module but those of EXTRA_IMPORTS."""
    offences = []
    for name, path in _modules().items():
        if name.split(".")[0] != "odir_core":
            continue
        allowed = set(BASE_IMPORTS)
        for prefix, (_, names) in EXTRA_IMPORTS.items():
            if name == prefix or name.startswith(prefix + "."):
                allowed |= names
        third_party = {m.split(".")[0] for m in _imports(path, name)} - set(sys.stdlib_module_names) - set(PACKAGES)
        offences += [f"{name} imports {m}" for m in sorted(third_party - allowed)]
    assert not offences


def test_frameworks_are_an_extra_and_dev_installs_every_extra():
    project = _pyproject()
    base = " ".join(project["dependencies"])
    assert not any(framework in base for framework in ("keras", "torch", "tensorboard", "onnxruntime", "fastapi"))
    extras = project["optional-dependencies"]
    assert {"tensorboard", "keras>=3.10", "torch>=2.4", "torchvision>=0.19", "timm>=1.0"} == set(extras["train"])
    assert {"onnxruntime", "fastapi", "uvicorn", "python-multipart"} == set(extras["serve"])
    assert {f"keras-odir[{extra}]" for extra in extras if extra != "dev"} <= set(extras["dev"])
    assert {extra for extra, _ in EXTRA_IMPORTS.values()} <= set(extras)


def test_module_graph_has_no_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, path):
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles


def test_the_scan_sees_a_cycle_and_a_forbidden_import(tmp_path):
    """The scanner itself: an import inside a function is seen, a relative import is resolved."""
    path = tmp_path / "mod.py"
    path.write_text("from .model import x\ndef f():\n    from torch_odir.model import DualNet\n")
    assert {"keras_odir.model", "torch_odir.model"} <= _imports(path, "keras_odir.weights")


def test_keras_odir_works_without_torch_odir_and_torchvision(tmp_path):
    """jax backend, torch_odir and torchvision unimportable: build, convert both ways, predict."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch_odir"] = None  # any import of it raises ImportError
        sys.modules["torchvision"] = None
        import pkgutil, importlib
        import keras_odir, keras
        assert keras.backend.backend() == "jax"
        for module in pkgutil.iter_modules(keras_odir.__path__):
            importlib.import_module(f"keras_odir.{{module.name}}")
        import numpy as np, torch
        from keras_odir.convert import main
        from keras_odir.model import build_dual_model
        from keras_odir.weights import keras_to_torch_state
        model = build_dual_model("resnet18", head="v1", image_size=32)
        torch.save({{"model": keras_to_torch_state(model)}}, r"{tmp_path}/m.pth")
        assert main([r"{tmp_path}/m.pth", r"{tmp_path}/m.keras"]) == 0
        assert main([r"{tmp_path}/m.keras", r"{tmp_path}/back.pth"]) == 0
        x = {{"left": np.ones((1, 32, 32, 3), "float32"), "right": np.zeros((1, 32, 32, 3), "float32")}}
        loaded = keras.saving.load_model(r"{tmp_path}/m.keras")
        np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-6)
        assert "torch_odir" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
        print("ok")
    """)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stdout[-3000:] + run.stderr[-3000:]
