"""Rotation of the public listener's certificate without a restart (SPEC 2 `listen.tls`).

The certificate, key and client CA files are `stat`ed about once a second, as the config
watcher does (`reload.file_stamp`: a rename-over, a symlink swap and an in-place write all
change the stamp), and once more after every config reload. A changed file set is loaded
into a new context; the listener hands it to the handshakes that start after (connections
already open keep theirs, so nothing in flight fails). A set that does not load -- a file
cannot be read, the key does not match, the certificate has expired -- is one ERROR line
and the old context keeps serving; the next change of any file is tried again.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from pathlib import Path

from proxy.config.tls import (
    TLSFileError,
    certificate_not_after,
    certificate_summary,
    server_context,
)
from proxy.config.values import ListenTLS
from proxy.gateway.reload import POLL_INTERVAL, Stamp, file_stamp
from proxy.telemetry.metrics import Metrics

log = logging.getLogger("rollout.tls")


class ListenCertificates:
    """The context the public listener hands new handshakes, kept current with its files."""

    def __init__(
        self,
        tls: ListenTLS,
        context: ssl.SSLContext,
        install: Callable[[ssl.SSLContext], None],
        metrics: Metrics,
    ) -> None:
        self.tls = tls
        self.context = context
        self._install = install
        self._metrics = metrics
        self._stamps = self._read_stamps()
        metrics.listen_certificate(certificate_not_after(tls.cert_file))
        log.info("listen certificate %s: %s", tls.cert_file, certificate_summary(tls.cert_file))

    def _paths(self) -> tuple[str, ...]:
        tls = self.tls
        return tuple(p for p in (tls.cert_file, tls.key_file, tls.client_ca_file) if p)

    def _read_stamps(self) -> tuple[Stamp, ...]:
        return tuple(file_stamp(Path(p)) for p in self._paths())

    def check(self) -> bool:
        """Take the files' new content if any changed and it loads; True if taken."""
        stamps = self._read_stamps()
        if stamps == self._stamps:
            return False
        self._stamps = stamps
        try:
            context = server_context(self.tls)
        except TLSFileError as exc:
            log.error(
                "listen.tls.%s: new certificate rejected, still serving the previous one: %s",
                exc.key,
                exc.message,
            )
            return False
        self.context = context
        self._install(context)
        self._metrics.listen_certificate(certificate_not_after(self.tls.cert_file))
        log.info(
            "listen certificate %s taken for new connections: %s",
            self.tls.cert_file,
            certificate_summary(self.tls.cert_file),
        )
        return True

    async def watch(self, interval: float = POLL_INTERVAL) -> None:
        while True:
            await asyncio.sleep(interval)
            self.check()
