"""Measurement 3: cold start, the time to import each function's handler module and to answer its first request.

What is measured is what Lambda imports: each function's directory from ``sam build``
(the same build section 5 sizes) with its layers and the runtime's own packages
(``.venv-lambda/runtime``: awslambdaric, boto3) on ``sys.path`` in Lambda's order
(``/var/task``, ``/opt/python``, ``/var/runtime``), under CPython 3.12 (the template's
``python3.12``), in the environment the template gives the function. The baseline,
``bench.baselines.hello``, is laid out the same way (its own directory, precompiled) on
the same interpreter and the same Dependencies layer, so the ratio compares like with like.

Each import sample is a fresh interpreter that imports one module and prints how long the
import took; the process's own wall time (interpreter start and exit included) is recorded too.
Each first-response sample is what Lambda does at a cold start: a fresh ``python -m
awslambdaric HANDLER`` process against the Runtime API emulator (``infra.runtime_api``),
with one HTTP API request (``GET /health``; the baseline's ``GET /``) waiting; measured from
just before the process is started to the response arriving at the emulator: interpreter
start, the runtime client, the import (the extension registers), init, the first request.
Modules take turns within every repetition, after one discarded warm-up import each
(bytecode present, files in the page cache, as on a warm Lambda host).

Without a build (``--no-sam``, no SAM CLI, no python3.12) the modules are imported from
this checkout in the bench's own interpreter instead, and the report says so: that
environment has the dev extras (e.g. ``rich``, which structlog imports when present), so
its numbers are not judged against the target.
"""

from __future__ import annotations

import math
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import artifacts
from bench.env import PYTHON, ROOT, child_env, progress
from bench.lambda_runtime import health_event
from bench.model import Distribution, Section, Table, Target, fmt, fmt_ratio, median, percentile, ratio
from infra.runtime_api import RuntimeApiEmulator, RuntimeClientProcess, load_event
from infra.template import load as load_template

BASELINE = "bench.baselines.hello"
BASELINE_FILES = ("bench/__init__.py", "bench/baselines/__init__.py", "bench/baselines/hello.py")
PROJECT_PACKAGES = ("functions", "shared", "bench")
TARGET_RATIO = 1.10
FIRST_RESPONSE_RATIO = 1.15
FIRST_RESPONSE_EVENT = "notifications-send-notification-http-api.json"
_PROBE = (
    "import importlib, sys, time\n"
    "started = time.perf_counter()\n"
    "module = importlib.import_module(sys.argv[1])\n"
    "elapsed = time.perf_counter() - started\n"
    "assert callable(getattr(module, 'handler', None)), 'no handler'\n"
    "print(elapsed * 1000)\n"
)
_FIRST_CLIENT = (
    "import importlib, sys, time\n"
    "importlib.import_module(sys.argv[1])\n"
    "aws = sys.modules.get('shared.aws')\n"
    "started = time.perf_counter()\n"
    "if aws is not None:\n"
    "    aws.dynamodb()\n"
    "print((time.perf_counter() - started) * 1000 if aws is not None else 'none')\n"
)


@dataclass(frozen=True)
class Runtime:
    """How one module is imported: interpreter, working directory (the task root) and environment."""

    python: str
    cwd: Path
    env: dict[str, str]


@dataclass
class Module:
    name: str
    runtime: Runtime
    import_ms: list[float] = field(default_factory=list)
    process_ms: list[float] = field(default_factory=list)
    error: str = ""
    profiles: list[dict[str, float]] = field(default_factory=list)
    first_client_ms: list[float] = field(default_factory=list)
    first_response_ms: list[float] = field(default_factory=list)
    first_response_error: str = ""
    importers: dict[str, str] = field(default_factory=dict)

    def packages_ms(self) -> dict[str, float]:
        """Self import time per top-level package, median over the ``-X importtime`` runs."""
        names = {name for profile in self.profiles for name in profile}
        return {name: statistics.median(profile.get(name, 0.0) for profile in self.profiles) for name in names}


@dataclass(frozen=True)
class Layout:
    """The modules to import and where from; ``deployed`` is False for the dev-tree fallback."""

    modules: list[Module]
    description: str
    not_deployed_because: str = ""

    @property
    def deployed(self) -> bool:
        return not self.not_deployed_because


def function_modules() -> list[str]:
    """Each function's handler module, as ``template.yaml`` names it (the worker's is not its app.py)."""
    return sorted(_functions_of(load_template(ROOT / "template.yaml")))


# --- where the modules come from ----------------------------------------------------------


QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/bench-{}"
"""What a ``Ref`` to a queue gives (its URL, which the settings check): never called here."""


def _template_value(value: Any, parameters: dict[str, Any], resources: dict[str, Any]) -> str:
    """An environment value of the built template: parameters by their default, resources by a placeholder."""
    if isinstance(value, dict) and "Ref" in value:
        ref = value["Ref"]
        if ref in parameters:
            default = parameters[ref].get("Default", "")
            return ",".join(map(str, default)) if isinstance(default, list) else str(default)
        if resources.get(ref, {}).get("Type") == "AWS::SQS::Queue":
            return QUEUE_URL.format(ref)
        return f"bench-{ref}"
    if isinstance(value, dict):
        return "bench-" + "-".join(map(str, value))
    return str(value)


def _functions_of(template: dict[str, Any]) -> dict[str, tuple[str, dict[str, str]]]:
    """Handler module -> (logical id, the environment the template gives it)."""
    parameters = template.get("Parameters", {})
    inherited = template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    found: dict[str, tuple[str, dict[str, str]]] = {}
    for name, resource in template.get("Resources", {}).items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        properties = resource.get("Properties", {})
        own = properties.get("Environment", {}).get("Variables", {})
        env = {
            key: _template_value(value, parameters, template.get("Resources", {}))
            for key, value in {**inherited, **own}.items()
        }
        module = str(properties.get("Handler", "")).rpartition(".")[0].replace("/", ".")
        found[module] = (name, env)
    return found


def _baseline_root(workdir: Path) -> Path:
    """``bench.baselines.hello`` alone in a task root, precompiled like the functions."""
    from infra.sam_build import precompile

    root = workdir / "cold-start-baseline"
    for relative in BASELINE_FILES:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, root / relative)
    precompile(root)
    return root


def deployed_layout(workdir: Path, names: list[str]) -> Layout | str:
    """The modules as ``sam build`` lays them out, or why that is not possible here."""
    from infra.sam_build import RUNTIME, SHARED_LAYER, lambda_python, precompile

    python = lambda_python()
    if python is None:
        return "no CPython 3.12 here (Lambda's python3.12); set LAMBDA_PYTHON or install one with pyenv"
    if not RUNTIME.is_dir():
        return f"{RUNTIME.relative_to(ROOT)} is missing (`python -m infra.sam_build prepare` installs it)"
    progress("cold start: imports the `sam build` artifacts (built once, shared with section 5)")
    built, how = artifacts.sam_build(workdir)
    if not built:
        return how
    precompile(RUNTIME)  # `prepare` does it; a stand-in installed before it did would compile boto3 at every import
    build = artifacts.build_directory(workdir)
    template = load_template(build / "template.yaml")
    deployed = _functions_of(template)
    layers = artifacts.function_layers(build / "template.yaml")
    runtime_path = [str(build / f"{SHARED_LAYER}Layer" / "python"), str(RUNTIME)]
    base_env = {key: value for key, value in child_env(workdir).items() if key != "PYTHONPATH"}

    baseline_root = _baseline_root(workdir)
    modules = [
        Module(
            BASELINE,
            Runtime(python, baseline_root, {**base_env, "PYTHONPATH": ":".join([str(baseline_root), *runtime_path])}),
        )
    ]
    for name in names:
        if name not in deployed:
            module = Module(name, Runtime(python, build, base_env))
            module.error = "no function of template.yaml has this handler module"
            modules.append(module)
            continue
        logical_id, env = deployed[name]
        task_root = build / logical_id
        path = [str(task_root), *(str(build / layer / "python") for layer in layers[logical_id]), str(RUNTIME)]
        modules.append(Module(name, Runtime(python, task_root, {**base_env, **env, "PYTHONPATH": ":".join(path)})))
    description = (
        f"Imported as deployed: each function's `sam build` directory ({how}) as the working directory and first "
        "on `sys.path`, then its layers' `python/` and the runtime's packages (`.venv-lambda/runtime`: awslambdaric, "
        f"boto3; precompiled, as Lambda's read-only copy must be), under `{Path(python).name}` "
        f"{_version(python)}, with the template's environment (parameters at their defaults). Baseline: "
        f"`{BASELINE}` in its own precompiled directory, on the same interpreter and the same {SHARED_LAYER} layer."
    )
    return Layout(modules, description)


def dev_layout(workdir: Path, names: list[str], reason: str) -> Layout:
    runtime = Runtime(PYTHON, ROOT, child_env(workdir))
    description = (
        f"**Not the deployed artifact** ({reason}): the modules are imported from this checkout in the bench's own "
        f"interpreter (Python {_version(PYTHON)}, the dev virtualenv, whose extras the Lambda layers do not ship, "
        "e.g. `rich`, which structlog imports when it is installed), so the targets are not judged. "
        f"Baseline: `{BASELINE}` in the same interpreter."
    )
    return Layout([Module(name, runtime) for name in [BASELINE, *names]], description, not_deployed_because=reason)


def _version(python: str) -> str:
    completed = subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        [python, "-c", "import platform; print(platform.python_version())"], capture_output=True, text=True
    )
    return completed.stdout.strip() or "?"


# --- probes ---------------------------------------------------------------------------------


def _run(module: Module, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and tools, fixed arguments
        [module.runtime.python, "-s", *options, module.name],
        cwd=module.runtime.cwd,
        env=module.runtime.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _probe(module: Module) -> None:
    started = time.perf_counter()
    completed = _run(module, "-c", _PROBE)
    wall = (time.perf_counter() - started) * 1000
    if completed.returncode != 0:
        module.error = (completed.stderr.strip().splitlines() or ["exit " + str(completed.returncode)])[-1]
        return
    module.import_ms.append(float(completed.stdout.strip().splitlines()[-1]))
    module.process_ms.append(wall)


def _first_client(module: Module) -> None:
    """After the import, how long ``shared.aws.dynamodb()`` takes: the SDK import and client creation it defers."""
    completed = _run(module, "-c", _FIRST_CLIENT)
    output = completed.stdout.strip().splitlines()
    if completed.returncode == 0 and output and output[-1] != "none":
        module.first_client_ms.append(float(output[-1]))


def _http_get(path: str) -> dict[str, Any]:
    """An HTTP API (v2) event for ``GET path``."""
    return health_event(load_event(FIRST_RESPONSE_EVENT), path)


def serves_http(module: Module) -> bool:
    """The worker's handler takes SQS batches: it has no first HTTP response to time."""
    return module.name == BASELINE or module.name.endswith(".app")


def _first_response(module: Module) -> None:
    """A cold ``python -m awslambdaric`` process, one request waiting: process start to response posted."""
    event = _http_get("/" if module.name == BASELINE else "/health")
    handler = f"{module.name}.handler"
    command = [module.runtime.python, "-s", "-m", "awslambdaric", handler]
    with RuntimeApiEmulator(function_name="cold-start", timeout_s=30) as api:
        invocation = api.submit(event)
        started = time.monotonic()
        process = RuntimeClientProcess(api, handler, env=module.runtime.env, command=command, cwd=module.runtime.cwd)
        try:
            invocation.wait_response(60)
            status = invocation.result.get("statusCode") if invocation.status == "success" else invocation.status
            if status != 200:
                module.first_response_error = f"{status}: {invocation.body!r:.120}"
            else:
                assert invocation.responded_at is not None
                module.first_response_ms.append((invocation.responded_at - started) * 1000)
        except Exception as exc:  # a crashed or hung init: say so in the table, not a traceback
            last = (process.output().strip().splitlines() or [""])[-1]
            module.first_response_error = f"{type(exc).__name__}: {exc} {last[:160]}"
        finally:
            process.close()


def _package(module: str) -> str:
    return module.partition(".")[0]


def parse_importtime(stderr: str) -> tuple[dict[str, float], dict[str, str]]:
    """Self ms per top-level package, and through what each package was mostly imported.

    ``-X importtime`` prints a module after the modules it imported, indented one step
    deeper. A module's importer, here, is its nearest ancestor outside its package
    (then, if different, its nearest ancestor in the project: ``shared``, ``functions``);
    a package is named with the importer under which most of its self time was spent.
    """
    rows: list[tuple[int, str, float]] = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        own_us, _, name = line.removeprefix("import time:").split("|")
        if not own_us.strip().isdigit():
            continue
        rows.append(((len(name) - len(name.lstrip())) // 2, name.strip(), int(own_us) / 1000))
    self_ms: dict[str, float] = {}
    by_importer: dict[str, dict[str, float]] = {}
    # Read backwards, every module comes before the modules it imported: a stack holds its ancestors.
    ancestors: list[tuple[int, str]] = []
    for depth, name, own_ms in reversed(rows):
        while ancestors and ancestors[-1][0] >= depth:
            ancestors.pop()
        package = _package(name)
        self_ms[package] = self_ms.get(package, 0.0) + own_ms
        outside = [ancestor for _, ancestor in reversed(ancestors) if _package(ancestor) != package]
        if outside:
            project = next((ancestor for ancestor in outside if _package(ancestor) in PROJECT_PACKAGES), "")
            importer = outside[0] if project in ("", outside[0]) else f"{outside[0]}, from {project}"
            shares = by_importer.setdefault(package, {})
            shares[importer] = shares.get(importer, 0.0) + own_ms
        ancestors.append((depth, name))
    importers = {package: max(shares, key=shares.__getitem__) for package, shares in by_importer.items()}
    return self_ms, importers


def _import_profile(module: Module) -> None:
    """One run under ``-X importtime``: self time per top-level package and who imported it."""
    # An import statement: importlib.import_module's own import is not reported by -X importtime.
    completed = _run(module, "-X", "importtime", "-c", f"import {module.name}")
    if completed.returncode != 0:
        return
    self_ms, importers = parse_importtime(completed.stderr)
    module.profiles.append(self_ms)
    for package, importer in importers.items():
        module.importers.setdefault(package, importer)


def _extra_imports(module: Module, baseline: Module, top: int = 4) -> str:
    """What ``module`` imports that the baseline does not, heaviest first, and through what."""
    if not module.profiles:
        return ""
    base_packages = baseline.packages_ms()
    extra = {name: ms for name, ms in module.packages_ms().items() if name not in base_packages}
    heaviest = sorted(extra.items(), key=lambda item: -item[1])[:top]
    if not heaviest:
        return "it imports no package the baseline does not"

    def how(name: str) -> str:
        if name == _package(module.name):
            return " (its own modules: building the app, its routes and models)"
        return f" (via {module.importers[name]})" if module.importers.get(name) else ""

    listed = ", ".join(f"{name} {fmt(ms, 0)} ms{how(name)}" for name, ms in heaviest)
    runs = len(module.profiles)
    return f"imports beyond the baseline, self time under -X importtime (median of {runs}): {listed}"


def _why(module: Module, baseline: Module, layout: Layout) -> str:
    if module.error:
        return ""
    extra = _extra_imports(module, baseline)
    if layout.deployed:
        return extra
    return "; ".join(filter(None, [f"not judged: {layout.not_deployed_because}", extra]))


def measure(
    workdir: Path,
    repetitions: int = 8,
    warmup: bool = True,
    profile_imports: bool = True,
    functions: list[str] | None = None,
    build: bool = True,
    profile_runs: int = 3,
    first_response: bool = True,
) -> Section:
    """``functions``: module names to measure (default: every function's ``app``).

    ``build``: import the ``sam build`` artifacts (built once per run, see ``bench.artifacts``);
    False imports this checkout in the bench's interpreter, and the targets are not judged.
    ``first_response``: also time a cold runtime-client process to its first response.
    """
    names = functions or function_modules()
    layout = deployed_layout(workdir, names) if build else "not built: skipped (--no-sam)"
    if isinstance(layout, str):
        progress(f"cold start: NOT measuring the deployed artifact ({layout}); importing this checkout instead")
        layout = dev_layout(workdir, names, layout)
    modules = layout.modules
    progress(f"cold start: {len(modules)} modules x {repetitions} fresh interpreters")
    for module in modules:
        if warmup and not module.error:
            _probe(module)
            module.import_ms.clear()
            module.process_ms.clear()
    for _ in range(profile_runs if profile_imports else 0):
        for module in modules:
            if not module.error:
                _import_profile(module)
                _first_client(module)
    for repetition in range(repetitions):
        offset = repetition % len(modules)
        for module in modules[offset:] + modules[:offset]:
            if not module.error:
                _probe(module)
            if first_response and not module.error and serves_http(module):
                _first_response(module)
        if (repetition + 1) % 5 == 0 or repetition + 1 == repetitions:
            progress(f"cold start: {repetition + 1}/{repetitions} repetitions")
    return _section(layout, repetitions, warmup)


def paired_ratio(samples: list[float], baseline: list[float]) -> float:
    """The median of each repetition's ratio to the baseline's sample of the same repetition.

    Modules take turns within a repetition, so a pair ran seconds apart: pairing cancels
    the slower drifts of a shared machine's load, which a ratio of medians would keep.
    """
    if not samples or len(samples) != len(baseline):
        return ratio(median(samples), median(baseline))
    return median([sample / base for sample, base in zip(samples, baseline, strict=True)])


def _section(layout: Layout, repetitions: int, warmup: bool) -> Section:
    modules = layout.modules
    baseline = modules[0]
    table = Table(
        "Import of the handler module in a fresh interpreter (ms)",
        [
            "module",
            "n",
            "import median",
            "import p95",
            "ratio (paired)",
            "process wall median",
            "process wall p95",
            "then first AWS client, median",
        ],
    )
    section = Section(
        key="cold_start",
        title="3. Cold start: importing the handler module, and the first response",
        intro=(
            f"{layout.description} {repetitions} fresh interpreters per module, modules interleaved"
            f"{', after one discarded warm-up import each' if warmup else ''}. 'import' is timed inside the "
            "interpreter; 'process wall' adds interpreter start-up and exit. 'ratio (paired)': the median over "
            "repetitions of the import time over the baseline's in the same repetition. Without "
            "`AWS_LAMBDA_RUNTIME_API` the post-response extension is not registered (a thread and one local HTTP "
            "call at init, not timed here)."
        ),
        tables=[table],
    )
    if any(module.first_client_ms for module in modules):
        section.notes.append(
            "'then first AWS client': in another fresh interpreter, after the import, the time "
            "`shared.aws.dynamodb()` takes (no network call): the boto3 import and client creation that "
            "`shared.aws` defers to the first request calling AWS, which pays it instead of the import "
            "(the users, items and uploads endpoints all call DynamoDB; a function that never calls AWS never pays "
            "it). Median of the profile runs."
        )
    base = median(baseline.import_ms)
    for module in modules:
        if module.error:
            table.rows.append([f"`{module.name}`", "0", f"failed: {module.error}", "", "", "", "", ""])
            continue
        own = median(module.import_ms)
        table.rows.append(
            [
                f"`{module.name}`",
                str(len(module.import_ms)),
                fmt(own),
                fmt(percentile(module.import_ms, 95)),
                "baseline" if module is baseline else fmt_ratio(paired_ratio(module.import_ms, baseline.import_ms)),
                fmt(median(module.process_ms)),
                fmt(percentile(module.process_ms, 95)),
                fmt(median(module.first_client_ms)) if module.first_client_ms else "",
            ]
        )
        section.distributions.append(Distribution(module.name.removeprefix("functions."), module.import_ms))
    if any(module.first_response_ms or module.first_response_error for module in modules):
        section.tables.append(_first_response_table(modules))
        section.notes.append(
            "'first response': a cold `python -m awslambdaric HANDLER` process (same interpreter, directories and "
            "environment as the imports) against the Runtime API emulator on 127.0.0.1, with one HTTP API request "
            "waiting (`GET /health`; the baseline's `GET /`), from just before the process starts to the response "
            "arriving at the emulator: interpreter start, runtime client, import (the post-response extension "
            "registers), init and the first request; taken in the same repetitions as the imports, interleaved. "
            "The worker takes SQS batches, not HTTP requests: no first response is timed for it."
        )
    for module in modules[1:]:
        if serves_http(module) and (module.first_response_ms or module.first_response_error):
            section.targets.append(_first_response_target(module, baseline, layout))
    for module in modules[1:]:
        measured = math.nan if module.error else paired_ratio(module.import_ms, baseline.import_ms)
        if module.error:
            shown = f"failed to import: {module.error}"
        else:
            shown = f"{fmt_ratio(measured)} (medians {fmt(median(module.import_ms))} vs {fmt(base)} ms)"
        if not layout.deployed and not module.error:
            shown += " in the dev virtualenv, not the deployed artifact"
        judged = layout.deployed and not math.isnan(measured)
        section.targets.append(
            Target(
                name=f"(3) cold start, `{module.name}`",
                goal=f"import <= {TARGET_RATIO:g}x the bare FastAPI + Mangum app",
                measured=shown,
                met=measured <= TARGET_RATIO if judged else None,
                why=_why(module, baseline, layout),
            )
        )
    return section


def _first_response_table(modules: list[Module]) -> Table:
    baseline = modules[0]
    table = Table(
        "Time to first response of a cold Lambda process (ms)",
        ["module", "n", "median", "p95", "ratio (paired)", "beyond the import, median"],
    )
    for module in modules:
        if not serves_http(module):
            continue
        if module.error or module.first_response_error:
            table.rows.append([f"`{module.name}`", "0", f"failed: {module.error or module.first_response_error}"])
            continue
        samples = module.first_response_ms
        paired = paired_ratio(samples, baseline.first_response_ms)
        table.rows.append(
            [
                f"`{module.name}`",
                str(len(samples)),
                fmt(median(samples)),
                fmt(percentile(samples, 95)),
                "baseline" if module is baseline else fmt_ratio(paired),
                fmt(median(samples) - median(module.import_ms)),
            ]
        )
    return table


def _first_response_target(module: Module, baseline: Module, layout: Layout) -> Target:
    error = module.error or module.first_response_error
    measured = math.nan if error else paired_ratio(module.first_response_ms, baseline.first_response_ms)
    if error:
        shown = f"failed: {error}"
    else:
        ours, base = median(module.first_response_ms), median(baseline.first_response_ms)
        shown = f"{fmt_ratio(measured)} (medians {fmt(ours)} vs {fmt(base)} ms, {fmt(ours - base)} ms apart)"
    judged = layout.deployed and not math.isnan(measured)
    return Target(
        name=f"(3) first response, `{module.name}`",
        goal=f"process start to first response <= {FIRST_RESPONSE_RATIO:g}x the bare FastAPI + Mangum app",
        measured=shown if layout.deployed or error else f"{shown} in the dev virtualenv, not the deployed artifact",
        met=measured <= FIRST_RESPONSE_RATIO if judged else None,
        why=(
            "beyond the import: the extension's registration (a thread, one local HTTP call), the logging "
            "configuration and the first request through the template's middleware and log lines"
        ),
    )
