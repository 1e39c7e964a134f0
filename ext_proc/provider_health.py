"""Active health checks of the providers, run by ext_proc.

One background task per provider sends the provider's cheapest authenticated
request (its translator says which) every ``interval`` and keeps a verdict with
Envoy's semantics: healthy -> unhealthy after ``unhealthy_threshold`` failures
in a row, back after ``healthy_threshold`` successes in a row. Envoy polls the
verdict (``/providers/{name}/health``) with its own active health check.

A provider starts healthy: a new provider gets traffic until proven down, and
passive outlier detection in Envoy covers the first seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp

if TYPE_CHECKING:
    from ext_proc.providers.base import Translator
    from ext_proc.runtime import Provider

log = logging.getLogger("hapax.ext_proc.health")


@dataclass(frozen=True)
class HealthCheckSettings:
    interval: float = 10.0
    timeout: float = 5.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3


@dataclass
class ProviderHealth:
    name: str
    healthy: bool = True
    consecutive_successes: int = 0
    consecutive_failures: int = 0
    last_error: str = ""
    last_checked: float | None = None
    checks: int = 0
    failures: int = 0

    def record(self, error: str, settings: HealthCheckSettings) -> bool:
        """Counts one probe; returns True when the verdict flipped."""
        self.checks += 1
        self.last_checked = time.time()
        self.last_error = error
        if error:
            self.failures += 1
            self.consecutive_failures += 1
            self.consecutive_successes = 0
            flip = self.healthy and self.consecutive_failures >= settings.unhealthy_threshold
        else:
            self.consecutive_successes += 1
            self.consecutive_failures = 0
            flip = not self.healthy and self.consecutive_successes >= settings.healthy_threshold
        if flip:
            self.healthy = not self.healthy
        return flip


class ProviderProber:
    def __init__(self, translator_for: Callable[[str], Translator]) -> None:
        self.translator_for = translator_for
        self._states: dict[str, ProviderHealth] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._probed: dict[str, tuple[Provider, HealthCheckSettings]] = {}
        self._session: aiohttp.ClientSession | None = None

    def state(self, name: str) -> ProviderHealth | None:
        return self._states.get(name)

    def states(self) -> dict[str, ProviderHealth]:
        return dict(self._states)

    def update(self, providers: Mapping[str, Provider], settings: Mapping[str, HealthCheckSettings]) -> None:
        for name in set(self._tasks) - set(providers):
            self._tasks.pop(name).cancel()
            self._states.pop(name, None)
            self._probed.pop(name, None)
        for name, provider in providers.items():
            wanted = (provider, settings.get(name, HealthCheckSettings()))
            if self._probed.get(name) == wanted:
                continue
            old = self._probed.get(name)
            if old is None or (old[0].base_url, old[0].api_key) != (provider.base_url, provider.api_key):
                self._states[name] = ProviderHealth(name)  # another endpoint: start afresh
            if name in self._tasks:
                self._tasks.pop(name).cancel()
            self._probed[name] = wanted
            self._tasks[name] = asyncio.create_task(self._probe_forever(*wanted), name=f"probe-{name}")

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()

    async def _probe_forever(self, provider: Provider, settings: HealthCheckSettings) -> None:
        state = self._states[provider.name]
        while True:
            error = await self.probe(provider, settings.timeout)
            if state.record(error, settings):
                self._log_flip(state)
            await asyncio.sleep(settings.interval)

    async def probe(self, provider: Provider, timeout: float) -> str:
        """One probe: "" on success, else a short reason (never the key)."""
        request = self.translator_for(provider.type).health_probe(provider)
        url = urlsplit(provider.base_url)
        target = f"{url.scheme}://{url.netloc}{request.path}"
        try:
            async with self._client().get(target, headers=request.set_headers,
                                          timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                await resp.read()
                return "" if 200 <= resp.status < 300 else f"HTTP {resp.status}"
        except asyncio.TimeoutError:
            return f"timed out after {timeout:g}s"
        except aiohttp.ClientConnectorError:
            return "connection refused"
        except (aiohttp.ClientError, OSError) as err:
            return f"connection failed ({type(err).__name__})"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No connection reuse: a provider that resets connections must fail
            # its probe, and one that came back must pass on a fresh connection.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        return self._session

    @staticmethod
    def _log_flip(state: ProviderHealth) -> None:
        extra = {"provider": state.name, "reason": state.last_error,
                 "consecutive": state.consecutive_failures or state.consecutive_successes}
        if state.healthy:
            log.info("provider is healthy again", extra=extra)
        else:
            log.warning("provider is unhealthy; taken out of rotation", extra=extra)
