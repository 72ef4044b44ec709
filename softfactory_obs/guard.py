"""Who may read the telemetry routes: an optional bearer token and/or an IP allow-list (CIDRs).

Probes (``/live``, ``/ready``) stay open so orchestrators need no secret; ``/metrics`` and the
JSON endpoints are guarded when a token or allow-list is configured. The token is compared in
constant time and read only from the ``Authorization`` header, never a query string (which ends
up in proxy logs).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("softfactory_obs.security")
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Guard:
    """Who may read the telemetry routes: a bearer token and/or client networks; loopback always may
    read details."""

    def __init__(self, token: str = "", allow: Iterable[str] = ()) -> None:
        self.token = token.encode() if token else b""
        self._same: Callable[[bytes, bytes], bool] = lambda given, token: False
        if token:
            # Only with a token: hmac loads OpenSSL's digests, about 2 MB of every worker's memory.
            import hmac  # noqa: PLC0415

            self._same = hmac.compare_digest
        self.networks = [ipaddress.ip_network(cidr, strict=False) for cidr in allow]

    @property
    def active(self) -> bool:
        """Whether a token or networks are configured (else the routes are open)."""
        return bool(self.token or self.networks)

    def _addr_allowed(self, environ: dict[str, Any]) -> bool:
        try:
            ip = ipaddress.ip_address(str(environ.get("REMOTE_ADDR", "")))
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def _token_ok(self, environ: dict[str, Any]) -> bool:
        header = str(environ.get("HTTP_AUTHORIZATION", ""))
        scheme, _, given = header.partition(" ")
        return (
            bool(self.token)
            and scheme.lower() == "bearer"
            and self._same(given.strip().encode("latin-1", "replace"), self.token)
        )

    def refusal(self, environ: dict[str, Any]) -> str | None:
        """None when the request may read; else the status to answer."""
        if self.networks and not self._addr_allowed(environ):
            return "403 Forbidden"
        if self.token and not self._token_ok(environ):
            return "401 Unauthorized"
        return None

    def may_see_details(self, environ: dict[str, Any]) -> bool:
        """Health details: with the token, from an allowed network, or (nothing configured) from loopback."""
        if self._token_ok(environ) or (self.networks and self._addr_allowed(environ)):
            return True
        if self.active:
            return False
        try:
            return ipaddress.ip_address(str(environ.get("REMOTE_ADDR", ""))).is_loopback
        except ValueError:
            return False

    def protect(self, app: WSGIApp) -> WSGIApp:
        """``app`` behind this guard: 401/403 for refused clients, the app's answer otherwise."""
        if not self.active:
            return app

        def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            status = self.refusal(environ)
            if status is None:
                return app(environ, start_response)
            # Refusals are logged (they may be probing), never counted as app traffic.
            log.warning(
                "refused %s %s from %s: %s",
                environ.get("REQUEST_METHOD", ""),
                str(environ.get("PATH_INFO", ""))[:200],
                environ.get("REMOTE_ADDR", ""),
                status,
                extra={"status": int(status[:3]), "remote_addr": environ.get("REMOTE_ADDR", "")},
            )
            headers = [("Content-Type", "text/plain"), ("Content-Length", "0"), ("Cache-Control", "no-store")]
            if status.startswith("401"):
                headers.append(("WWW-Authenticate", 'Bearer realm="telemetry"'))
            start_response(status, headers)
            return []

        return guarded
