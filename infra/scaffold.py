"""``make function NAME=orders [TABLE=1]``: a new function, ready for ``make test``.

Writes ``functions/<name>/`` (an app whose ``POST /<name>`` confirms by e-mail in the
background, the durable ``email.send`` task), ``tests/test_<name>.py``, and the function's
block in template.yaml (its route, environment and policies; with ``TABLE=1`` its own
DynamoDB table too, stored to and read from). It adds the function wherever the project
lists functions: the function errors and throttles alarms and the docs URL outputs of
template.yaml, and (``TABLE=1``) the table's variable in infra/docker-compose.yml, so the
containers serve it. The gateway, ``make run``, the dashboard (per task, not per function)
and the tests find the folder by themselves.

The name is checked first (a lower-case identifier, not a Python keyword or builtin, not
the name of a module, not taken); everything is rendered and formatted in memory, then
written: on any error nothing is left behind. Errors are one line: exit code 2 for a name
refused, 1 for a project this cannot change (template.yaml without its anchor, ruff failing).
The files come from ``infra/scaffold/*.tmpl``: ``$name`` placeholders, and ``# if table``
... ``# end`` sections kept only with a table.
"""

from __future__ import annotations

import argparse
import builtins
import importlib.util
import keyword
import re
import subprocess
import sys
from pathlib import Path
from string import Template
from typing import NoReturn

from infra.template import local_name

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = Path(__file__).with_name("scaffold")
ANCHOR = "  # --- durable tasks -"
"""New blocks go above this line of template.yaml, after the existing functions."""
SECTION = re.compile(r"^# if table\n(.*?)^# end\n", re.DOTALL | re.MULTILINE)
ALARMS = ("FunctionErrorsAlarm", "FunctionThrottlesAlarm")
"""template.yaml's alarms with one metric per function, summed by their ``total`` expression."""
COMPOSE = Path("infra") / "docker-compose.yml"

EXIT_NAME_REFUSED = 2
"""The name is empty, not an identifier, a keyword, a builtin, a module's, or already taken."""
EXIT_PROJECT = 1
"""The project cannot take the function as it is (template.yaml edited past recognition, ruff failing)."""


class ScaffoldError(Exception):
    """One line for the user, and the exit code of its kind."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def refused(message: str) -> ScaffoldError:
    return ScaffoldError(message, EXIT_NAME_REFUSED)


def render(template: str, values: dict[str, str], *, table: bool) -> str:
    text = SECTION.sub(lambda match: match.group(1) if table else "", (TEMPLATES / template).read_text())
    return Template(text).substitute(values)


def check_name(name: str, root: Path) -> None:
    """Refuse a name before anything is written: each reason in one line."""
    example = "e.g. NAME=orders"
    if not name:
        raise refused(f"give the function a name, {example}")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise refused(f"NAME={name!r} must be a lower-case Python identifier (a-z, 0-9, _), {example}")
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise refused(f"NAME={name!r} is a Python keyword, which its module and test cannot be named; {example}")
    if hasattr(builtins, name):
        raise refused(f"NAME={name!r} is a Python builtin, which its module would shadow; {example}")
    if (root / "functions" / name).exists():
        raise refused(f"NAME={name!r}: functions/{name} already exists")
    if (root / "tests" / f"test_{name}.py").exists():
        raise refused(f"NAME={name!r}: tests/test_{name}.py already exists")
    if name in sys.stdlib_module_names or (root / name).exists() or _importable(name):
        raise refused(f"NAME={name!r} is already a module's name ({name}); {example}")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _values(name: str, *, table: bool) -> dict[str, str]:
    title = "".join(part.capitalize() for part in name.split("_"))
    return {
        "name": name,
        "title": title,
        "model": title,
        "summary": "stored, then confirmed by e-mail in the background."
        if table
        else "confirmed by e-mail in the background.",
        "logical_id": f"{title}Function",
        "table_id": f"{title}Table",
        "table_variable": f"{name.upper()}_TABLE",
        "validators": "Email, ResourceId" if table else "Email",
    }


def add_to_template(text: str, values: dict[str, str], *, table: bool) -> str:
    """template.yaml with the function's block, its metric in each per-function alarm and its docs URL output."""
    name, logical_id = values["name"], values["logical_id"]
    ids = [values["logical_id"], *([values["table_id"]] if table else []), f"{values['title']}DocsUrl"]
    for taken in ids:
        if re.search(rf"^  {re.escape(taken)}:", text, re.MULTILINE):
            raise refused(f"NAME={name!r}: template.yaml already has {taken}")
    if ANCHOR not in text:
        anchor = ANCHOR.strip()
        raise ScaffoldError(f"template.yaml has no line starting {anchor!r} to add the block above", EXIT_PROJECT)
    text = text.replace(ANCHOR, render("template.yaml.tmpl", values, table=table) + ANCHOR, 1)
    for alarm in ALARMS:
        text = _add_alarm_metric(text, alarm, name, logical_id)
    return _add_docs_output(text, values)


def _block(text: str, name: str) -> tuple[int, int] | None:
    """Where the top-level resource or output ``name`` starts and ends (at the next one at its indentation)."""
    found = re.search(rf"^  {re.escape(name)}:\n", text, re.MULTILINE)
    if found is None:
        return None
    following = re.compile(r"^(?:  \S|\S)", re.MULTILINE).search(text, found.end())
    return found.start(), following.start() if following else len(text)


def _add_alarm_metric(text: str, alarm: str, name: str, logical_id: str) -> str:
    """One more ``{Id: <name>, ... !Ref <Logical>Function}`` line, copied from the last, and its Id in the SUM."""
    where = _block(text, alarm)
    if where is None:  # the alarm was removed: nothing to keep in step
        return text
    start, end = where
    block = text[start:end]
    metrics = list(re.finditer(r"^( +- \{Id: )(\w+)(, .*!Ref )(\w+)(\}.*)\n", block, re.MULTILINE))
    total = re.search(r"Expression: SUM\(\[([^\]]*)\]\)", block)
    if not metrics or total is None:
        raise ScaffoldError(f"template.yaml: {alarm} has no per-function metric lines to add {name} to", EXIT_PROJECT)
    if name in {metric.group(2) for metric in metrics} or name in re.findall(r"Id: (\w+)", block):
        raise refused(f"NAME={name!r}: {alarm} in template.yaml already has a metric with the id {name}")
    last = metrics[-1]
    line = f"{last.group(1)}{name}{last.group(3)}{logical_id}{last.group(5)}\n"
    block = block[: last.end()] + line + block[last.end() :]
    block = block.replace(total.group(0), f"Expression: SUM([{total.group(1)}, {name}])", 1)
    return text[:start] + block + text[end:]


def _add_docs_output(text: str, values: dict[str, str]) -> str:
    """``<Title>DocsUrl`` after the last docs URL output, as each function has one."""
    outputs = list(re.finditer(r"^  \w+DocsUrl:\n(?:    .*\n)+", text, re.MULTILINE))
    if not outputs:
        return text
    name = values["name"]
    output = (
        f"  {values['title']}DocsUrl:\n"
        f"    Description: OpenAPI docs of the {name} function.\n"
        f"    Value: !Sub https://${{HttpApi}}.execute-api.${{AWS::Region}}.${{AWS::URLSuffix}}/{name}/docs\n"
    )
    end = outputs[-1].end()
    return text[:end] + output + text[end:]


def add_to_compose(text: str, values: dict[str, str]) -> str:
    """The table's variable, with its local name, in the environment every container shares (``x-app``)."""
    environment = re.search(r"^x-app:.*(?:\n.*)*?\n  environment:\n(?:    [^\n]*\n)+", text, re.MULTILINE)
    if environment is None:
        raise ScaffoldError(f"{COMPOSE}: no environment under x-app to add {values['table_variable']} to", EXIT_PROJECT)
    variable = values["table_variable"]
    table = local_name(values["table_id"], "AWS::DynamoDB::Table")
    line = f"    {variable}: {table}  # make function NAME={values['name']}\n"
    return text[: environment.end()] + line + text[environment.end() :]


def formatted(path: str, source: str, root: Path) -> str:
    """``source`` as the project's ruff leaves it (the sections leave imports to merge and sort)."""
    for command in (["check", "--fix", "--quiet", "--exit-zero"], ["format", "--quiet"]):
        result = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "ruff", *command, "--stdin-filename", path, "-"],
            cwd=root,
            input=source,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            first = next(iter(result.stderr.strip().splitlines()), f"exit code {result.returncode}")
            raise ScaffoldError(f"ruff could not format {path}: {first}", EXIT_PROJECT)
        source = result.stdout
    return source


def planned(name: str, *, table: bool, root: Path) -> dict[Path, str]:
    """Every file to write or rewrite, and its whole new text; nothing is written yet."""
    check_name(name, root)
    values = _values(name, table=table)
    app, test = f"functions/{name}/app.py", f"tests/test_{name}.py"
    files = {
        root / "functions" / name / "__init__.py": "",
        root / app: formatted(app, render("app.py.tmpl", values, table=table), root),
        root / test: formatted(test, render("test.py.tmpl", values, table=table), root),
        root / "template.yaml": add_to_template((root / "template.yaml").read_text(), values, table=table),
    }
    if table and (root / COMPOSE).exists():
        files[root / COMPOSE] = add_to_compose((root / COMPOSE).read_text(), values)
    return files


def write_all(files: dict[Path, str]) -> None:
    """Write every file, or, should one fail, none: new files removed, changed ones restored."""
    before = {path: path.read_text() if path.exists() else None for path in files}
    made: list[Path] = []
    try:
        for path, text in files.items():
            for parent in reversed(path.parents):
                if not parent.exists():
                    parent.mkdir()
                    made.append(parent)
            path.write_text(text)
    except BaseException:
        for path, old in before.items():
            if old is not None:
                path.write_text(old)
            else:
                path.unlink(missing_ok=True)
        for folder in reversed(made):
            folder.rmdir()
        raise


def scaffold(name: str, *, table: bool, root: Path = ROOT) -> list[Path]:
    files = planned(name, table=table, root=root)
    write_all(files)
    return list(files)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(f"{message} (usage: make function NAME=orders [TABLE=1])", EXIT_NAME_REFUSED)


def fail(message: str, exit_code: int) -> NoReturn:
    print(f"make function: {message}", file=sys.stderr)
    raise SystemExit(exit_code)


def main(argv: list[str] | None = None, root: Path = ROOT) -> None:
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--table", action="store_true", help="give the function its own DynamoDB table")
    args = parser.parse_args(argv)
    try:
        written = scaffold(args.name, table=args.table, root=root)
    except ScaffoldError as exc:
        fail(str(exc), exc.exit_code)
    except OSError as exc:
        fail(f"could not write the function, nothing was left behind: {exc}", EXIT_PROJECT)
    for path in written:
        print(f"make function: wrote {path.relative_to(root)}")
    print(f"make function: now `make test`, then edit functions/{args.name}/app.py")


if __name__ == "__main__":
    main()
