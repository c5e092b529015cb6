"""``make function NAME=orders [TABLE=1]``: a new function, ready for ``make test``.

Writes ``functions/<name>/`` (an app whose ``POST /<name>`` confirms by e-mail in the
background, the durable ``email.send`` task), ``tests/test_<name>.py``, and the function's
block in template.yaml (its route, environment and policies; with ``TABLE=1`` its own
DynamoDB table too, stored to and read from). Everything else finds the folder by itself.
The files come from ``infra/scaffold/*.tmpl``: ``$name`` placeholders, and ``# if table`` ...
``# end`` sections kept only with a table.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from string import Template

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = Path(__file__).with_name("scaffold")
ANCHOR = "  # --- durable tasks -"
"""New blocks go above this line of template.yaml, after the existing functions."""
SECTION = re.compile(r"^# if table\n(.*?)^# end\n", re.DOTALL | re.MULTILINE)


def render(template: str, values: dict[str, str], *, table: bool) -> str:
    text = SECTION.sub(lambda match: match.group(1) if table else "", (TEMPLATES / template).read_text())
    return Template(text).substitute(values)


def scaffold(name: str, *, table: bool, root: Path = ROOT) -> list[Path]:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise SystemExit(f"make function: NAME={name!r} must be a lower-case Python identifier, e.g. NAME=orders")
    folder, test = root / "functions" / name, root / "tests" / f"test_{name}.py"
    title = "".join(part.capitalize() for part in name.split("_"))
    values = {
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
    template_path = root / "template.yaml"
    template_text = template_path.read_text()
    for path in (folder, test):
        if path.exists():
            raise SystemExit(f"make function: {path.relative_to(root)} already exists")
    if f"\n  {values['logical_id']}:" in template_text:
        raise SystemExit(f"make function: template.yaml already has {values['logical_id']}")
    if ANCHOR not in template_text:
        raise SystemExit(f"make function: template.yaml has no line starting {ANCHOR.strip()!r} to add the block above")

    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "app.py").write_text(render("app.py.tmpl", values, table=table))
    test.write_text(render("test.py.tmpl", values, table=table))
    block = render("template.yaml.tmpl", values, table=table)
    template_path.write_text(template_text.replace(ANCHOR, block + ANCHOR, 1))
    python = [str(p) for p in (folder / "app.py", test)]
    # The sections leave imports to merge and sort: the project's own formatter does it.
    subprocess.run([sys.executable, "-m", "ruff", "check", "--fix", "--quiet", *python], cwd=root, check=True)  # noqa: S603
    subprocess.run([sys.executable, "-m", "ruff", "format", "--quiet", *python], cwd=root, check=True)  # noqa: S603
    return [folder / "__init__.py", folder / "app.py", test, template_path]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--table", action="store_true", help="give the function its own DynamoDB table")
    args = parser.parse_args(argv)
    for path in scaffold(args.name, table=args.table):
        print(f"make function: wrote {path.relative_to(ROOT)}")
    print(f"make function: now `make test`, then edit functions/{args.name}/app.py")


if __name__ == "__main__":
    main()
