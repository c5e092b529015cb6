"""moto's server, with the stack outputs a change set leaves out (moto 5.2.5).

``sam deploy`` creates a stack through a change set. moto's ``ExecuteChangeSet`` creates the
resources but never rebuilds the stack's outputs from the new template, so ``DescribeStacks``
answers without ``Outputs`` (CloudFormation resolves them). Here the change set, once applied,
gives its stack the template and the outputs, as ``CreateStack`` does in moto. Nothing else of
moto is changed. Run exactly as ``python -m moto.server``::

    python -m infra.moto_changesets -H 127.0.0.1 -p 5000
"""

from __future__ import annotations

import sys
from typing import Any

from moto import server
from moto.cloudformation.models import ChangeSet

_apply = ChangeSet.apply


def apply_with_outputs(change_set: Any) -> None:
    _apply(change_set)
    stack = change_set.stack
    stack.template = change_set.template
    stack._parse_template()
    stack.output_map = stack._create_output_map()


def main(argv: list[str]) -> None:
    ChangeSet.apply = apply_with_outputs  # type: ignore[method-assign,assignment]
    server.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
