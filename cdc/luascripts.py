"""The Lua scripts run in Redis, read from cdc/lua/ with their shared prelude.

Their array arguments are MessagePack (`pack`), unpacked by Redis' built-in cmsgpack: for a
batch of stream entries that costs Redis ~0.4 us an entry less than cjson parsing JSON.
"""

from __future__ import annotations

from importlib import resources

import msgspec

_DIR = resources.files("cdc").joinpath("lua")
_PRELUDE = {"publish", "replay"}  # the scripts that call xadd_args()


def source(name: str) -> str:
    """Return the text of lua/`name`.lua, preceded by lua/xadd_args.lua where it is used."""
    body = _DIR.joinpath(f"{name}.lua").read_text()
    if name in _PRELUDE:
        return _DIR.joinpath("xadd_args.lua").read_text() + body
    return body


pack = msgspec.msgpack.Encoder().encode  # pack(obj) -> bytes: an array argument of a script
