"""How the engine's threads hand a result to an asyncio future: through the loop's
``call_soon_threadsafe``, on the loop's own thread, and never into a future the caller has
already cancelled."""

from __future__ import annotations


def _resolve(future, value, error):
    if future.done():
        return
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)
