"""The docs cannot rot: README.md, docs/**/*.md and the .md files they link to, checked against the repository.

- Every relative link's file exists and every ``#anchor`` is a heading of its .md file, by GitHub's
  slugs (lowercase; punctuation but ``-`` and ``_`` dropped; spaces to ``-``; code backticks
  dropped; a repeated heading ``-1``, ``-2``).
- Every ``make X`` in inline code or a code block's command is a Makefile target (pattern rules
  count for what they match; ``VAR=value`` and flags skipped; output lines after a ``$`` prompt skipped).
- Every environment variable the docs name is one the project reads (a setting, an ``os.environ``
  read in the code or tests, the Makefile, Dockerfile, template.yaml, scripts) or on the one
  allow-list, ``docs_check.ALLOWED``, each entry with its reason. A variable is an UPPER_SNAKE
  word in inline code that is followed by ``=`` or written ``$NAME``, or that is the whole span and
  has an ``_`` (a whole span naming a constant of the project's Python code is that constant); in
  code blocks only ``NAME=value``. So `` `INFO` ``, `` `POST` `` or `` `SEARCH` `` are words.
- Every setting's variable is named somewhere in the docs.
- No doc shows an absolute path of a machine (a checkout, a home, /work, /root, pytest's tmp).

The details are in ``tests/support/docs_check.py``; the tests after the repository's show each
check failing, naming file and line, on a small tree made to break it.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from infra.paths import shown
from tests.support import docs_check
from tests.support.docs_check import Makefile
from tests.support.markdown import Doc, github_slug

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return docs_check.doc_files(ROOT)


def _report(problems: list[str]) -> str:
    return "\n".join(["", *problems])


# ---- the repository's docs ---------------------------------------------------------------------


def test_the_checked_files_are_the_readme_docs_and_what_they_link(docs: list[Doc]) -> None:
    names = {doc.name for doc in docs}
    assert {"README.md", "bench/results.md"} <= names
    assert {f"docs/{path.name}" for path in (ROOT / "docs").glob("*.md")} <= names


def test_every_relative_link_and_anchor_resolves(docs: list[Doc]) -> None:
    problems = docs_check.broken_links(docs)
    assert not problems, "broken links:" + _report(problems)


def test_every_make_target_the_docs_show_exists(docs: list[Doc]) -> None:
    problems = docs_check.unknown_make_targets(docs, Makefile((ROOT / "Makefile").read_text(encoding="utf-8")))
    assert not problems, "unknown make targets:" + _report(problems)


def test_every_variable_the_docs_name_is_read(docs: list[Doc]) -> None:
    names = docs_check.project_names(ROOT)
    read = names.read | docs_check.settings_variables()
    problems = docs_check.unknown_variables(docs, read, names.constants)
    assert not problems, "variables nothing reads:" + _report(problems)


def test_every_setting_is_documented(docs: list[Doc]) -> None:
    problems = docs_check.undocumented_settings(docs, docs_check.settings_variables())
    assert not problems, "undocumented settings:" + _report(problems)


def test_no_doc_shows_an_absolute_path_of_a_machine(docs: list[Doc]) -> None:
    problems = docs_check.machine_paths(docs, ROOT)
    assert not problems, "absolute paths:" + _report(problems)


# ---- each check fails on a tree made to break it -----------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> list[Doc]:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return docs_check.doc_files(root)


def test_a_missing_file_and_a_missing_anchor_are_reported_with_file_and_line(tmp_path: Path) -> None:
    docs = _tree(
        tmp_path,
        {
            "README.md": """\
                # Title

                ## Run: `make run`

                See [running](#run-make-run), [the guide](docs/guide.md#setup-twice-1),
                [gone](docs/gone.md) and [a typo](#rnu-make-run).
                [split
                over lines](docs/guide.md#no-such-heading), [web](https://example.com/x#y).

                ```console
                $ cat [not a link](nowhere.md)
                ```
                """,
            "docs/guide.md": """\
                # Setup, twice!
                ## Setup, twice!
                Back [home](../README.md#title) and to [another](other.md).
                """,
            "docs/other.md": "# Other\n",
        },
    )
    assert docs_check.broken_links(docs) == [
        "README.md:6: (docs/gone.md) no such file docs/gone.md",
        "README.md:6: (#rnu-make-run) no heading makes #rnu-make-run in README.md",
        "README.md:8: (docs/guide.md#no-such-heading) no heading makes #no-such-heading in docs/guide.md",
    ]


def test_a_file_linked_from_the_docs_is_checked_too(tmp_path: Path) -> None:
    docs = _tree(
        tmp_path,
        {"README.md": "[results](bench/results.md)\n", "bench/results.md": "# Results\n[plot](plot.png)\n"},
    )
    assert [doc.name for doc in docs] == ["README.md", "bench/results.md"]
    assert docs_check.broken_links(docs) == ["bench/results.md:2: (plot.png) no such file bench/plot.png"]


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Run locally: `make run`", "run-locally-make-run"),
        ("What `add_task` checks, before the response is sent", "what-add_task-checks-before-the-response-is-sent"),
        ("`make sam-local`: the HTTP API in Lambda's emulator", "make-sam-local-the-http-api-in-lambdas-emulator"),
        ("Configuration (environment variables)", "configuration-environment-variables"),
        ("See [the guide](docs/guide.md) now", "see-the-guide-now"),
        ("Stages: `dev` and `prod` ", "stages-dev-and-prod"),
    ],
)
def test_anchors_follow_githubs_slugs(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_duplicate_headings_get_numbered_anchors(tmp_path: Path) -> None:
    (doc,) = _tree(tmp_path, {"README.md": "# Tests\n## Tests\n### Tests\n```\n# Tests\n```\n"})
    assert doc.anchors == {"tests", "tests-1", "tests-2"}


MAKEFILE = """\
VENV := .venv
READY := $(VENV)/.installed
.PHONY: run test

run: sync ## run it
\t$(VENV)/bin/python -m app
test: \\
\t\tsync
\tpytest
$(READY): requirements.txt
\ttouch $@
build-%Function: ready
\tbuild $*
"""


def test_an_unknown_make_target_is_reported_and_real_ones_are_not(tmp_path: Path) -> None:
    docs = _tree(
        tmp_path,
        {
            "README.md": """\
                Run `make run`, `make run PORT=9000 -j2`, `make build-UsersFunction`, `make build-<LogicalId>`,
                `make .venv/.installed`, `make` alone, `make deploy ENV=prod` and `cd app && make nope`.

                ```console
                $ make test && make lint
                make: *** No rule to make target 'lint'.
                make test: wrote nothing
                ```

                ```
                make run ──► the stack
                make bench  # no prompt in this block: each line is a command
                ```
                """,
        },
    )
    assert docs_check.unknown_make_targets(docs, Makefile(MAKEFILE)) == [
        "README.md:2: make deploy: no such target in the Makefile",
        "README.md:2: make nope: no such target in the Makefile",
        "README.md:5: make lint: no such target in the Makefile",
        "README.md:12: make bench: no such target in the Makefile",
    ]


def test_the_makefile_is_parsed_into_its_rules_and_patterns() -> None:
    makefile = Makefile(MAKEFILE)
    assert makefile.targets == {"run", "test", ".venv/.installed"}
    assert makefile.patterns == {"build-%Function"}
    assert makefile.has("build-UsersFunction")
    assert not makefile.has("build-Users")
    assert not makefile.has("build-<LogicalId>Layer")


def test_variables_are_told_from_words_by_context(tmp_path: Path) -> None:
    docs = _tree(
        tmp_path,
        {
            "README.md": """\
                `TASK_QUEUE_URL`, `METRICS=off`, `make run PORT=9000`, `functions.$FUNCTION.app`,
                `LOG_LEVEL`: `INFO`; `_HANDLER`, `POST /users`, `SEARCH`, `EnableJwtAuth=true`, `a_b`, `shared.X_Y`.

                ```console
                $ docker run -e FUNCTION=users image
                $ curl "$API_URL/x"
                ```
                """,
        },
    )
    mentions = [(mention.line, mention.name, mention.assigned) for mention in docs_check.variable_mentions(docs)]
    assert mentions == [
        (1, "TASK_QUEUE_URL", False),
        (1, "METRICS", True),
        (1, "PORT", True),
        (1, "FUNCTION", True),
        (2, "LOG_LEVEL", False),
        (2, "_HANDLER", False),
        (5, "FUNCTION", True),
    ]


def test_a_variable_nothing_reads_is_reported(tmp_path: Path) -> None:
    docs = _tree(
        tmp_path,
        {
            "README.md": """\
                `TASK_QUEUE_URL` and `TASK_QUEUE_ULR`; `AWS_REGION` (allowed); `DRAIN_SECONDS`, a constant;
                `DRAIN_SECONDS=5` shows it as a variable, though.
                """,
        },
    )
    assert docs_check.unknown_variables(docs, read={"TASK_QUEUE_URL"}, constants={"DRAIN_SECONDS"}) == [
        "README.md:1: TASK_QUEUE_ULR is not read by the project (its settings, os.environ, Makefile, Dockerfile, "
        "template.yaml) nor on the allow-list of other tools' variables",
        "README.md:2: DRAIN_SECONDS is not read by the project (its settings, os.environ, Makefile, Dockerfile, "
        "template.yaml) nor on the allow-list of other tools' variables",
    ]


def test_an_undocumented_setting_is_reported(tmp_path: Path) -> None:
    docs = _tree(tmp_path, {"README.md": "`TASK_QUEUE_URL`\n", "docs/more.md": "`LOG_LEVEL=DEBUG`\n"})
    assert docs_check.undocumented_settings(docs, {"TASK_QUEUE_URL", "LOG_LEVEL", "WORKER_BATCH_SIZE"}) == [
        "WORKER_BATCH_SIZE: a setting (shared/settings.py) that no doc names; document it where its subject is"
    ]


def test_the_variables_the_code_reads_are_found() -> None:
    source = textwrap.dedent(
        """\
        import os
        from os import environ
        XRAY = "_X_AMZN_TRACE_ID"
        def seconds(name, default):
            return os.environ.get(name, default)
        seconds("DRAIN_SECONDS", 1)
        a = os.environ["PORT"], os.getenv("HOST"), environ.get(XRAY), "FUNCTION" in os.environ
        os.environ["WRITTEN_ONLY"] = "1"
        b = os.environ.setdefault("REGION", "x")
        """
    )
    read = {"_X_AMZN_TRACE_ID", "DRAIN_SECONDS", "PORT", "HOST", "FUNCTION", "REGION"}
    assert docs_check.python_reads(source) == read


def test_the_project_reads_its_makefile_dockerfile_template_and_scripts(tmp_path: Path) -> None:
    files = {
        "Makefile": "PY ?= python3\nrun:\n\t$(PY) -m x $(if $(ENV),--env $(ENV))\n",
        "Dockerfile": "FROM x\nENV PATH=/opt/bin:$PATH \\\n    HOST=0.0.0.0\n",
        "template.yaml": "Resources:\n  Fn:\n    Properties:\n      Environment:\n        Variables:\n"
        "          USERS_TABLE: !Ref T\n",
        ".ci/run": "#!/usr/bin/env bash\nexport REQUIRE_ENGINE=1\n",
        "shared/settings_like.py": "LIMIT = 3\nimport os\nos.environ.get('LOG_LEVEL')\n",
    }
    _tree(tmp_path, files)
    names = docs_check.project_names(tmp_path)
    assert names.read == {"PY", "ENV", "PATH", "HOST", "USERS_TABLE", "REQUIRE_ENGINE", "LOG_LEVEL"}
    assert names.constants == {"LIMIT"}


def test_an_absolute_path_of_a_machine_is_reported(tmp_path: Path) -> None:
    docs = _tree(
        tmp_path,
        {
            "README.md": f"""\
                notification log  log.txt (`/tmp/notifications.log` on Lambda, /var/lib/app in compose)
                notification log  /work/main/log.txt
                python `{tmp_path}/.venv/bin/python` and /home/dev/src/x, http://host/work/x
                """,
        },
    )
    assert docs_check.machine_paths(docs, tmp_path) == [
        "README.md:2: /work/main/log.txt: show it relative to the repository",
        "README.md:3: /home/dev/src/x: show it relative to the repository",
        f"README.md:3: {tmp_path}: show it relative to the repository",
    ]


# ---- what writes paths into the docs shows them relative -----------------------------------------


def test_paths_are_shown_relative_to_the_repository(tmp_path: Path) -> None:
    assert shown(ROOT / ".venv" / "bin" / "python") == ".venv/bin/python"
    assert shown(ROOT / "log.txt") == "log.txt"
    assert shown(tmp_path / "log.txt", root=tmp_path.parent) == f"{tmp_path.name}/log.txt"
    assert shown("/var/lib/app/log.txt") == "/var/lib/app/log.txt"


def test_a_venv_interpreter_is_shown_inside_the_repository_though_it_links_out(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    os.symlink("/usr/bin/python3", tmp_path / "bin" / "python")
    assert shown(tmp_path / "bin" / "python", root=tmp_path) == "bin/python"
