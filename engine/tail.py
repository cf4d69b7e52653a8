"""``shopstream tail``: print each alert published on the alerts channel, one JSON per line."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from .keys import Keys
from .settings import Settings


def tail(client: Any, settings: Settings, out: TextIO = sys.stdout, status: TextIO = sys.stderr) -> None:
    """Subscribe (sync client) and print until Ctrl-C."""
    channel = Keys(settings.namespace, settings.partitions).channel(settings.alerts_channel)
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    print(f"listening on {channel} (Ctrl-C to stop)", file=status)
    try:
        for message in pubsub.listen():
            if message["type"] == "message":
                print(message["data"].decode(), file=out, flush=True)
    except KeyboardInterrupt:
        pass
