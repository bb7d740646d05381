"""Server-made object ids in OpenAI's style (`file-...`, `ftjob-...`): random, never from a client."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"
