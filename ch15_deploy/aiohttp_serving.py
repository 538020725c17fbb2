"""Chapter 15: the aiohttp app served from the script, with a graceful stop.

aiohttp's own web.run_app stops listening at once on SIGTERM and closes every connection whose
request it has not started, so a request already sent can meet a reset. Here, SIGTERM or Ctrl-C
keeps the server listening and reading: a request that reaches the app after the signal gets
503 with Retry-After, those already in the app are answered, and once no request has come in
for a moment the app's own shutdown runs (the batching server answers its queues) and the
script exits with status 0.
"""
import asyncio
import select
import signal
import socket

from aiohttp import web

from ch15_deploy.http_errors import unavailable
from common.errors import DataError

GATE = web.AppKey("gate", dict)
POLL_S = 0.05               # how often a stopping server looks whether it is quiet
QUIET_POLLS = 3             # that many looks in a row with nothing new: quiet
BACKLOG = 1024              # connections the kernel holds for the server before it accepts


@web.middleware
async def stop_gate(request, handler):
    """Counts the requests in the app; once the gate is closing, answers 503 instead."""
    gate = request.app[GATE]
    if gate["closing"]:
        return unavailable("shutting down")
    gate["in_app"] += 1
    try:
        return await handler(request)
    finally:
        gate["in_app"] -= 1


def listening_socket(host, port):
    """A bound socket for (host, port); a DataError when the port is taken or the host wrong."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as e:
        raise DataError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another "
                        "--port or --host") from None


def quiet(sock, gate, server, last_count):
    """No request in the app, none started since the last look, no connection waiting."""
    return (not gate["in_app"] and server.requests_count == last_count
            and not select.select([sock], [], [], 0)[0])


def on_signals(loop, callback, signals=(signal.SIGINT, signal.SIGTERM)):
    """callback() on SIGINT and SIGTERM, in the loop; the handlers it replaced (Windows)."""
    try:
        for s in signals:
            loop.add_signal_handler(s, callback)
        return None
    except NotImplementedError:                     # Windows: no loop signal handlers
        return {s: signal.signal(s, lambda *_: loop.call_soon_threadsafe(callback))
                for s in signals}


def restore_signals(loop, previous, signals=(signal.SIGINT, signal.SIGTERM)):
    if previous is None:
        for s in signals:
            loop.remove_signal_handler(s)
    else:
        for s, handler in previous.items():
            signal.signal(s, handler)


async def serve(app, host, port, drain_s, announce=None, **runner_kwargs):
    """Serve `app` until SIGTERM or SIGINT; then drain for at most drain_s and clean up.
    `announce(port)` is called once it listens, with the port it got (port 0: a free one)."""
    app[GATE] = {"closing": False, "in_app": 0}
    app.middlewares.append(stop_gate)
    sock = listening_socket(host, port)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=drain_s, **runner_kwargs)
    await runner.setup()
    loop, stop = asyncio.get_running_loop(), asyncio.Event()
    previous = on_signals(loop, stop.set)
    try:
        await web.SockSite(runner, sock, backlog=BACKLOG).start()
        if announce is not None:
            announce(sock.getsockname()[1])
        await stop.wait()
        app[GATE]["closing"] = True
        deadline, looks, count = loop.time() + drain_s, 0, runner.server.requests_count
        while looks < QUIET_POLLS and loop.time() < deadline:
            await asyncio.sleep(POLL_S)
            looks = looks + 1 if quiet(sock, app[GATE], runner.server, count) else 0
            count = runner.server.requests_count
    finally:
        restore_signals(loop, previous)
        await runner.cleanup()
        sock.close()
