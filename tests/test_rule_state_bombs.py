"""Cardinality bombs: one user with thousands of cards, one card with thousands of users, a bot
with a hundred thousand failed payments.  Invariant: no Lua call fails (nothing dead-lettered,
every entry applied), every rule key stays bounded, and the alerts still fire."""

from __future__ import annotations

from shopstream.engine import control, export
from shopstream.engine.keys import TX, Keys
from shopstream.engine.producer import publish

from .helpers import consume_all, event
from .support import MIN, S, T_HOUR, tx

EXACT = 64          # lua/includes/rules.lua: members kept exactly per set; the rest in a HyperLogLog / dropped


def bombs(cards: int, users: int, fails: int) -> list[dict]:
    out = [tx("carder", T_HOUR + i * 1000, "completed", card=f"card-{i}", ip=f"10.1.{i // 250}.{i % 250}")
           for i in range(cards)]
    out += [tx(f"sharer-{i}", T_HOUR + i * 1000, "completed", card="hot", ip="10.0.0.1") for i in range(users)]
    out += [tx("failer", T_HOUR + i * 1000, "failed", card="", ip="", tid=f"f{i}") for i in range(fails)]
    return out


async def rule_key_sizes(client) -> dict[bytes, int]:
    sizes = {}
    async for key in client.scan_iter(count=1000):
        family = key.split(b"}:", 1)[-1].split(b":", 1)[0]
        kind = (await client.type(key)).decode()
        if family in (b"ucards", b"cardu", b"ipu", b"uips", b"ukeys", b"usets") and kind == "set":
            sizes[key] = await client.scard(key)
        elif family == b"fails":
            sizes[key] = await client.zcard(key)
    return sizes


def hopper(ips: int) -> list[bytes]:
    """One user clicking from a new IP every time, alternating between two IP windows (out of order)."""
    return [event("hopper", T_HOUR + (i % 2) * 10 * MIN - 20 * S + i * 1000, ip=f"10.2.{i // 250}.{i % 250}")
            for i in range(ips)]


async def run_bomb(backend, settings, cards, users, fails):
    await control.ensure_groups(backend.aio, settings)
    publish(backend.sync, hopper(cards), settings)
    publish(backend.sync, bombs(cards, users, fails), settings, TX)
    await consume_all(backend, settings)
    out = await export.collect(backend.aio, settings)
    assert out.dlq == []
    parts = Keys(settings.namespace, settings.partitions).all_partitions()
    state = [await backend.aio.hget(p.key("state"), "applied") for p in parts]
    assert sum(int(x or 0) for x in state) == 2 * cards + users + fails
    sizes = await rule_key_sizes(backend.aio)
    assert sizes and max(sizes.values()) <= EXACT, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
    forwarded = sum(1 for k in sizes if k.split(b"}:", 1)[1].startswith(b"ipu:") and b":10.2." in k)
    assert forwarded <= EXACT + 1                         # the hopper's IPs: 64 from the latest window on
    alerts = {(a["rule"], a["subject_kind"], a["subject"]): a for a in out.alerts if a["user_id"] in ("", a["subject"])}
    assert alerts[("card_testing", "user", "carder")]["count"] == 3
    assert alerts[("card_testing", "card", "hot")]["count"] == 3
    assert alerts[("ip_users", "ip", "10.0.0.1")]["count"] == 11
    assert 3 <= alerts[("failed_payments", "user", "failer")]["count"] <= EXACT
    members = {a["user_id"] for a in out.alerts if a["subject"] == "hot" and a["user_id"]}
    assert len(members) == users                          # every user of the card is linked to its alert
    return out


async def test_cardinality_bombs_stay_bounded(backend, settings):
    await run_bomb(backend, settings, cards=300, users=300, fails=1_000)


async def test_full_size_cardinality_bombs_on_a_real_server(real, settings):
    """10,000 cards of one user, 10,000 users of one card, 100,000 failed payments of one user."""
    await run_bomb(real, settings.replace(batch_size=1000), cards=10_000, users=10_000, fails=100_000)
