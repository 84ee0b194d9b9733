"""The shape of a table name the relay accepts (CDC_OUTBOX_TABLE): `schema.name`.

Plain lower-case words only, so the name needs no quoting in SQL a human types (runbook,
psql -f) and `sql.Identifier` quotes it the same way. Imports nothing from cdc: settings use
TABLE_PATTERN as their pydantic pattern.
"""

from __future__ import annotations

import re

TABLE_PATTERN = r"^([a-z_]\w*)\.([a-z_]\w*)$"
TABLE_RE = re.compile(TABLE_PATTERN)
