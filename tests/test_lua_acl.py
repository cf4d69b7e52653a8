"""Every command the Lua scripts call is granted to the consumer's ACL user: Redis checks the ACL
for each command a script runs, so a missing one fails the apply only on the path that uses it
(SREM, for instance, only once an IP has more than 64 users)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_consumer_acl_grants_every_command_the_scripts_call():
    called = set()
    for path in (REPO / "lua").rglob("*.lua"):
        called |= {c.lower() for c in re.findall(r"(?:rcall|redis\.p?call)\('([A-Z]+)'", path.read_text())}
    line = next(x for x in (REPO / "ops" / "redis" / "users.acl").read_text().splitlines()
                if x.startswith("user shopstream-consumer "))
    granted = set(re.findall(r"\+([a-z|]+)", line))
    assert len(called) > 20 and called - granted == set()
