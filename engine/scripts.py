"""Loads the Lua scripts of lua/ (one file a script, named by its stem) and calls them.

Each file opens with a ``--[[ <name>: ...`` header that is its contract; the loader checks the
name and counts the ``KEYS[n]`` it declares, and every call is checked against that count.
``--@include <name>`` inlines lua/includes/<name>.lua.  Scripts run through redis-py's
``register_script`` (EVALSHA, reloaded automatically after NOSCRIPT, e.g. a Redis restart).
Contract violations come back as ``SS_<CODE> ...`` errors and become ``ScriptError`` subclasses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Sequence

from redis.exceptions import ResponseError

LUA_DIR = Path(__file__).resolve().parent.parent / "lua"
_INCLUDE = re.compile(r"^--@include (\w+)\s*$", re.M)
_HEADER = re.compile(r"\A--\[\[ (\w+): ")
_KEY_DECL = re.compile(r"KEYS\[(\d+)\]")


class ScriptError(RuntimeError):
    code = "SS_UNKNOWN"


class NotOwner(ScriptError):
    """The partition's lease is held by another consumer: nothing was applied."""

    code = "SS_NOT_OWNER"


_ERRORS = {cls.code: cls for cls in (NotOwner,)}


def translate(exc: ResponseError) -> Exception:
    """Map an ``SS_<CODE> ...`` error reply to its exception; other errors pass through."""
    text = str(exc)
    at = text.find("SS_")
    if at >= 0:
        code = text[at:].split(" ", 1)[0]
        return _ERRORS.get(code, ScriptError)(text[at:])
    return exc


@dataclass(frozen=True)
class LuaSource:
    name: str
    body: str
    num_keys: int


@cache
def source(name: str) -> LuaSource:
    path = LUA_DIR / f"{name}.lua"
    text = path.read_text()
    header = _HEADER.match(text)
    if not header or header.group(1) != name:
        raise ValueError(f"{path}: must open with '--[[ {name}: <what it does>' (its contract)")
    contract = text[: text.index("]]")]
    num_keys = max((int(k) for k in _KEY_DECL.findall(contract)), default=0)
    body = _INCLUDE.sub(lambda m: (LUA_DIR / "includes" / f"{m.group(1)}.lua").read_text(), text)
    return LuaSource(name, body, num_keys)


def script_names() -> list[str]:
    return sorted(p.stem for p in LUA_DIR.glob("*.lua"))


class Scripts:
    """The registered scripts of one client (sync or asyncio)."""

    def __init__(self, client: Any):
        self._scripts = {name: (client.register_script(source(name).body), source(name).num_keys)
                         for name in script_names()}

    def call(self, name: str, keys: Sequence[str], args: Sequence[Any], client: Any = None):
        """Call a script (returns what redis-py returns: a value or an awaitable)."""
        script, num_keys = self._scripts[name]
        if len(keys) != num_keys:
            raise ValueError(f"{name} declares {num_keys} KEYS, got {len(keys)}")
        return script(keys=keys, args=args, client=client)
