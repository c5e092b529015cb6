"""Measurement 3: cold start, the wall time to import each function's handler module.

Each sample is a fresh interpreter that imports one module and prints how long the import
took; the process's own wall time (interpreter start and exit included) is recorded too.
Modules take turns within every repetition, after one discarded warm-up import each
(bytecode compiled, files in the page cache, as on a warm Lambda host).
"""

from __future__ import annotations

import math
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.env import PYTHON, ROOT, child_env, progress
from bench.model import Distribution, Section, Table, Target, fmt, fmt_ratio, median, percentile, ratio

BASELINE = "bench.baselines.hello"
_PROBE = (
    "import importlib, sys, time\n"
    "started = time.perf_counter()\n"
    "module = importlib.import_module(sys.argv[1])\n"
    "elapsed = time.perf_counter() - started\n"
    "assert callable(getattr(module, 'handler', None)), 'no handler'\n"
    "print(elapsed * 1000)\n"
)


@dataclass
class Module:
    name: str
    import_ms: list[float] = field(default_factory=list)
    process_ms: list[float] = field(default_factory=list)
    error: str = ""
    packages_ms: dict[str, float] = field(default_factory=dict)


def function_modules() -> list[str]:
    """``functions.<name>.app`` for every function that has an ``app.py``."""
    return [
        f"functions.{path.parent.name}.app" for path in sorted((ROOT / "functions").glob("*/app.py")) if path.is_file()
    ]


def _probe(module: Module, env: dict[str, str]) -> None:
    started = time.perf_counter()
    completed = subprocess.run(  # noqa: S603 - our own interpreter and tools, fixed arguments
        [PYTHON, "-c", _PROBE, module.name], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    wall = (time.perf_counter() - started) * 1000
    if completed.returncode != 0:
        module.error = (completed.stderr.strip().splitlines() or ["exit " + str(completed.returncode)])[-1]
        return
    module.import_ms.append(float(completed.stdout.strip().splitlines()[-1]))
    module.process_ms.append(wall)


def _import_profile(module: Module, env: dict[str, str]) -> None:
    """Self import time per top-level package, from one run under ``-X importtime``."""
    completed = subprocess.run(  # noqa: S603 - our own interpreter and tools, fixed arguments
        [PYTHON, "-X", "importtime", "-c", f"import {module.name}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    for line in completed.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        own, _, name = line.removeprefix("import time:").split("|")
        if not own.strip().isdigit():
            continue
        package = name.strip().split(".")[0]
        module.packages_ms[package] = module.packages_ms.get(package, 0.0) + int(own) / 1000


def _extra_imports(module: Module, baseline: Module, top: int = 4) -> str:
    """What ``module`` imports that the baseline does not, heaviest first."""
    if not module.packages_ms:
        return ""
    extra = {name: ms for name, ms in module.packages_ms.items() if name not in baseline.packages_ms}
    heaviest = sorted(extra.items(), key=lambda item: -item[1])[:top]
    if not heaviest:
        return "it imports no package the baseline does not"
    listed = ", ".join(f"{name} {fmt(ms, 0)} ms" for name, ms in heaviest)
    why = f"imports beyond the baseline, by self time under -X importtime: {listed}"
    if "rich" in extra:
        why += (
            " (rich comes from the dev extra, via schemathesis; structlog imports it when installed, the Lambda "
            "artifact does not ship it)"
        )
    return why


def measure(
    workdir: Path,
    repetitions: int = 8,
    warmup: bool = True,
    profile_imports: bool = True,
    functions: list[str] | None = None,
) -> Section:
    """``functions``: module names to measure (default: every function's ``app``)."""
    modules = [Module(BASELINE), *(Module(name) for name in (functions or function_modules()))]
    env = child_env(workdir)
    progress(f"cold start: {len(modules)} modules x {repetitions} fresh interpreters")
    for module in modules:
        if warmup:
            _probe(module, env)
            module.import_ms.clear()
            module.process_ms.clear()
        if profile_imports and not module.error:
            _import_profile(module, env)
    for repetition in range(repetitions):
        offset = repetition % len(modules)
        for module in modules[offset:] + modules[:offset]:
            if not module.error:
                _probe(module, env)
        if (repetition + 1) % 5 == 0 or repetition + 1 == repetitions:
            progress(f"cold start: {repetition + 1}/{repetitions} repetitions")
    return _section(modules, repetitions, warmup)


def _section(modules: list[Module], repetitions: int, warmup: bool) -> Section:
    baseline = modules[0]
    table = Table(
        "Import of the handler module in a fresh interpreter (ms)",
        ["module", "n", "import median", "import p95", "ratio", "process wall median", "process wall p95"],
    )
    section = Section(
        key="cold_start",
        title="3. Cold start: importing the handler module",
        intro=(
            f"{repetitions} fresh interpreters per module, modules interleaved"
            f"{', after one discarded warm-up import each' if warmup else ''}. Baseline: `{BASELINE}`, "
            "the smallest FastAPI + Mangum function. 'import' is timed inside the "
            "interpreter; 'process wall' adds interpreter start-up and exit."
        ),
        tables=[table],
    )
    base = median(baseline.import_ms)
    for module in modules:
        if module.error:
            table.rows.append([module.name, "0", f"failed: {module.error}", "", "", "", ""])
            continue
        own = median(module.import_ms)
        table.rows.append(
            [
                f"`{module.name}`",
                str(len(module.import_ms)),
                fmt(own),
                fmt(percentile(module.import_ms, 95)),
                "baseline" if module is baseline else fmt_ratio(ratio(own, base)),
                fmt(median(module.process_ms)),
                fmt(percentile(module.process_ms, 95)),
            ]
        )
        section.distributions.append(Distribution(module.name.removeprefix("functions."), module.import_ms))
    for module in modules[1:]:
        measured = math.nan if module.error else ratio(median(module.import_ms), base)
        met = None if math.isnan(measured) else measured <= 1.25
        section.targets.append(
            Target(
                name=f"(3) cold start, `{module.name}`",
                goal="import <= 1.25x the bare FastAPI + Mangum app",
                measured=(
                    f"failed to import: {module.error}"
                    if module.error
                    else f"{fmt_ratio(measured)} ({fmt(median(module.import_ms))} vs {fmt(base)} ms)"
                ),
                met=met,
                why="" if module.error else _extra_imports(module, baseline),
            )
        )
    return section
