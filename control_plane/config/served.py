"""What a configuration serves, for people: the route lines ``hapax validate`` and ``hapax serve`` print,
its providers and their preference order, and who may call, as ``hapax serve``'s banner names them.

Each route line is a path, its handler, and where it comes from: ``standard`` for the
OpenAI endpoints served beside the configured routes, or the route's metrics
labels (its department). The lists are bounded: a config may hold hundreds of
department routes and a hundred providers, and a terminal shows a screenful; the
rest are counted.
"""

from __future__ import annotations

from control_plane.config.model import DEFAULT_ROUTES, HapaxConfig, RouteConfig

MAX_LISTED_ROUTES = 12
MAX_LISTED_PROVIDERS = 8


def route_lines(config: HapaxConfig, limit: int = MAX_LISTED_ROUTES) -> list[str]:
    """One line per served route, the first ``limit`` of them, then how many more there are."""
    shown = config.routes[:limit]
    width = max((len(route.path) for route in shown), default=0)
    lines = [f"{route.path:<{width}}  {_what(route)}" for route in shown]
    hidden = len(config.routes) - len(shown)
    if hidden > 0:
        lines.append(f"... and {hidden} more ({len(config.routes)} routes in all)")
    return lines


def _what(route: RouteConfig) -> str:
    # A configured route identical to a standard one serves exactly as the standard one would.
    origin = "standard" if route in DEFAULT_ROUTES else ", ".join(
        f"{key}={value}" for key, value in route.metrics_labels.items())
    return f"{route.handler} ({origin})" if origin else route.handler


def provider_line(config: HapaxConfig, limit: int = MAX_LISTED_PROVIDERS) -> str:
    """Each provider with its type and base URL, the first ``limit`` of them, then how many more."""
    return _bounded([f"{p.name} ({p.type}, {p.base_url})" for p in config.providers.values()], ", ", limit)


def preference_line(config: HapaxConfig, limit: int = MAX_LISTED_PROVIDERS) -> str:
    return _bounded(list(config.provider_preference), " > ", limit)


def access_line(config: HapaxConfig) -> str:
    """Who may call: the banner says so plainly when anyone who reaches the port may."""
    if config.clients is None:
        return "OPEN: no clients: section, so anyone who reaches the port spends the providers' keys"
    keys = sum(len(client.keys) for client in config.clients.values())
    limited = ", limits on" if config.limited else ""
    store = (" (counters in Redis)" if config.limits.store else " (counters in this gateway)") if limited else ""
    return f"client keys required ({len(config.clients)} clients, {keys} keys{limited}{store})"


def experiment_lines(config: HapaxConfig, limit: int = MAX_LISTED_ROUTES) -> list[str]:
    """Each experiment: what it splits, and its variants' shares (of the buckets) and providers."""
    lines = []
    for e in list(config.experiments.values())[:limit]:
        takes = f"model {e.model}" if e.model else "every model"
        where = f" on {', '.join(e.routes)}" if e.routes else ""
        shares = ", ".join(f"{v.name} {buckets / 100:g}% ({v.provider}/{v.model})"
                           for v, buckets in zip(e.variants, e.buckets(), strict=True))
        lines.append(f"{e.name}: {takes}{where}: {shares}")
    hidden = len(config.experiments) - limit
    return [*lines, *([f"... and {hidden} more"] if hidden > 0 else [])]


def _bounded(items: list[str], separator: str, limit: int) -> str:
    hidden = len(items) - limit
    listed = separator.join(items[:limit])
    return f"{listed}{separator}... and {hidden} more ({len(items)} in all)" if hidden > 0 else listed
