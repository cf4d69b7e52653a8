"""The cmsgpack shim of fakeredis (tests/lua/cmsgpack.lua) against Redis's built-in cmsgpack, byte
for byte: every fakeredis run of the engine packs and unpacks the user state as production does.

Each case is a Lua expression; the same EVAL runs on a real redis-server and on fakeredis:
``cmsgpack.pack(<case>)`` must give the same bytes, and unpacking the real server's bytes and
packing them again must give the same bytes on both (so the shim reads what Redis writes).
"""

from __future__ import annotations

import fakeredis
import pytest
import redis

PACK = "return cmsgpack.pack({})"
REPACK = "return cmsgpack.pack(cmsgpack.unpack(ARGV[1]))"

NEST_20 = "(function() local t = {} local c = t for _ = 1, 20 do c[1] = {} c = c[1] end return t end)()"
BIG_ARRAY = "(function() local t = {} for i = 1, 70000 do t[i] = i % 300 end return t end)()"
BIG_MAP = "(function() local t = {} for i = 1, 40 do t['k' .. i] = i end return t end)()"
# A user state as partition_state.lua writes it: sessions with counts, device and country offsets,
# minute counts, event-id fingerprints by minute (46-bit), the due time, the last forwarded IP.
USER_STATE = """{
  s = {{1793520000000000, 1799000000, 7, {page_view = 5, purchase = 1, ['x-odd type'] = 1}, -1,
        {shoes = 2}, {web = 0, ios = 120000000}, {DE = 0}},
       {1793523600000000, 0, 1, {page_view = 1}, 0, {}, {}, {}}},
  m = {29892000, 3, 29892001, 101},
  i = {29892000, {70368744177663, 35184372088832, 1}},
  u = 1793525400000000,
  w = {29892000, '198.51.100.7', 2}}"""

CASES = {
    # integers: fixint, uint 8/16/32/64, negative fixint, int 8/16/32/64
    "small ints": "0, 1, 127, 128, 255, 256, 65535, 65536",
    "large ints": "4294967295, 4294967296, 2^52 + 1, 2^53, 2^53 + 2, 2^62, 2^63 - 1024",
    "negative ints": "-1, -32, -33, -128, -129, -32768, -32769, -2147483648, -2147483649, -2^53, -2^63",
    "microsecond times": "1793520000000000, 9007199254740992, -9007199254740992",
    "46-bit fingerprints": "70368744177663, 35184372088832, 12345678901234",
    "negative zero": "-0.0",
    # floats: a float 32 when a C float holds the value exactly, else a double
    "floats held by a float 32": "1.5, -2.75, 0.5, 2^63, 2^-126, 2^-149, 3.4028234663852886e38",
    "doubles": "0.1, -1e-7, 1e300, 2^64 + 2^12, 1e-320, 4.9e-324, 1793520000000000.5",
    "infinities": "math.huge, -math.huge",
    "NaN of either sign": "0/0, -(0/0)",
    # strings: fixstr, str 8, 16, 32; any byte
    "short strings": "'', 'a', 'user-42', string.rep('x', 31)",
    "long strings": "string.rep('y', 32), string.rep('z', 255), string.rep('w', 256), string.rep('v', 70000)",
    "binary bytes": "'\\0\\1\\255\\128\\n\\r', '\\195\\188 {weird} :user', string.rep('\\0', 300)",
    # tables
    "empty table": "{}",
    "arrays": "{1, 2, 3}, {'a', {1, {2, {}}}}, {1.5, -1, 'x'}",
    "array of 16 and 65536+": "{1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16}, " + BIG_ARRAY,
    "maps with string keys": "{a = 1}, {zeta = 1, alpha = {x = 1, y = 2}, ['k with space'] = 'v'}, " + BIG_MAP,
    "tables that are not arrays": "{[1] = 1, [3] = 3}, {[0] = 1}, {[-1] = 2}, {[1.5] = 1}, {[2] = 'b'}",
    "nil and booleans": "nil, true, false, {true, false}",
    "nested 20 deep (16 kept)": NEST_20,
    "a user state": USER_STATE,
}


@pytest.fixture
def servers(real_redis_url):
    real = redis.Redis.from_url(real_redis_url)
    fake = fakeredis.FakeRedis(server=fakeredis.FakeServer(), lua_modules={"cmsgpack"})
    yield real, fake
    real.close()
    fake.close()


@pytest.mark.parametrize("case", CASES)
def test_the_shim_packs_and_unpacks_byte_for_byte_as_redis(servers, case):
    real, fake = servers
    script = PACK.format(CASES[case])
    packed = real.eval(script, 0)
    assert packed, case
    assert fake.eval(script, 0).hex() == packed.hex(), case
    # the shim reads what Redis wrote into the same values (and the same table layout: a map's
    # pairs() order): packing them again gives what Redis gives
    assert fake.eval(REPACK, 0, packed).hex() == real.eval(REPACK, 0, packed).hex(), case
