"""`serving.tls`: HTTPS on Serve's HTTP proxy, from a certificate and key file.

Serve's own `http_options` (`ssl_certfile`, `ssl_keyfile`) turn it on: the proxy then speaks
HTTPS only, and a plain-HTTP request to it fails. Serve starts a proxy on each node that
serves, each reading the files at these paths on its own node.

Serve's gRPC proxy gets no TLS: in Ray 2.60 `gRPCOptions` has only a port, the servicer
functions, a request timeout and reflection, and the proxy binds `[::]:port` with
`add_insecure_port`. With `serving.grpc` on, gRPC (and the API keys in its metadata) is
plaintext; `GRPC_PLAINTEXT` says so at start.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.config.base import Section

GRPC_PLAINTEXT = ("gRPC is plaintext: Ray Serve's gRPC proxy has no TLS option (serving.tls covers HTTPS only), "
                  "so API keys sent over gRPC cross the network in the clear; terminate TLS in front of the gRPC "
                  "port or keep serving.grpc off")


class TLSSection(Section):
    certfile: Path  # PEM: the certificate (and its chain) the HTTP proxy presents
    keyfile: Path  # PEM: its private key
    # PEM: what the run's own clients (traffic and /act clients) trust when they call the proxy; a
    # self-signed certificate names itself here. None: the system's trust store. The certificate
    # must name the host they call (serving.host).
    ca_file: Path | None = None

    def problems(self) -> list[str]:
        """What keeps the proxy from reading the files (checked on the driver's node)."""
        out = []
        for key, path in (("certfile", self.certfile), ("keyfile", self.keyfile)):
            full = path.expanduser()
            if not full.is_file():
                out.append(f"serving.tls.{key} {full}: no such file")
            elif not os.access(full, os.R_OK):
                out.append(f"serving.tls.{key} {full}: not readable")
        if self.ca_file is not None and not self.ca_file.expanduser().is_file():
            out.append(f"serving.tls.ca_file {self.ca_file.expanduser()}: no such file")
        return out

    def client_verify(self) -> str | bool:
        """httpx's `verify` for the run's own clients: the CA file, else the system's trust store."""
        return str(self.ca_file.expanduser().resolve()) if self.ca_file is not None else True

    def http_options(self) -> dict[str, str]:
        """Serve's `http_options` that turn HTTPS on."""
        return {"ssl_certfile": str(self.certfile.expanduser().resolve()),
                "ssl_keyfile": str(self.keyfile.expanduser().resolve())}
