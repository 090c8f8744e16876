"""The dependency arrows of docs/DESIGN.md, checked on the import statements of every module."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ssl_mamba"

# A subpackage may import only from the ones listed for it (plus itself).
BASE = {"config", "registry", "errors", "utils", "paper_tables", "__init__"}
ALLOWED = {
    "ops": BASE,
    "layers": BASE | {"ops"},
    "models": BASE | {"ops", "layers"},
    "data": BASE,
    "losses": BASE,
    "metrics": BASE | {"data"},
    "engine": BASE | {"ops", "layers", "models", "data", "losses", "metrics"},
}
COMPOSITION_ROOT = {"cli", "demo", "runs"}  # the only modules allowed to import `methods`


def imported_subpackages(path: Path, source: str = None):
    """Yield (top-level ssl_mamba part, full module) for each import inside the package."""
    tree = ast.parse(source if source is not None else path.read_text())
    rel_parts = path.relative_to(PACKAGE).with_suffix("").parts
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(rel_parts[: len(rel_parts) - node.level])
                target = base + (node.module.split(".") if node.module else [])
                if not target:  # `from .. import x` at the package root
                    target = [alias.name for alias in node.names][:1]
                yield target[0], ".".join(target)
            elif node.module and node.module.split(".")[0] in ("ssl_mamba", "methods"):
                parts = node.module.split(".")
                yield (parts[1] if parts[0] == "ssl_mamba" and len(parts) > 1 else parts[0]), node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "methods":
                    yield "methods", alias.name
                elif parts[0] == "ssl_mamba" and len(parts) > 1:
                    yield parts[1], alias.name


def test_dependencies_point_one_way():
    violations = []
    for path in PACKAGE.rglob("*.py"):
        part = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for target, module in imported_subpackages(path):
            if target == "methods" and part not in COMPOSITION_ROOT:
                violations.append(f"{path.relative_to(PACKAGE)} imports {module} (only {COMPOSITION_ROOT} may)")
            elif part in ALLOWED and target != part and target not in ALLOWED[part]:
                violations.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not violations, "\n".join(violations)


def test_checker_sees_violations():
    """The checker itself must flag bad arrows (a test that cannot fail proves nothing)."""
    probe = PACKAGE / "ops" / "probe.py"  # never written: only its position in the package matters
    assert [t for t, _ in imported_subpackages(probe, "from ..engine import method\n")] == ["engine"]
    assert [t for t, _ in imported_subpackages(probe, "import methods.cps\n")] == ["methods"]
    assert [t for t, _ in imported_subpackages(probe, "from ssl_mamba.models import unet\n")] == ["models"]
    assert "engine" not in ALLOWED["ops"] and "models" not in ALLOWED["ops"]
