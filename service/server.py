"""Running the app under uvicorn as a server that a careless or hostile client cannot hold open:
connections that do not finish their headers in time are closed, open connections and requests
are capped (503 beyond), bodies have their own deadline (service.encoding), and SIGTERM after a
clean drain ends the process with exit status 0, as an orchestrator expects of a graceful stop."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import signal
import threading
import time

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol



from .app import create_app, load_models
from .settings import Settings

M_ARENA_MAX = -8  # glibc's mallopt parameter


def _glibc():
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
        return lib if lib is not None and hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else None
    except OSError:
        return None


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas (what MALLOC_ARENA_MAX does at start). Each thread that allocates
    gets an arena of its own, up to 8 per core, and memory freed in one is not reused by another:
    a server that parses bodies on one thread and simulates on others holds more than it uses
    (docs/service.md). False where the C library is not glibc."""
    lib = _glibc()
    return lib is not None and lib.mallopt(M_ARENA_MAX, arenas) == 1


def trim_malloc_every(seconds: float) -> threading.Thread | None:
    """A daemon thread handing glibc's free pages back to the system every `seconds`
    (malloc_trim): the large transient buffers of responses otherwise stay resident."""
    lib = _glibc()
    if lib is None:
        return None

    def trim():
        while True:
            time.sleep(seconds)
            lib.malloc_trim(0)

    thread = threading.Thread(target=trim, name="malloc-trim", daemon=True)
    thread.start()
    return thread


def header_timeout_protocol(timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, closing a connection whose request headers have not all
    arrived within timeout_s of it opening or of its previous answer (uvicorn itself waits for
    ever: a few hundred silent sockets held a server's connections)."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer = None

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(timeout_s, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        """uvicorn raises a caught SIGTERM again after its graceful shutdown, so the process dies of
        it (exit status 143), which Kubernetes reads as a failed stop; here it is a stop asked for,
        done: exit 0 (SIGINT still ends as an interrupt)."""
        with super().capture_signals():
            yield
            self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]


def serve(settings: Settings, log_level: str = "info") -> None:
    """Load the models (a missing or broken checkpoint is a CheckpointError here, before anything
    listens), then serve it until SIGTERM or SIGINT."""
    import torch

    settings.token()  # an unreadable token file, or no token beyond loopback: refused before loading
    settings.check_exposure()
    if settings.malloc_arenas:
        limit_malloc_arenas(settings.malloc_arenas)
    if settings.malloc_trim_s:
        trim_malloc_every(settings.malloc_trim_s)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    simulators = load_models(settings)
    config = uvicorn.Config(create_app(settings, simulators=simulators), host=settings.host, port=settings.port,
                            log_level=log_level, http=header_timeout_protocol(settings.header_timeout_s),
                            limit_concurrency=settings.max_connections,
                            timeout_keep_alive=settings.keep_alive_s,
                            timeout_graceful_shutdown=settings.shutdown_timeout_s)
    _Server(config).run()
