"""``sam build`` for this project: small artifacts, nothing but what Lambda runs.

template.yaml builds with ``BuildMethod: makefile``: SAM runs ``make build-<LogicalId>``
with ``ARTIFACTS_DIR`` set, and the Makefile runs this module:

    python -m infra.sam_build function Notifications "$ARTIFACTS_DIR"
        copies shared/ and functions/notifications/: nothing else (no tests, no venvs)
    python -m infra.sam_build layer Dependencies "$ARTIFACTS_DIR"
        the runtime dependencies of pyproject.toml, pinned by requirements.txt, as a layer
        every function uses; without uvicorn (Lambda runs no server) and prometheus-client
        (Lambda metrics are EMF lines), without pillow, and
        without boto3 and its dependencies, which the Lambda runtime ships (``BUNDLE_BOTO3=1``
        pins them into the layer instead: about 33 MB more)
    python -m infra.sam_build layer Pillow "$ARTIFACTS_DIR"
    python -m infra.sam_build layer Powertools "$ARTIFACTS_DIR"
        pillow (with the image libraries thumbnails use), aws-lambda-powertools: each only
        for the functions whose code imports it

Parts of a layer that no function here uses are left out (``PRUNED``), to keep each
function with its layers under 30 MB (``make bench`` reports them): Pillow's AVIF codec,
font rendering, colour management, Tk and ImageMath/ImageMorph support (thumbnails read
PNG, JPEG, GIF and WebP and write WebP); dnspython, which email-validator imports only
to check that a domain receives mail (pydantic's ``EmailStr`` never asks it to); and the
Powertools utilities other than batch processing and idempotency (its REST event
handler alone is 2.7 MB). A function whose code imports a pruned package fails the
build with a message saying so: take the package out of ``PRUNED``. Compiled extension
modules lose their symbol tables (``strip``), which wheels sometimes keep.

Wheels are chosen for Lambda's CPython 3.12 on manylinux x86_64 whatever machine builds,
and everything is compiled to bytecode with python3.12 when one is here (Lambda cannot
write ``__pycache__``: without it every cold start compiles every module).

    python -m infra.sam_build prepare

downloads those wheels once into ``.venv-lambda/wheels`` (so builds and tests run
offline) and installs ``.venv-lambda/runtime``: what Lambda's python3.12 runtime puts
on ``sys.path`` after the function and its layers (awslambdaric and boto3), for tests
that run a built artifact under the real runtime client.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path

from infra.lock import LOCK

ROOT = Path(__file__).resolve().parents[1]
PYTHON_VERSION = "3.12"
# Amazon Linux 2023 (Lambda's python3.12) has glibc 2.34; pip does not widen --platform itself.
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64")
LOCAL_PACKAGES = ("shared", "functions")
LAMBDA_DIR = ROOT / ".venv-lambda"
WHEELS = LAMBDA_DIR / "wheels"
RUNTIME = LAMBDA_DIR / "runtime"
# What the python3.12 runtime provides (its bootstrap, and the AWS SDK).
RUNTIME_PROVIDED = frozenset(
    {
        "awslambdaric",
        "simplejson",
        "snapshot-restore-py",
        "boto3",
        "botocore",
        "s3transfer",
        "jmespath",
        "python-dateutil",
        "six",
        "urllib3",
    }
)
RUNTIME_DISTRIBUTIONS = ("awslambdaric", "boto3")
NOT_ON_LAMBDA = frozenset({"uvicorn", "prometheus-client"})
# Layers with what only some functions import; the Dependencies layer (every function) holds
# the rest, imported or not (pydantic and FastAPI import email-validator and python-multipart
# on demand, out of sight of an import scan).
GATED_LAYERS = {"Pillow": frozenset({"pillow"}), "Powertools": frozenset({"aws-lambda-powertools"})}
IMPORT_GATED = frozenset().union(*GATED_LAYERS.values())
SHARED_LAYER = "Dependencies"
PRUNED = {
    "Dependencies": ("dns", "dnspython-*.dist-info"),
    "Pillow": (
        "PIL/_avif.*.so",
        "pillow.libs/libavif-*",
        "PIL/_imagingft.*.so",
        "pillow.libs/libfreetype-*",
        "pillow.libs/libharfbuzz-*",
        "pillow.libs/libbrotli*",
        "pillow.libs/libpng16-*",
        "PIL/_imagingcms.*.so",
        "pillow.libs/liblcms2-*",
        "PIL/_imagingtk.*.so",
        "PIL/_imagingmath.*.so",
        "PIL/_imagingmorph.*.so",
    ),
    "Powertools": (
        "aws_lambda_powertools/event_handler",
        *(
            f"aws_lambda_powertools/utilities/{utility}"
            for utility in (
                "auth_alpha",
                "circuit_breaker",
                "data_masking",
                "feature_flags",
                "kafka",
                "metadata",
                "parameters",
                "streaming",
                "validation",
            )
        ),
    ),
}
DYNAMIC_IMPORTS = frozenset({"import_module", "__import__", "iter_modules", "walk_packages"})


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def function_dir(logical_name: str) -> Path:
    """``Notifications`` or ``ImageResizer`` (the logical id without ``Function``) -> its folder."""
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", logical_name).lower()
    folder = ROOT / "functions" / name
    if not (folder / "app.py").is_file():
        known = sorted(path.parent.name for path in (ROOT / "functions").glob("*/app.py"))
        raise SystemExit(f"no functions/{name}/app.py for {logical_name}Function (functions: {', '.join(known)})")
    return folder


# --- which distributions a function imports -----------------------------------------


def _module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:``, which never run."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def _imports(path: Path) -> tuple[set[str], bool]:
    """Absolute module names ``path`` imports, and whether it imports by name at run time."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    modules: set[str] = set()
    dynamic = False
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            modules.add(base)
            modules.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            dynamic = dynamic or name in DYNAMIC_IMPORTS
    return modules, dynamic


def imported_modules(entry: Path) -> set[str]:
    """Third-party modules (dotted names) reachable from ``entry`` through local imports.

    A module that imports by name at run time (``importlib.import_module``,
    ``pkgutil.walk_packages``) could reach any module of ``shared/``, so then all of
    them count.
    """
    seen: set[Path] = set()
    pending = [entry]
    third_party: set[str] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        modules, dynamic = _imports(path)
        if dynamic:
            pending.extend(sorted((ROOT / "shared").rglob("*.py")))
        for module in modules:
            top = module.partition(".")[0]
            if top in LOCAL_PACKAGES:
                parts = module.split(".")
                for depth in range(1, len(parts) + 1):
                    found = _module_file(".".join(parts[:depth]))
                    if found:
                        pending.append(found)
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                third_party.add(module)
    return third_party


def platform_args() -> list[str]:
    """pip options selecting wheels for Lambda's CPython 3.12 on x86_64, whatever machine runs pip."""
    args = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for platform in PLATFORMS:
        args += ["--platform", platform]
    return args


def pruned_imports(entry: Path) -> list[str]:
    """The packages ``PRUNED`` leaves out of a layer that ``entry``'s code imports from."""
    pruned = [pattern.replace("/", ".") for patterns in PRUNED.values() for pattern in patterns if "*" not in pattern]
    imported = imported_modules(entry)
    return [
        package
        for package in pruned
        if any(module == package or module.startswith(f"{package}.") for module in imported)
    ]


def locked_versions() -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", LOCK.read_text(), flags=re.MULTILINE)
    return {canonical(name): version for name, version in pins}


def project_dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {canonical(re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0]) for spec in project["dependencies"]}


def imported_distributions(entry: Path) -> set[str]:
    """The locked distributions whose modules ``entry``'s code imports (directly or not)."""
    providers = importlib.metadata.packages_distributions()
    locked = locked_versions()
    found: set[str] = set()
    for top in sorted({module.partition(".")[0] for module in imported_modules(entry)}):
        distributions = {canonical(name) for name in providers.get(top, [])}
        if not distributions:
            print(f"sam_build: {top!r} is imported but not installed here; skipped (optional import?)", file=sys.stderr)
            continue
        unlocked = distributions - locked.keys()
        if unlocked:
            raise SystemExit(
                f"{entry.relative_to(ROOT)} imports {top!r} from {sorted(unlocked)}, not a runtime dependency: "
                "add it to [project] dependencies in pyproject.toml and run `make lock`"
            )
        found |= distributions
    return found


def layers_for(function: str) -> set[str]:
    """The layers ``functions/<function>`` needs: template.yaml must list exactly these."""
    imported = imported_distributions(ROOT / "functions" / function / "app.py")
    return {SHARED_LAYER} | {layer for layer, contents in GATED_LAYERS.items() if contents & imported}


def layer_distributions(layer: str) -> list[str]:
    if layer in GATED_LAYERS:
        return sorted(GATED_LAYERS[layer])
    if layer != SHARED_LAYER:
        raise SystemExit(f"unknown layer {layer}Layer (layers: {', '.join([SHARED_LAYER, *GATED_LAYERS])})")
    locked = locked_versions()
    stale = project_dependencies() - locked.keys()
    if stale:
        raise SystemExit(f"requirements.txt lacks {sorted(stale)} from pyproject.toml: run `make lock`")
    needed = project_dependencies() - IMPORT_GATED - NOT_ON_LAMBDA
    if os.environ.get("BUNDLE_BOTO3") != "1":
        needed -= RUNTIME_PROVIDED
    return sorted(needed)


# --- building ---------------------------------------------------------------------------


def _pip_install(target: Path, requirements: Iterable[str], *, with_dependencies: bool = True) -> None:
    source = ["--no-index", "--find-links", str(WHEELS)] if WHEELS.is_dir() else []
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check"]
    pip += [] if with_dependencies else ["--no-deps"]
    options = ["--target", str(target), "--upgrade", "-c", str(LOCK), *source, *platform_args()]
    subprocess.run([*pip, *options, *requirements], check=True)  # noqa: S603
    shutil.rmtree(target / "bin", ignore_errors=True)


def prune(layer: str, packages: Path) -> None:
    """Delete the ``PRUNED`` parts of ``layer``; a pattern that no longer matches is reported."""
    for pattern in PRUNED.get(layer, ()):
        matches = list(packages.glob(pattern))
        if not matches:
            print(f"sam_build: {layer}Layer: nothing matches {pattern!r} any more (PRUNED in infra/sam_build.py)")
        for path in matches:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def strip_extensions(packages: Path) -> None:
    """Drop the symbol tables of compiled extension modules: nothing on Lambda reads them.

    Some wheels ship them (Pillow's ``_imaging`` is 3.5 MB with them, 0.8 MB without).
    Without GNU ``strip`` here the layer keeps them: bigger, working the same.
    """
    strip = shutil.which("strip")
    if strip is None:
        print("sam_build: no `strip` here; extension modules keep their symbol tables")
        return
    for extension in sorted([*packages.rglob("*.cpython-*.so"), *packages.rglob("*.abi3.so")]):
        result = subprocess.run([strip, "--strip-unneeded", str(extension)], capture_output=True, text=True)  # noqa: S603
        if result.returncode != 0:
            print(f"sam_build: {extension.relative_to(packages)} left as it is: {result.stderr.strip()}")


def _copy_sources(name: str, artifacts: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "shared", artifacts / "shared", ignore=ignore, dirs_exist_ok=True)
    (artifacts / "functions").mkdir(exist_ok=True)
    shutil.copy2(ROOT / "functions" / "__init__.py", artifacts / "functions" / "__init__.py")
    shutil.copytree(ROOT / "functions" / name, artifacts / "functions" / name, ignore=ignore, dirs_exist_ok=True)


def _python312_executable(candidate: str) -> str | None:
    """The interpreter's own path (not a pyenv shim's, which depends on the environment)."""
    try:
        result = subprocess.run(  # noqa: S603
            [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12), sys.executable)"],
            capture_output=True,
            text=True,
        )
    except OSError:
        return None
    is_312, _, executable = result.stdout.strip().partition(" ")
    return executable if is_312 == "True" else None


def lambda_python() -> str | None:
    """A CPython 3.12 to precompile with, if one runs here.

    ``LAMBDA_PYTHON``, else ``python3.12`` on the PATH, else a 3.12 that pyenv installed
    (its shim answers only when that version is selected).
    """
    candidates = [os.environ.get("LAMBDA_PYTHON", "python3.12")]
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates += sorted(map(str, Path(pyenv_root).glob("versions/3.12.*/bin/python3.12")), reverse=True)
    return next(filter(None, map(_python312_executable, candidates)), None)


def precompile(artifacts: Path) -> None:
    """Ship bytecode: Lambda's code directory is read-only, so it cannot cache its own.

    ``unchecked-hash`` pycs are used whatever the files' timestamps after unzipping.
    """
    python = lambda_python()
    if python is None:
        print("sam_build: no python3.12 here; the artifact ships without bytecode (slower cold starts)")
        return
    compileall = [python, "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash", str(artifacts)]
    subprocess.run(compileall, check=True)  # noqa: S603


def build_function(logical_name: str, artifacts: Path) -> None:
    folder = function_dir(logical_name)
    imported_distributions(folder / "app.py")  # fails on an import that is not a runtime dependency
    pruned = pruned_imports(folder / "app.py")
    if pruned:
        raise SystemExit(
            f"functions/{folder.name} imports from {', '.join(pruned)}, which its layers leave out: "
            "take it out of PRUNED in infra/sam_build.py"
        )
    artifacts.mkdir(parents=True, exist_ok=True)
    print(f"sam_build: functions/{folder.name} -> {artifacts}")
    _copy_sources(folder.name, artifacts)
    precompile(artifacts)


def build_layer(layer: str, artifacts: Path) -> None:
    """Lambda puts a layer's ``python/`` directory on ``sys.path``.

    A gated layer holds its distributions alone: what they depend on comes from the
    Dependencies layer or the runtime (Powertools: typing-extensions, jmespath), since
    layers unpack into the same directory and a second copy would only overwrite the first.
    """
    distributions = layer_distributions(layer)
    print(f"sam_build: {layer}Layer -> {artifacts} with {', '.join(distributions)}")
    _pip_install(artifacts / "python", distributions, with_dependencies=layer == SHARED_LAYER)
    prune(layer, artifacts / "python")
    strip_extensions(artifacts / "python")
    precompile(artifacts)


def prepare() -> None:
    """Download the locked wheels for Lambda and install the runtime stand-in (needs the index once)."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps"]
    subprocess.run([*pip, "--dest", str(WHEELS), *platform_args(), "-r", str(LOCK)], check=True)  # noqa: S603
    shutil.rmtree(RUNTIME, ignore_errors=True)
    _pip_install(RUNTIME, RUNTIME_DISTRIBUTIONS)
    precompile(RUNTIME)  # as the runtime's read-only copy of the SDK must be, or every cold start compiles it


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    function = commands.add_parser("function", help="build one function into ARTIFACTS_DIR (called by make)")
    function.add_argument("name", help="the logical id without 'Function', e.g. Notifications")
    function.add_argument("artifacts", type=Path)
    layer = commands.add_parser("layer", help="build one layer into ARTIFACTS_DIR (called by make)")
    layer.add_argument("name", help="the logical id without 'Layer', e.g. Dependencies")
    layer.add_argument("artifacts", type=Path)
    commands.add_parser("prepare", help="download the Lambda wheels and the runtime stand-in")
    args = parser.parse_args(argv)
    if args.command == "function":
        build_function(args.name, args.artifacts)
    elif args.command == "layer":
        build_layer(args.name, args.artifacts)
    else:
        prepare()


if __name__ == "__main__":
    main()
