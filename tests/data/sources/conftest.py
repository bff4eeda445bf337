"""Fixtures for the source tests: a loopback-only network guard and a tiny fake HTTP server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pymatgen.core import Lattice, Structure

from kappaflow.cards import DatasetSpec, SourceSpec, TargetSpec

LOOPBACK = {"127.0.0.1", "::1", "localhost"}

# handler(path, headers) -> (status, content_type, body)
Handler = Callable[[str, dict[str, str]], tuple[int, str, bytes | str]]


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any name lookup or connection that is not to the loopback interface."""
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in LOOPBACK:
            raise OSError(f"test network guard: lookup of {host!r} blocked")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            raise OSError(f"test network guard: connection to {address!r} blocked")
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)


@dataclass
class FakeServer:
    """A running fake server: base ``url`` and the ``requests`` it received (path + headers)."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]


@pytest.fixture()
def serve() -> Iterator[Callable[[Handler], FakeServer]]:
    """Start ``ThreadingHTTPServer``s on 127.0.0.1 (random port) answering GETs via a handler."""
    servers: list[ThreadingHTTPServer] = []

    def start(handler: Handler) -> FakeServer:
        fake = FakeServer(url="")

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                headers = {k.lower(): v for k, v in self.headers.items()}
                fake.requests.append({"path": self.path, "headers": headers})
                status, ctype, body = handler(self.path, headers)
                data = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(httpd)
        fake.url = f"http://127.0.0.1:{httpd.server_port}"
        return fake

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def _nacl() -> Structure:
    return Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _si2() -> Structure:
    return Structure(Lattice.cubic(5.43), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def _gaas() -> Structure:
    return Structure(Lattice.cubic(5.65), ["Ga", "As"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def _make_spec(
    kind: str = "structure",
    targets: tuple[tuple[str, str], ...] = (("kappa", "kappa_wmk"),),
    source: str = "mirror",
    options: dict[str, Any] | None = None,
    path: str = "ltc/tiny.csv.gz",
    sha256: str | None = None,
) -> DatasetSpec:
    """A small card; ``targets`` are ``(name, column)`` pairs."""
    return DatasetSpec(
        name="tiny",
        path=path,
        kind=kind,  # type: ignore[arg-type]
        id_col="id",
        formula_col="formula",
        cif_col="cif" if kind == "structure" else None,
        targets=tuple(TargetSpec(name=n, column=c, unit="x") for n, c in targets),
        sha256=sha256,
        source=SourceSpec(kind=source, options=options or {}),
    )


@pytest.fixture()
def structs() -> dict[str, Structure]:
    """Tiny test structures by reduced formula: NaCl, Si, GaAs."""
    return {"NaCl": _nacl(), "Si": _si2(), "GaAs": _gaas()}


@pytest.fixture()
def make_spec() -> Callable[..., DatasetSpec]:
    """Factory of small dataset cards (see ``_make_spec``)."""
    return _make_spec
