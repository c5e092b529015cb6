"""The checks that keep the docs true to the repository; each returns its problems as ``file:line: what``.

Which files: ``README.md``, every ``docs/**/*.md`` and every other ``.md`` they link to (so
``bench/results.md``), whatever they are named or split into.

- **Links**: a relative link's file exists; its ``#anchor`` is a heading of that ``.md`` file (or
  of the same file for a bare ``#anchor``), by GitHub's rules (``markdown.github_slug``). URLs with
  a scheme are not followed; an anchor into a file that is not Markdown is not checked.
- **make targets**: ``make ...`` in inline code (``make run``) or in a code block's command (after
  a ``$`` prompt; every line of a block without prompts) names targets of the Makefile: its rules
  (``$(VAR)`` in a target expanded) or what a pattern rule matches (``build-%Function``).
  ``VAR=value`` words and ``-flags`` are skipped; the targets end at the first word that cannot be
  one (``make function: wrote ...`` is make's output, naming none). A ``<placeholder>`` in a target
  (``make build-<LogicalId>``) matches any text, and then also a pattern rule as written.
- **Environment variables**: a variable is an UPPER_SNAKE word (``[A-Z][A-Z0-9_]*``) that inline
  code shows as one: followed by ``=`` anywhere in a span (`` `METRICS=off` ``,
  `` `make run PORT=9000` ``) or written ``$NAME``, or the whole span with an ``_`` in it
  (`` `TASK_QUEUE_URL` ``); in code blocks only ``NAME=value`` (``-e FUNCTION=users``,
  ``DURABLE_TASKS=... python``). So ``INFO``, ``POST`` or ``SEARCH`` alone are words, not variables.
  Each must be one the project reads (``ProjectNames.read``, or a setting's variable), or, shown
  alone, the name of a constant of its Python code (`` `MOTO_CANNOT_CREATE` ``), or on ``ALLOWED``
  (other tools' variables, each with why); and every setting's variable must be named in the docs.
- **Machine paths**: no absolute path of the machine that wrote a file (its checkout, a home, a
  pytest temporary directory): generated reports and copied outputs show paths relative to the
  repository.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.markdown import Doc, is_external

ALLOWED: Mapping[str, str] = {
    "AWS_*": "the AWS SDKs' and Lambda runtime's own variables (credentials, region, endpoint, runtime API)",
    "POWERTOOLS_*": "Powertools for AWS Lambda's own settings, which its Logger, Metrics and Idempotency read",
    "SAM_CLI_*": "SAM CLI's own settings (the Makefile and the rehearsal set its telemetry and poll delay)",
    "DOCKER_HOST": "the Docker client's engine address, which the container tests use as docker does",
    "CAPABILITY_IAM": "not a variable: CloudFormation's capability a deploy that creates roles acknowledges",
    "CREATE_COMPLETE": "not a variable: CloudFormation's status of a created stack",
    "ORDERS_TABLE": "the table variable of the docs' example function (make function NAME=orders TABLE=1)",
}
"""Names the docs may show as variables that no code here reads, each with why: the one allow-list."""

# ---- which files -------------------------------------------------------------------------------


def doc_files(root: Path) -> list[Doc]:
    """README.md, docs/**/*.md, and every .md of the repository they link to, transitively."""
    start = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    found: dict[Path, Doc] = {}
    pending = [path for path in start if path.is_file()]
    while pending:
        path = pending.pop(0).resolve()
        if path in found or not path.is_relative_to(root.resolve()):
            continue
        doc = found[path] = Doc.read(path, root.resolve())
        for link in doc.links:
            target = _link_file(doc, link.target)
            if target is not None and target.suffix == ".md" and target.is_file():
                pending.append(target)
    return list(found.values())


def _link_file(doc: Doc, target: str) -> Path | None:
    """The file a relative link points to (``None`` for an external link or a bare ``#anchor``)."""
    if is_external(target) or target.startswith("#"):
        return None
    path = target.split("#", 1)[0].split("?", 1)[0]
    return (doc.path.parent / path).resolve() if path else None


# ---- links and anchors -------------------------------------------------------------------------


def broken_links(docs: Iterable[Doc]) -> list[str]:
    """Every relative link whose file is missing, and every ``#anchor`` no heading there makes."""
    docs = list(docs)
    by_path = {doc.path: doc for doc in docs}
    problems = []
    for doc in docs:
        for link in doc.links:
            if is_external(link.target):
                continue
            where = f"{doc.name}:{link.line}: ({link.target})"
            file = _link_file(doc, link.target) or doc.path
            if not file.exists():
                problems.append(f"{where} no such file {doc.shown(file)}")
                continue
            _, _, anchor = link.target.partition("#")
            if not anchor or file.suffix != ".md":
                continue
            target_doc = by_path.get(file) or Doc.read(file, doc.root)
            if anchor not in target_doc.anchors:
                problems.append(f"{where} no heading makes #{anchor} in {doc.shown(file)}")
    return problems


# ---- make targets ------------------------------------------------------------------------------

_TARGET_WORD = re.compile(r"[\w./%<>@+-]+")
_ASSIGNMENT = re.compile(r"^\s*(?:export\s+|override\s+)?([A-Za-z_][\w.]*)\s*(?::{1,3}=|\?=|\+=|!=|=)")
_RULE = re.compile(r"^([^\t#:=][^#:=]*?)\s*::?(?!=)")
_REFERENCE = re.compile(r"\$[({]([A-Za-z_][\w.]*)[)}]")
_PROMPT = re.compile(r"^\s*\$\s+")
_PLACEHOLDER = re.compile(r"<[^<>]+>")


class Makefile:
    """The targets a Makefile defines: its explicit rules and its pattern rules."""

    def __init__(self, text: str) -> None:
        variables: dict[str, str] = {}
        rules: list[str] = []
        for line in _logical_lines(text):
            if line.startswith("\t"):
                continue
            if assignment := _ASSIGNMENT.match(line):
                variables[assignment.group(1)] = line[assignment.end() :].strip()
            elif rule := _RULE.match(line):
                rules += _expand(rule.group(1), variables).split()
        self.targets = {name for name in rules if "%" not in name and not re.fullmatch(r"\.[A-Z_]+", name)}
        self.patterns = {name for name in rules if "%" in name}

    def has(self, target: str) -> bool:
        """``target`` is a rule, or a pattern rule makes it; a ``<placeholder>`` matches any text."""
        if _PLACEHOLDER.search(target):
            wanted = re.compile(".+".join(re.escape(part) for part in _PLACEHOLDER.split(target)))
            return any(wanted.fullmatch(name) for name in self.targets | self.patterns)
        if target in self.targets:
            return True
        return any(re.fullmatch(re.escape(pattern).replace("%", ".+"), target) for pattern in self.patterns)


def _logical_lines(text: str) -> Iterator[str]:
    """The Makefile's lines, a backslash continuation joined to its line."""
    yield from re.sub(r"\\\n\s*", " ", text).splitlines()


def _expand(text: str, variables: Mapping[str, str]) -> str:
    for _ in range(10):
        expanded = _REFERENCE.sub(lambda match: variables.get(match.group(1), ""), text)
        if expanded == text:
            break
        text = expanded
    return text


def make_mentions(docs: Iterable[Doc]) -> Iterator[tuple[Doc, int, str]]:
    """``(doc, line, target)`` for each target of each ``make`` command the docs show."""
    for doc in docs:
        for span in doc.code_spans:
            yield from ((doc, span.line, target) for target in _make_targets(span.text))
        prompted = {line.block for line in doc.code_lines if _PROMPT.match(line.text)}
        for line in doc.code_lines:
            if line.block not in prompted or _PROMPT.match(line.text):  # else the output of a command
                yield from ((doc, line.line, target) for target in _make_targets(line.text))


def _make_targets(text: str) -> Iterator[str]:
    """The targets of each ``make`` command of a shell line (``$ make a && make b VAR=1``)."""
    for command in re.split(r"&&|\|\||;|\|", _PROMPT.sub("", text)):
        if command.strip().startswith("make "):
            yield from _targets(command.strip())


def _targets(command: str) -> Iterator[str]:
    """The targets of ``make [VAR=value | -flag]... target...``, up to the first word that is none."""
    for word in command.split()[1:]:
        if word.startswith("#"):
            return
        if word.startswith("-") or re.match(r"^[A-Za-z_]\w*=", word):
            continue
        if not _TARGET_WORD.fullmatch(word):
            return
        yield word


def unknown_make_targets(docs: Iterable[Doc], makefile: Makefile) -> list[str]:
    return [
        f"{doc.name}:{line}: make {target}: no such target in the Makefile"
        for doc, line, target in make_mentions(docs)
        if not makefile.has(target)
    ]


# ---- environment variables ---------------------------------------------------------------------

_NAME = r"[A-Z][A-Z0-9_]*"
_SNAKE = re.compile(r"_?[A-Z][A-Z0-9_]*")
_ASSIGNED = re.compile(rf"(?<![\w.$-])({_NAME})=")
_DOLLAR = re.compile(rf"\$\{{?({_NAME})\b")


@dataclass(frozen=True)
class Mention:
    doc: Doc
    line: int
    name: str
    assigned: bool
    """Shown with a value (``NAME=...``): a variable for sure, never a constant's name."""


def variable_mentions(docs: Iterable[Doc]) -> Iterator[Mention]:
    """Each environment variable the docs name (the module docstring says how one is told)."""
    for doc in docs:
        for span in doc.code_spans:
            assigned = set(_ASSIGNED.findall(span.text)) | set(_DOLLAR.findall(span.text))
            yield from (Mention(doc, span.line, name, True) for name in sorted(assigned))
            if _SNAKE.fullmatch(span.text) and "_" in span.text and span.text not in assigned:
                yield Mention(doc, span.line, span.text, False)
        for line in doc.code_lines:
            yield from (Mention(doc, line.line, name, True) for name in _ASSIGNED.findall(line.text))


def unknown_variables(
    docs: Iterable[Doc], read: set[str], constants: set[str] = frozenset(), allowed: Mapping[str, str] = ALLOWED
) -> list[str]:
    """The variables the docs name that nothing here reads, no ``allowed`` pattern covers, and that are
    not, shown alone, the name of one of the project's ``constants``.
    """
    return [
        f"{mention.doc.name}:{mention.line}: {mention.name} is not read by the project (its settings, "
        "os.environ, Makefile, Dockerfile, template.yaml) nor on the allow-list of other tools' variables"
        for mention in variable_mentions(docs)
        if mention.name not in read
        and (mention.assigned or mention.name not in constants)
        and not any(fnmatch.fnmatchcase(mention.name, pattern) for pattern in allowed)
    ]


def undocumented_settings(docs: Iterable[Doc], settings: Iterable[str]) -> list[str]:
    """The settings' variables no doc names."""
    named = {mention.name for mention in variable_mentions(docs)}
    return [
        f"{name}: a setting (shared/settings.py) that no doc names; document it where its subject is"
        for name in sorted(set(settings) - named)
    ]


def settings_variables() -> set[str]:
    """The variable of each field of ``shared.settings.Settings`` (its alias, else its name in upper case)."""
    from shared.settings import Settings

    return {
        field.validation_alias if isinstance(field.validation_alias, str) else name.upper()
        for name, field in Settings.model_fields.items()
    }


READ_FROM = ("shared", "functions", "infra", "bench", "tests", ".ci")
"""Where the project's code lives; with the Makefile, the Dockerfile and template.yaml."""

_CONSTANT = re.compile(r"(?m)^(_?[A-Z][A-Z0-9_]*)\s*(?::[^=\n]*)?=(?!=)")


@dataclass(frozen=True)
class ProjectNames:
    read: set[str]
    """Every variable the project reads: Python's ``os.environ``/``os.getenv`` reads, scripts' and the
    Makefile's ``$NAME``, the Dockerfile's ``ENV``, template.yaml's and compose files' variables."""
    constants: set[str]
    """The module-level UPPER_CASE names of its Python code (``MOTO_CANNOT_CREATE``, ``ENDS_HERE``)."""


def project_names(root: Path) -> ProjectNames:
    read: set[str] = set()
    constants: set[str] = set()
    for folder in READ_FROM:
        for path in sorted((root / folder).rglob("*")):
            if not path.is_file() or any(part.startswith((".venv", "__pycache__")) for part in path.parts):
                continue
            if path.suffix == ".py":
                source = path.read_text(encoding="utf-8")
                read |= python_reads(source)
                constants |= set(_CONSTANT.findall(source))
            elif path.suffix in {".yml", ".yaml"}:
                read |= _yaml_variables(path.read_text(encoding="utf-8"))
            elif path.suffix in {"", ".sh"} and path.read_bytes().startswith(b"#!"):
                script = path.read_text(encoding="utf-8")
                read |= set(_DOLLAR.findall(script)) | set(re.findall(rf"(?m)^\s*(?:export\s+)?({_NAME})=", script))
    makefile = root / "Makefile"
    if makefile.is_file():
        text = makefile.read_text(encoding="utf-8")
        read |= {name for name in _REFERENCE.findall(text) if re.fullmatch(_NAME, name)}
        read |= set(re.findall(rf"(?m)^(?:export\s+)?({_NAME})\s*\?=", text))
    dockerfile = root / "Dockerfile"
    if dockerfile.is_file():
        for instruction in re.findall(r"(?m)^(?:ENV|ARG)\s+((?:.*\\\n)*.*)", dockerfile.read_text(encoding="utf-8")):
            read |= set(re.findall(rf"(?:^|\s)({_NAME})=", instruction))
    if (root / "template.yaml").is_file():
        read |= _yaml_variables((root / "template.yaml").read_text(encoding="utf-8"))
    return ProjectNames(read, constants)


def _yaml_variables(text: str) -> set[str]:
    """UPPER_SNAKE mapping keys (``USERS_TABLE: !Ref ...``) and ``- NAME=value`` items: a resource's
    properties are CamelCase, so these are the variables a function or service is given.
    """
    keys = re.findall(rf"(?m)^\s+({_NAME}):", text)
    items = re.findall(rf"(?m)^\s+-\s+[\"']?({_NAME})=", text)
    return set(keys + items)


_READS_ENVIRON = re.compile(r"environ(?:\.get|\.setdefault|\.pop)\(|environ\[|in (?:os\.)?environ\b|getenv\(")


def python_reads(source: str) -> set[str]:
    """The variables a module reads: ``os.environ.get(X)``, ``os.environ[X]``, ``X in os.environ``,
    ``os.getenv(X)`` (also through a name bound to ``os.environ``), ``X`` a string, a module-level
    string constant, or a parameter of a function of the module called with a string there.
    """
    if not _READS_ENVIRON.search(source):
        return set()
    tree = ast.parse(source)
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    nodes = list(ast.walk(tree))
    functions = [node for node in nodes if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]
    names: set[str] = set()
    forwarded: set[tuple[str, int]] = set()
    for key in _environ_keys(nodes):
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            names.add(key.value)
        elif isinstance(key, ast.Name) and key.id in constants:
            names.add(constants[key.id])
        elif isinstance(key, ast.Name):
            forwarded |= {
                (function.name, [arg.arg for arg in function.args.args].index(key.id))
                for function in functions
                if function.lineno <= key.lineno <= (function.end_lineno or 0)
                and key.id in [arg.arg for arg in function.args.args]
            }
    for node in nodes:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            for name, index in forwarded:
                argument = node.args[index] if node.func.id == name and len(node.args) > index else None
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                    names.add(argument.value)
    return names


def _environ_keys(nodes: Iterable[ast.AST]) -> Iterator[ast.expr]:
    """The key of each read of ``os.environ`` among ``nodes``."""
    for node in nodes:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            owner, method = node.func.value, node.func.attr
            if (_is_environ(owner) and method in {"get", "setdefault", "pop"}) or (
                isinstance(owner, ast.Name) and owner.id == "os" and method == "getenv"
            ):
                yield node.args[0]
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_environ(node.value):
            yield node.slice
        elif isinstance(node, ast.Compare) and [type(op) for op in node.ops] in ([ast.In], [ast.NotIn]):
            yield from [node.left] if _is_environ(node.comparators[0]) else []


def _is_environ(node: ast.expr) -> bool:
    """``os.environ``, or a name for it (``environ``)."""
    if isinstance(node, ast.Attribute):
        return node.attr == "environ"
    return isinstance(node, ast.Name) and node.id.endswith("environ")


# ---- absolute paths of this machine ------------------------------------------------------------

_MACHINE_PATH = re.compile(r"(?<![\w.~:/-])/(?:work|root|Users|home/[^/\s]+|tmp/pytest-[^/\s]*)/[^\s`'\")\]]*")


def machine_paths(docs: Iterable[Doc], root: Path) -> list[str]:
    """Absolute paths of a machine in a doc: this checkout's, or under a home, /work, /root or pytest's tmp."""
    own = sorted({str(path) for path in (root, root.resolve(), Path.home()) if path != Path("/")}, key=len)
    problems = []
    for doc in docs:
        for number, line in enumerate(doc.text.splitlines(), start=1):
            found = {path for path in own if f"{path}/" in line}
            found |= {
                match.group(0).rstrip(".,:;")
                for match in _MACHINE_PATH.finditer(line)
                if not any(match.group(0).startswith(f"{path}/") for path in found)
            }
            problems += [f"{doc.name}:{number}: {path}: show it relative to the repository" for path in sorted(found)]
    return problems
