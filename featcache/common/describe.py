"""What `featcache inspect` prints about a file: the same facts as data (--json) and as text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Description:
    data: dict[str, Any]
    text: str
