"""A TCP proxy the fault tests control: a link between two real processes that can be
cut (connections reset, new ones refused) or blackholed (nothing forwarded either way,
as when packets are dropped; TCP holds the bytes and delivers them after the heal).

It runs its own event loop in a thread, so it keeps forwarding while a test blocks
(starting a broker, a blocking HTTP call). Put it in a link by giving a process the
proxy's address for its peer: a broker's ``metadata.etcd``, or the ``url`` of another
broker in that broker's own cluster.yaml (``LocalCluster.write_broker_config``).
"""

from __future__ import annotations

import asyncio
import threading

from tests.harness import free_port

CHUNK = 64 * 1024


class Proxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<target_port>`` until ``stop()``.

    Example::

        proxy = Proxy(etcd.client_port).start()
        config["metadata"]["etcd"] = [proxy.url]
        proxy.cut(); ...; proxy.heal()
    """

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.connections = 0  # accepted so far
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"proxy-{self.port}", daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None  # clear: blackholed
        self._refusing = False
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Proxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def cut(self) -> None:
        """Reset every connection and refuse new ones (accepted, then reset at once)."""
        self._call(self._set(refusing=True, flowing=True, reset=True))

    def blackhole(self) -> None:
        """Forward nothing, either way, on old and new connections (they hang)."""
        self._call(self._set(refusing=False, flowing=False, reset=False))

    def heal(self) -> None:
        """Forward again; a blackholed connection delivers what it held."""
        self._call(self._set(refusing=False, flowing=True, reset=False))

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _set(self, *, refusing: bool, flowing: bool, reset: bool) -> None:
        self._refusing = refusing
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()
        if reset:
            for writer in list(self._open):
                writer.transport.abort()
            self._open.clear()

    async def _close(self) -> None:
        self._server.close()
        await self._set(refusing=True, flowing=True, reset=True)
        await self._server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._refusing:
            client_w.transport.abort()
            return
        try:
            target_r, target_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        pair = {client_w, target_w}
        self._open |= pair
        try:
            await asyncio.gather(self._pump(client_r, target_w), self._pump(target_r, client_w))
        finally:
            self._open -= pair
            for writer in pair:
                writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction; a blackhole stops reading, so the sender's TCP holds the bytes."""
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(CHUNK)
                if not data:
                    break
                await self._flowing.wait()
                if writer.transport.is_closing():
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
