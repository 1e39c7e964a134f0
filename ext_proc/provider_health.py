"""Active health checks of the providers, run by ext_proc.

One background task per provider sends the provider's cheapest authenticated
request (its translator's ``health_probe``: a model list) every ``interval``
and keeps a verdict with Envoy's semantics: healthy -> unhealthy after
``unhealthy_threshold`` failed probes in a row, back after ``healthy_threshold``
successful probes in a row. A probe succeeds on HTTP 2xx within ``timeout``;
anything else (another status, refused, reset, timeout) fails it. Envoy polls
the verdict (``/providers/{name}/health``, see ext_proc/health_app.py) with its own
active health check, so an unhealthy provider gets no traffic.

A provider starts healthy (optimistic), as in Envoy with a probe that has not
answered yet: a new provider, or one whose config was just reloaded, must not
drop out of rotation for ``healthy_threshold x interval`` before anyone has seen
it fail. Envoy's passive outlier detection covers a provider that is down from
the start until ``unhealthy_threshold`` probes have confirmed it.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import errno
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp

from ext_proc.runtime import HealthCheckSettings, Provider

if TYPE_CHECKING:
    from ext_proc.translators.base import Translator

__all__ = ["HoldOff", "HoldOffBoard", "ProviderHealth", "ProviderProber", "VerdictBoard", "retry_after_seconds"]

# The longest retry-after honoured: a provider asking for more is held off this
# long, then probed and tried again (Envoy's cap for rate-limited back-off).
MAX_HOLD_OFF_SECONDS = 300.0

# The statuses with which a provider refuses the gateway's credentials: the probe's reason says
# so in words, since a bare "HTTP 401" in a client's 503 would read as the client's own key.
KEY_REFUSED = (401, 403)

log = logging.getLogger("hapax.ext_proc.health")


@dataclass
class ProviderHealth:
    """One provider's verdict, as ``/health``, the per-provider verdict and metrics report it."""

    name: str
    healthy: bool = True            # optimistic until proven down (see the module docstring)
    consecutive_successes: int = 0
    consecutive_failures: int = 0
    last_error: str = ""            # "" when the last probe succeeded; never contains the api key
    last_checked: float | None = None  # time.time() when the last probe completed
    checks: int = 0                 # probes completed
    failures: int = 0               # probes failed, all time (checks - failures succeeded)
    held_until: float = 0.0         # time.monotonic() before which the provider asked not to be called
    held_after: int = 0             # the status (429, 503) whose retry-after set held_until; 0 if unknown

    def in_rotation(self, now: float | None = None) -> bool:
        """Healthy and not holding off after a retry-after: the verdict Envoy gets."""
        return self.healthy and self.hold_off_remaining(now) == 0

    def hold_off_remaining(self, now: float | None = None) -> float:
        return max(0.0, self.held_until - (time.monotonic() if now is None else now))

    def serving(self, now: float | None = None) -> bool:
        """In rotation and its last probe passed: the one state /health calls "healthy".

        A provider whose last probe failed is still in ext_proc's verdict until
        ``unhealthy_threshold`` failures in a row, but Envoy's outlier detection may already
        route around it: it is not reported healthy then.
        """
        return self.in_rotation(now) and not self.last_error

    def reason(self, now: float | None = None) -> str | None:
        """Why the provider may not be serving, in words fit for a client (no key, no body); None if serving."""
        held = self.hold_off_remaining(now)
        if held:
            after = f"a {self.held_after}" if self.held_after else "its retry-after"
            return f"holding off for {math.ceil(held)} s after {after}"
        if self.last_error:
            return self.last_error
        return None if self.healthy else "recovering: its last probe passed, not yet enough of them in a row"

    def record(self, error: str, settings: HealthCheckSettings) -> bool:
        """Counts one completed probe ("" for success); returns True when the verdict flipped."""
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


@dataclass(frozen=True)
class HoldOff:
    """A retry-after deadline (time.monotonic()) and the status that carried it (0: unknown)."""

    until: float = 0.0
    status: int = 0


class HoldOffBoard:
    """Retry-after deadlines shared by every ext_proc worker: one small file per provider.

    A worker that sees a retry-after writes the deadline; Envoy polls the
    verdict of one worker, which must know. Deadlines are time.monotonic()
    values, which on Linux count from the same point in every process.
    Without a folder (one worker), the board keeps nothing.
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def set(self, name: str, hold_off: HoldOff) -> None:
        if self.folder is None:
            return
        _replace(self.folder, name, f"{hold_off.until!r} {hold_off.status}")

    def get(self, name: str) -> HoldOff:
        if self.folder is None:
            return HoldOff()
        try:
            until, _, status = (self.folder / name).read_text().partition(" ")
            return HoldOff(float(until), int(status or 0))
        except (OSError, ValueError):
            return HoldOff()


class VerdictBoard:
    """The probing worker's verdicts, for the workers that do not probe (``--no-probe``).

    Any worker may answer ``/health`` or a request no provider could serve, and each
    must say what the prober saw. One small JSON file per provider, rewritten after
    each probe. Without a folder (one worker), the board keeps nothing.
    """

    _FIELDS = ("healthy", "consecutive_successes", "consecutive_failures", "last_error", "last_checked",
               "checks", "failures")

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def publish(self, state: ProviderHealth) -> None:
        if self.folder is None:
            return
        _replace(self.folder, state.name, json.dumps({key: getattr(state, key) for key in self._FIELDS}))

    def read(self, name: str) -> ProviderHealth | None:
        if self.folder is None:
            return None
        try:
            fields = json.loads((self.folder / name).read_text())
            return ProviderHealth(name, **{key: fields[key] for key in self._FIELDS})
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _replace(folder: Path, name: str, text: str) -> None:
    """Writes ``folder/name`` so that readers see the old text or the new one, never half."""
    tmp = folder / f".{name}.{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, folder / name)


class ProviderProber:
    """Probes every provider of the current runtime in the background.

    ``update()`` is called with each runtime version (from inside the running
    event loop); ``state()``/``states()`` are read by the HTTP side at any time;
    ``close()`` on shutdown.
    """

    def __init__(self, translator_for: Callable[[str], Translator], *,
                 session_factory: Callable[..., aiohttp.ClientSession] = aiohttp.ClientSession,
                 hold_off_board: HoldOffBoard | None = None, verdict_board: VerdictBoard | None = None) -> None:
        self.translator_for = translator_for
        self.board = hold_off_board or HoldOffBoard(None)
        self.verdicts = verdict_board or VerdictBoard(None)
        self._session_factory = session_factory
        self._states: dict[str, ProviderHealth] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._probed: dict[str, tuple[Provider, HealthCheckSettings]] = {}
        # Cancelled by update() but maybe not finished yet; close() waits for them.
        self._retired: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    # -- what the HTTP side reads ----------------------------------------------

    def state(self, name: str) -> ProviderHealth | None:
        """The provider's verdict: this worker's own if it probes, else the probing worker's."""
        state = self._states.get(name) or self.verdicts.read(name)
        if state is not None:
            held = self.board.get(name)
            if held.until > state.held_until:
                state.held_until, state.held_after = held.until, held.status
        return state

    def states(self) -> dict[str, ProviderHealth]:
        return {name: self.state(name) for name in list(self._states)}  # type: ignore[misc]

    def unavailable_reasons(self, names: Iterable[str]) -> dict[str, str]:
        """Why each of ``names`` may not be serving, for those that may not (see ProviderHealth.reason)."""
        now = time.monotonic()
        reasons = {}
        for name in names:
            state = self.state(name)
            reason = state.reason(now) if state is not None else None
            if reason:
                reasons[name] = reason
        return reasons

    def hold_off(self, name: str, seconds: float, status: int = 0) -> None:
        """The provider answered ``status`` with a retry-after: out of rotation until it passes."""
        if seconds <= 0:
            return
        seconds = min(seconds, MAX_HOLD_OFF_SECONDS)
        until = time.monotonic() + seconds
        if until <= self.board.get(name).until:
            return
        # On the shared board even where this process does not probe: the worker
        # that does (and answers Envoy's polls) reads it.
        self.board.set(name, HoldOff(until, status))
        state = self._states.get(name)
        if state is not None and until > state.held_until:
            if not state.hold_off_remaining():
                log.warning("provider asked to be left alone; out of rotation until its retry-after passes",
                            extra={"provider": name, "seconds": round(seconds, 3), "status": status})
            state.held_until, state.held_after = until, status

    # -- lifecycle ---------------------------------------------------------------

    def update(self, providers: Mapping[str, Provider], settings: Mapping[str, HealthCheckSettings]) -> None:
        """Probes exactly ``providers`` from now on.

        A provider whose Provider or settings changed gets a new task (first
        probe immediately); its verdict is kept only if it still points at the
        same base_url with the same key, since anything else is another
        endpoint. A removed provider's task is cancelled and its state dropped.
        A provider missing from ``settings`` uses its own ``health_check``.
        """
        for name in set(self._tasks) - set(providers):
            self._retire(self._tasks.pop(name))
            self._states.pop(name, None)
            self._probed.pop(name, None)
        for name, provider in providers.items():
            chosen = settings.get(name) or getattr(provider, "health_check", None) or HealthCheckSettings()
            wanted = (provider, chosen.effective())
            old = self._probed.get(name)
            if old == wanted and name in self._tasks:
                continue
            if old is None or (old[0].base_url, old[0].api_key) != (provider.base_url, provider.api_key):
                self._states[name] = ProviderHealth(name)  # another endpoint: start afresh
                self.verdicts.publish(self._states[name])  # not the old endpoint's verdict
            if name in self._tasks:
                self._retire(self._tasks.pop(name))
            self._probed[name] = wanted
            self._tasks[name] = asyncio.create_task(self._probe_forever(*wanted), name=f"hapax-probe-{name}")

    async def close(self) -> None:
        """Stops every probe and closes the HTTP session; the last verdicts stay readable."""
        tasks = [*self._tasks.values(), *self._retired]
        self._tasks.clear()
        self._probed.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._retired.clear()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _retire(self, task: asyncio.Task[None]) -> None:
        task.cancel()
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    # -- probing -----------------------------------------------------------------

    async def _probe_forever(self, provider: Provider, settings: HealthCheckSettings) -> None:
        state = self._states[provider.name]
        loop = asyncio.get_running_loop()
        while True:
            # Start to start, so a slow probe does not stretch the period: a
            # provider that hangs is found out within
            # (unhealthy_threshold - 1) x interval + timeout.
            started = loop.time()
            error = await self.probe(provider, settings.timeout)
            if state.record(error, settings):
                self._log_flip(state)
            self.verdicts.publish(state)
            await asyncio.sleep(max(0.0, started + settings.interval - loop.time()))

    async def probe(self, provider: Provider, timeout: float) -> str:
        """One probe: "" on success, else a short reason (never the key)."""
        try:
            request = self.translator_for(provider.type).health_probe(provider)
            target = probe_url(provider, request.path)
            async with self._client().get(
                target, headers=request.set_headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                # A model list is small; reading it proves the provider finished answering.
                await resp.read()
                if 200 <= resp.status < 300:
                    return ""
                if resp.status in KEY_REFUSED:
                    return f"refused the gateway's key (HTTP {resp.status})"
                return f"HTTP {resp.status}"
        except Exception as err:  # a failed probe, never a dead task (CancelledError is no Exception)
            reason = describe_failure(err, timeout)
            if reason is None:
                log.warning("health probe raised unexpectedly", exc_info=True,
                            extra={"provider": provider.name})
                reason = f"probe error ({type(err).__name__})"
            return reason

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No connection reuse: a provider that resets connections must fail
            # its probe, and one that came back must pass on a fresh connection.
            self._session = self._session_factory(connector=aiohttp.TCPConnector(force_close=True))
        return self._session

    @staticmethod
    def _log_flip(state: ProviderHealth) -> None:
        if state.healthy:
            log.info("provider is healthy again", extra={
                "provider": state.name, "reason": f"{state.consecutive_successes} probes in a row passed",
                "consecutive": state.consecutive_successes})
        else:
            log.warning("provider is unhealthy; taken out of rotation", extra={
                "provider": state.name, "reason": state.last_error,
                "consecutive": state.consecutive_failures})


def retry_after_seconds(value: str, now: float | None = None) -> float | None:
    """A ``retry-after`` header (delay-seconds or an HTTP-date) in seconds from now; None if unusable."""
    value = value.strip()
    if value.isdigit():
        return float(value) or None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=datetime.UTC)
    seconds = when.timestamp() - (time.time() if now is None else now)
    return seconds if seconds > 0 else None


def probe_url(provider: Provider, path: str) -> str:
    """``scheme://host[:port]`` of the provider's base_url, then ``path``.

    Built from base_url (the endpoint Envoy connects to) without any userinfo,
    keeping IPv6 brackets.
    """
    url = urlsplit(provider.base_url)
    authority = url.netloc.rpartition("@")[2]
    return f"{url.scheme}://{authority}{path}"


def describe_failure(err: BaseException, timeout: float) -> str | None:
    """A short, key-free reason for a failed probe; None for an unexpected error.

    Only fixed words, numbers and exception type names: aiohttp's messages can
    carry URLs and headers, which the reason must never echo.
    """
    if isinstance(err, TimeoutError):  # asyncio.TimeoutError and aiohttp's timeout errors
        return f"timed out after {timeout:g}s"
    if isinstance(err, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return "TLS handshake failed"
    if isinstance(err, aiohttp.ClientConnectorError):
        os_error: Any = err.os_error
        if isinstance(os_error, ConnectionRefusedError) or getattr(os_error, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
        if isinstance(os_error, OSError) and os_error.strerror:
            return f"cannot connect ({os_error.strerror.lower()})"
        return f"cannot connect ({type(os_error).__name__})"
    if isinstance(err, aiohttp.ServerDisconnectedError):
        return "connection closed by provider"
    if isinstance(err, aiohttp.ClientPayloadError):
        return "response cut short"
    if isinstance(err, aiohttp.ClientOSError | OSError):
        if isinstance(err, ConnectionResetError) or getattr(err, "errno", None) == errno.ECONNRESET:
            return "connection reset"
        return f"connection failed ({type(err).__name__})"
    if isinstance(err, aiohttp.ClientResponseError):
        return f"bad response ({type(err).__name__})"
    if isinstance(err, aiohttp.InvalidURL):
        return "invalid provider URL"
    if isinstance(err, aiohttp.ClientError):
        return f"request failed ({type(err).__name__})"
    return None
