"""The layering of the code: import-linter's contracts in pyproject.toml hold (and would catch
csg importing analysis), and the method and the data sets import and run without Ray or pyarrow."""
import shutil
import subprocess
import sys
import textwrap

from tests.helpers import REPO

LINT = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
        "--no-cache", "--no-logo", "pyproject.toml"]


def lint_imports(root) -> tuple[int, str]:
    """lint-imports on the tree at `root`, in a process of its own: in this one `csg` is
    imported already, and import-linter would read that copy rather than `root`'s."""
    done = subprocess.run(LINT, cwd=root, capture_output=True, text=True, timeout=120)
    return done.returncode, " ".join((done.stdout + done.stderr).split())  # names wrap at 80 columns


def test_the_import_contracts_hold():
    code, out = lint_imports(REPO)
    assert code == 0 and "0 broken" in out, out


def test_a_csg_module_importing_analysis_breaks_a_contract(tmp_path):
    """What test_the_import_contracts_hold would report, on a copy of the tree where the
    method imports the report: the check can fail."""
    for name in ("csg", "analysis"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    with open(tmp_path / "csg" / "method" / "gate.py", "a") as module:
        module.write("\nimport analysis.report  # noqa: E402,F401\n")
    code, out = lint_imports(tmp_path)
    assert code != 0, out
    assert "analysis builds on csg, never the reverse BROKEN" in out, out
    assert "csg.method.gate -> analysis.report" in out, out


# Run in a fresh interpreter: a finder first on sys.meta_path refuses ray and pyarrow; every
# module of csg.method and csg.data is imported, then a model and a gate are built and run.
WITHOUT_RAY = textwrap.dedent("""
    import importlib, pkgutil, sys

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("ray", "pyarrow"):
                raise ImportError(f"{name} is refused here")

    sys.meta_path.insert(0, Refuse())
    import csg.data
    import csg.method

    for package in (csg.method, csg.data):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(module.name)

    import torch
    from csg.method.gate import ClassSpecificGate
    from csg.method.models import build_model

    model = build_model("resnet20", 3, in_channels=1, mean=(0.5,), std=(0.3,)).eval()
    gate = ClassSpecificGate(3, model.num_filters)
    labels = torch.tensor([0, 1, 2, 1])
    std, csg_logits = model(torch.rand(4, 1, 8, 8), gate.weight[labels], both_paths=True)
    assert std.shape == csg_logits.shape == (4, 3)
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("ray", "pyarrow"))
    assert not loaded, loaded
    print("imported", len([m for m in sys.modules if m.startswith(("csg.method", "csg.data"))]), "modules")
""")


def test_the_method_and_the_data_sets_need_neither_ray_nor_pyarrow():
    done = subprocess.run([sys.executable, "-c", WITHOUT_RAY], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "imported" in done.stdout


# torchvision costs ~2 s to import and Ray ~0.5 s; a study on the embedded data, run in process
# (`--ray auto` on one or two runs), needs neither.
LIGHT_STUDY = textwrap.dedent("""
    import sys

    import analysis.registry
    import csg.cli
    from csg.data import evaluation_set
    from csg.method.models import build_model

    images = evaluation_set("digits", None, "test")
    model = build_model("resnet20", 10, in_channels=1, mean=(0.5,), std=(0.3,))
    loaded = sorted({name.split(".")[0] for name in sys.modules} & {"ray", "torchvision"})
    assert not loaded, loaded
""")


def test_the_analysis_cli_on_embedded_data_loads_neither_torchvision_nor_ray():
    done = subprocess.run([sys.executable, "-c", LIGHT_STUDY], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
