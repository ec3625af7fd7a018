"""Reading the JSON-lines logs that `maskae train` writes (log.jsonl, eval_log.jsonl), one way for every reader."""

from __future__ import annotations

import json
from pathlib import Path


def read_log(path: Path) -> list[dict]:
    """The records of a JSON-lines log; a line cut short by a kill ends it, as nothing after it is trustworthy."""
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except ValueError:
            break
    return records
