"""A word-prefix search index of items in DynamoDB, rebuilt for an item after each write.

Table ``SEARCH_TABLE`` (keys ``pk``, ``sk``, both strings) holds two kinds of rows:

- a term row per word of an item: ``pk = "term#" + word[:2]``, ``sk = word + "#" + item_id``,
  with ``item_id`` and ``name``. ``Query(pk = "term#" + q[:2], begins_with(sk, q))``
  finds every item with a word starting with ``q``, answering from the index alone;
- a doc row per item: ``pk = "item#" + item_id``, ``sk = "terms"``, listing its term
  rows, so a re-index deletes exactly the rows the item no longer has.

:func:`index_item` reads the item's current state from ``ITEMS_TABLE``, so it is the
same task after a create, an update or a delete, and running it twice is harmless.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from shared import aws
from shared.background import task
from shared.logs import get_logger
from shared.settings import get_settings

log = get_logger("shared.tasks.search")

MIN_TERM = 2
MAX_TERM = 40
MAX_TERMS_PER_ITEM = 200
MAX_QUERY_TERMS = 5
MAX_ROWS_PER_TERM = 2000
_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lower-case words without accents, each at least two characters, in order, unique."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    words = (word[:MAX_TERM] for word in _WORD.findall(folded) if len(word) >= MIN_TERM)
    return list(dict.fromkeys(words))


def terms_for(item: dict[str, Any]) -> list[str]:
    text = " ".join([str(item.get("name", "")), *map(str, item.get("tags", [])), str(item.get("description", ""))])
    return tokenize(text)[:MAX_TERMS_PER_ITEM]


def _partition(term: str) -> str:
    return "term#" + term[:MIN_TERM]


def _doc_key(item_id: str) -> dict[str, str]:
    return {"pk": f"item#{item_id}", "sk": "terms"}


def _table() -> Any:
    return aws.dynamodb().Table(get_settings().search_table)


@task("search.index_item", timeout=20)
def index_item(item_id: str) -> int:
    """Make the index match the item as it is now; returns how many term rows it has."""
    settings = get_settings()
    item = aws.dynamodb().Table(settings.items_table).get_item(Key={"id": item_id}, ConsistentRead=True).get("Item")
    table = _table()
    doc = table.get_item(Key=_doc_key(item_id), ConsistentRead=True).get("Item")
    old_rows = {str(sk) for sk in (doc or {}).get("terms", [])}
    new_rows = {f"{term}#{item_id}": term for term in terms_for(item)} if item else {}

    with table.batch_writer(overwrite_by_pkeys=["pk", "sk"]) as batch:
        for sk in sorted(old_rows - new_rows.keys()):
            batch.delete_item(Key={"pk": _partition(sk), "sk": sk})
        if item is None:
            if doc is not None:
                batch.delete_item(Key=_doc_key(item_id))
        else:
            for sk, term in new_rows.items():
                batch.put_item(Item={"pk": _partition(term), "sk": sk, "item_id": item_id, "name": item["name"]})
            batch.put_item(Item={**_doc_key(item_id), "terms": sorted(new_rows)})
    log.info("search.indexed", item_id=item_id, terms=len(new_rows), removed=len(old_rows - new_rows.keys()))
    return len(new_rows)


def _items_matching(term: str) -> dict[str, str]:
    """item id -> name of every item with a word starting with ``term``."""
    table = _table()
    query: dict[str, Any] = {
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :term)",
        "ExpressionAttributeValues": {":pk": _partition(term), ":term": term},
        "ProjectionExpression": "item_id, #name",
        "ExpressionAttributeNames": {"#name": "name"},
    }
    found: dict[str, str] = {}
    rows = 0
    while True:
        page = table.query(**query)
        for row in page["Items"]:
            found[str(row["item_id"])] = str(row["name"])
        rows += len(page["Items"])
        if "LastEvaluatedKey" not in page or rows >= MAX_ROWS_PER_TERM:
            return found
        query["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def search(query: str, limit: int = 20) -> list[dict[str, str]]:
    """Items having, for every word of ``query``, a word that starts with it; sorted by name."""
    terms = tokenize(query)[:MAX_QUERY_TERMS]
    if not terms:
        return []
    matches: dict[str, str] | None = None
    for term in terms:
        found = _items_matching(term)
        matches = found if matches is None else {key: name for key, name in matches.items() if key in found}
        if not matches:
            return []
    assert matches is not None
    ranked = sorted(matches.items(), key=lambda pair: (pair[1].casefold(), pair[0]))
    return [{"id": item_id, "name": name} for item_id, name in ranked[:limit]]
