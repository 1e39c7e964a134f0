"""The contract between the control plane, Envoy and ext_proc: every name that crosses a process.

The control plane writes Envoy's configuration and ext_proc's runtime; Envoy
carries headers and metadata from one ext_proc step to the next; ext_proc reads
them. Each name below is written by one side and read by another, so it is
spelled here once and both sides import it (as Envoy AI Gateway's
``internalapi`` does). ``tests/unit/test_architecture.py`` fails if one of these
literals is written out anywhere else in the gateway's code.

Each entry says who writes it and who reads it. "route" means a route Envoy
gets from the control plane; "router step" and "upstream step" are ext_proc's
two steps (``ext_proc/steps/``).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

# ---------------------------------------------------------------- ext_proc's two steps


class Phase(StrEnum):
    """Which step an ext_proc gRPC stream is for.

    Written: the control plane, as the ext_proc filter's gRPC initial metadata
    (``PHASE_METADATA``). Read: ext_proc, to pick the step.
    """

    ROUTER = "router"      # once per request, in the HTTP connection manager
    UPSTREAM = "upstream"  # once per attempt, in the chain cluster's upstream filters


PHASE_METADATA = "x-hapax-phase"

# ---------------------------------------------------------------- request headers between the steps

# Written: the router step. Read: the route's ``cluster_header`` (Envoy picks the chain cluster).
CHAIN_HEADER = "x-hapax-chain"
# Unix time the request started. Written: the router step, or a body-routed lane's route
# (``%START_TIME%``). Read: the upstream step (request duration, time to first byte).
START_HEADER = "x-hapax-start"
# The runtime version the request started under. Written: the router step, or a model-lane
# route. Read: the upstream step, so every attempt uses one version.
VERSION_HEADER = "x-hapax-version"
# Envoy's own. Written: the router step (the request's chain length). Read: Envoy's router.
MAX_RETRIES_HEADER = "x-envoy-max-retries"
# Envoy's own. Written: Envoy on each attempt (the route's ``include_request_attempt_count``,
# set by the control plane). Read: the upstream step (first attempt or retry).
ATTEMPT_HEADER = "x-envoy-attempt-count"
# Envoy's own. Written: Envoy. Read: ext_proc's log lines and Envoy's access log.
REQUEST_ID_HEADER = "x-request-id"

# A coalesced request (a route's ``dedup``): the key of the identical request in flight whose
# answer it shares. Written: the router step (in the first ext_proc worker), which sends the
# request to FIRST_WORKER_HTTP_CLUSTER. Read: that worker's HTTP side, which streams the answer.
COALESCE_HEADER = "x-hapax-coalesce"
# On a coalesced request's answer, for the client and the access log: "true".
COALESCED_HEADER = "x-hapax-coalesced"
# The first ext_proc worker's HTTP side (/health, /metrics, coalesced answers). Written: the
# control plane (the cluster). Read: the router step (a coalesced request's chain).
FIRST_WORKER_HTTP_CLUSTER = "hapax_ext_proc_http"

# The id of the client key the request carried, once Envoy has checked it (hapax/client_keys.py).
# Written: Envoy's key check, replacing any the client sent. Read: ext_proc (the runtime's
# client of that key: its labels and limits), Envoy's access log. Never sent to a provider.
KEY_ID_HEADER = "x-hapax-key-id"

# An A/B experiment's request (config ``experiments``): which experiment and which of its variants
# serves it. Written: the experiment route's weighted cluster (request and response headers), or
# the router step on a route it routes. Read: the upstream step (the variant's model), the access
# log (from the answer's headers), the client (for its own analysis).
EXPERIMENT_HEADER = "x-hapax-experiment"
VARIANT_HEADER = "x-hapax-variant"
# The series and ledger labels they become.
EXPERIMENT_LABELS = ("experiment", "variant")
# A user's bucket is the hash of its sticky header (else its key id) modulo this; each variant
# holds a run of buckets. Written: the control plane (weights), Envoy (the hash). Read: the
# router step, which assigns the requests it routes the same way (ext_proc/experiments.py).
EXPERIMENT_BUCKETS = 10_000
# The request's region (``regions.header``, this by default): from a trusted edge, else removed.
# Written: the edge or CDN in front of the gateway (Envoy removes it from any other peer).
# Read: the lanes' cluster lookups (control_plane/resources/regional.py), the router step.
DEFAULT_REGION_HEADER = "x-hapax-region"
# The client address's country (ISO 3166 code), with ``regions.geoip``. Written: Envoy's geoip
# filter, after Envoy removed any the client sent. Read: as the region header, when there is none.
GEO_COUNTRY_HEADER = "x-hapax-geo-country"

# What the gateway tells itself between steps: never from a client, never to a provider.
STEP_REQUEST_HEADERS = (CHAIN_HEADER, VERSION_HEADER, START_HEADER, COALESCE_HEADER, EXPERIMENT_HEADER,
                        VARIANT_HEADER)
# Credentials a client may send to the gateway; none of them may reach a provider.
# Removed by: the router step, and every body-routed lane route.
CLIENT_CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "proxy-authorization")
# What a route that skips the router step removes from the client's request itself.
REMOVED_REQUEST_HEADERS = (*CLIENT_CREDENTIAL_HEADERS, *STEP_REQUEST_HEADERS)

# ---------------------------------------------------------------- what a provider is sent

# Headers are an allow-list: an attempt keeps these of the request's headers, and those its
# provider's config lists (``forward_headers``); every other one is removed before the
# provider's own credentials and version headers are set. Applied by: the upstream step
# (every attempt it sees) and the passthrough lane's per-attempt filter (control plane).
# ``accept-encoding`` is kept as it is: what a provider may compress is the routes' business.
PROVIDER_REQUEST_HEADERS = ("content-type", "content-length", "accept", "accept-encoding", REQUEST_ID_HEADER)
# Never removed, with every pseudo-header (":path"...): Envoy sets them for the provider, and
# forbids removing them.
NEVER_REMOVED_HEADERS = ("host",)

# ---------------------------------------------------------------- response headers between the steps

# Written: the upstream step on each attempt's answer. Read and removed: the router step
# (it counts the request once its answer is final).
PROVIDER_HEADER = "x-hapax-provider"  # which provider answered...
ANSWER_ATTEMPT_HEADER = "x-hapax-attempt"  # ...at which attempt...
UPSTREAM_SECONDS_HEADER = "x-hapax-upstream-seconds"  # ...and how long it took to its headers
STEP_RESPONSE_HEADERS = (PROVIDER_HEADER, ANSWER_ATTEMPT_HEADER, UPSTREAM_SECONDS_HEADER)
# Marks an attempt's answer Envoy made on the way to the provider (its timeout, say), already
# OpenAI error JSON. Written: an attempt listener's local replies (the control plane's config,
# control_plane/resources/attempts.py). Read: the upstream step, which leaves it as it is.
# Removed: the routes' virtual host, before the client.
GATEWAY_ANSWER_HEADER = "x-hapax-gateway-answer"

# Marks Envoy's 503 provider_unavailable reply to a request the router step routed (one that
# carries CHAIN_HEADER). Written: that local reply's mapper (control_plane/resources/listeners.py).
# Read and removed: the router step, which puts the providers' reasons in the reply's message.
# Only ever on that reply, so the success path pays nothing for it.
UNAVAILABLE_HEADER = "x-hapax-unavailable"

# ---------------------------------------------------------------- response headers for the client

# The client's request fields its provider was not sent (ext_proc/translators/params.py), as
# "a, b". Written: the upstream step, on the answer of an attempt whose translator dropped
# some. Read: the client. Not a step header: it stays on the answer.
DROPPED_PARAMS_HEADER = "x-hapax-dropped-params"

# ---------------------------------------------------------------- Envoy metadata

# The filter-metadata namespace of the gateway's routes and provider endpoints.
# Written: the control plane. Read: ext_proc (``xds.*_metadata`` attributes), Envoy's access logs.
METADATA_NAMESPACE = "hapax"


class RouteKey(StrEnum):
    """Keys of a route's ``hapax`` metadata (besides the route's metrics labels)."""

    HANDLER = "handler"  # the client API: a ``Handler``
    VERSION = "version"  # the route's ``version`` from the config
    ROUTE = "route"      # the client's path, as the config names the route
    LANE = "lane"        # a ``Lane``, on a route Envoy picks from the body


# Key of a provider endpoint's ``hapax`` metadata naming its provider. Written: the control
# plane. Read: the upstream step, the access logs, the lane's per-attempt matcher.
HOST_PROVIDER_KEY = "provider"
# Marks the last member of every chain: the host Envoy sends a request to when none of the
# chain's providers is in rotation. Written: the control plane (that host's metadata). Read:
# the upstream step, which answers 503 with each provider's reason instead of sending it on.
HOST_UNAVAILABLE_KEY = "unavailable"


class Lane(StrEnum):
    """Routes Envoy picks from the body's ``model``, without the router step.

    Written: the control plane, in the route's metadata (``RouteKey.LANE``) and the access
    log's tag. Read: the upstream step and the access log counter.
    """

    PASSTHROUGH = "passthrough"  # served by Envoy alone (control_plane/resources/passthrough.py)
    MODEL = "model"              # straight to the model's chain (control_plane/resources/model_lane.py)


# What json_to_metadata writes of a request's body (dynamic metadata), under these keys.
# Written: Envoy (the control plane's filter config). Read: the lanes' routes, the access
# log, and the upstream step (``REQUEST_METADATA_ATTRIBUTE``: which chain a model-lane
# request is on, and whether its body can go as sent).
REQUEST_NAMESPACE = "hapax.request"
BODY_MODEL, BODY_STREAM, BODY_INCLUDE_USAGE = "model", "stream", "include_usage"
# The checked client key's id (KEY_ID_HEADER), kept in the same namespace by Envoy for its access log.
REQUEST_KEY_ID = "key_id"
# What json_to_metadata writes of an answer's body. Written: Envoy (the control plane's
# filter config). Read: ext_proc's access log counter.
USAGE_NAMESPACE = "hapax.usage"
PROMPT_TOKENS, COMPLETION_TOKENS = "prompt_tokens", "completion_tokens"
# The prompt's tokens the provider served from its cache (usage.prompt_tokens_details), for the ledger.
PROMPT_DETAILS, CACHED_TOKENS = "prompt_tokens_details", "cached_tokens"
# An Anthropic answer's usage, which Envoy reads into the same keys (PROMPT_TOKENS,
# COMPLETION_TOKENS, CACHED_TOKENS) for a Messages body an Anthropic provider took as it came.
ANTHROPIC_USAGE = {"input_tokens": PROMPT_TOKENS, "output_tokens": COMPLETION_TOKENS,
                   "cache_read_input_tokens": CACHED_TOKENS}
# A Response's usage (OpenAI's Responses API, a body an OpenAI provider took as it came) names its
# counts as Anthropic does, but for the cached ones. Both, as paths under ``usage``.
INPUT_OUTPUT_USAGE: tuple[tuple[tuple[str, ...], str], ...] = (
    *(((name,), key) for name, key in ANTHROPIC_USAGE.items()),
    (("input_tokens_details", "cached_tokens"), CACHED_TOKENS))

# ext_proc request attributes the control plane asks Envoy for, and ext_proc reads.
EXT_PROC_ATTRIBUTES = "envoy.filters.http.ext_proc"  # Envoy's key for them
HOST_METADATA_ATTRIBUTE = "xds.upstream_host_metadata"
ROUTE_METADATA_ATTRIBUTE = "xds.route_metadata"
REQUEST_METADATA_ATTRIBUTE = "metadata"  # the request's dynamic metadata (REQUEST_NAMESPACE)
STATUS_ATTRIBUTE = "response.code"  # a response attribute: sent with the answer's first message

# ---------------------------------------------------------------- access log to ext_proc

# Written: Envoy's gRPC access log (the control plane's config). Read: ext_proc's counter.
ACCESS_LOG_NAME = "hapax"


class LogTag(StrEnum):
    """Custom tags of an access log entry."""

    LANE = "lane"          # the route's lane
    ROUTE = "route"        # the route's path
    PROVIDER = "provider"  # the endpoint's provider
    MODEL = "model"        # the request's model, as Envoy read it from the body (its lane routed on it)
    KEY_ID = "key_id"      # the client key's id (KEY_ID_HEADER), when the gateway checks keys


# Envoy's response details of an answer ext_proc gave itself start with this.
# Written: ext_proc's immediate responses. Read: ext_proc's access log counter.
GATEWAY_DETAILS_PREFIX = "hapax_"

# ---------------------------------------------------------------- ext_proc's runtime over ADS

# Written: the control plane's ADS server. Read: ext_proc's subscription.
RUNTIME_TYPE_URL = "type.googleapis.com/hapax.v1.Runtime"
STATUS_TYPE_URL = "type.googleapis.com/hapax.v1.ConfigStatus"
RUNTIME_NAME = STATUS_NAME = "hapax"  # the one resource of each type

# ---------------------------------------------------------------- HTTP paths ext_proc serves

# Written: the control plane's routes and health checks. Served: ext_proc's HTTP app.
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
# /health with the reasons of a refused edit: served on server.metrics_port (the
# admin side) as GET /health, never on the public listener, whose routes reach
# ext_proc's HTTP side only at HEALTH_PATH.
ADMIN_HEALTH_PATH = "/admin/health"
PROVIDER_VERDICT_PATH = "/providers/{name}/health"  # Envoy's health check of provider ``name``


def provider_verdict_path(provider: str) -> str:
    return PROVIDER_VERDICT_PATH.format(name=provider)


# Envoy's own stats, in Prometheus's format. Served: Envoy's admin, which listens on a Unix
# socket only Hapax can open; reached from server.metrics_port through a read-only route
# (control plane) to the admin cluster every Hapax Envoy's bootstrap defines (hapax/envoy_process.py).
ENVOY_STATS_PATH = "/stats/prometheus"
ENVOY_ADMIN_CLUSTER = "hapax_envoy_admin"

# ---------------------------------------------------------------- Envoy listeners

# Written: the control plane. Read: the supervisor (Envoy's admin reports their ports).
LISTENER = "hapax_http"
METRICS_LISTENER = "hapax_metrics"
HTTP3_LISTENER = "hapax_http3"

# ---------------------------------------------------------------- client APIs and the OpenAI API


class Handler(StrEnum):
    """The client APIs a route serves. Written: the config (``routes[].handler``), into the
    route's metadata and the runtime. Read: ext_proc's steps and translators."""

    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDINGS = "embeddings"
    MODELS = "models"
    MESSAGES = "messages"  # Anthropic's Messages API, inbound: a chat to every provider
    RESPONSES = "responses"  # OpenAI's Responses API, inbound: a chat to every provider but OpenAI's
    COUNT_TOKENS = "count_tokens"  # the Messages API's token count: Anthropic's, else the gateway's estimate


# Anthropic's error type for each status (its API documents these), for the errors the gateway
# gives a client of its Messages API (Handler.MESSAGES). Read: ext_proc's answers and errors
# (ext_proc/inbound/), Envoy's own replies (control_plane/resources/listeners.py).
ANTHROPIC_ERROR_TYPES: Mapping[int, str] = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    408: "timeout_error", 413: "request_too_large", 429: "rate_limit_error", 431: "invalid_request_error",
    500: "api_error", 502: "api_error", 503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error"}


# The handlers of Anthropic's API, whose errors are all in Anthropic's shape.
ANTHROPIC_HANDLERS = (Handler.MESSAGES, Handler.COUNT_TOKENS)


def anthropic_error_type(status: int) -> str:
    return ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


class ModelFamily(StrEnum):
    """What a model does, and so which requests it may serve: a chat model the chat and completion
    APIs (a legacy completion is sent as a chat), an embeddings model the embeddings API. Each
    family has its own chains: an embeddings request never fails over to a chat-only provider.
    Written: the config (``providers.*.models.*.handler``), into the runtime's models and auto
    chains. Read: ext_proc's router and upstream steps."""

    CHAT = "chat"
    EMBEDDINGS = "embeddings"


# The model name that asks for the family's preference chain. Read from the body by the router
# step, and by Envoy on the model lane (control_plane/resources/model_lane.py).
AUTO_MODEL = "auto"

FAMILY_OF_HANDLER: Mapping[Handler, ModelFamily] = {
    Handler.CHAT: ModelFamily.CHAT,
    Handler.COMPLETION: ModelFamily.CHAT,
    Handler.EMBEDDINGS: ModelFamily.EMBEDDINGS,
    Handler.MESSAGES: ModelFamily.CHAT,
    Handler.RESPONSES: ModelFamily.CHAT,
    Handler.COUNT_TOKENS: ModelFamily.CHAT,
}


# The OpenAI API's paths, under a provider's base path. Used by the passthrough lane's routes
# (control plane, which rewrites the path itself) and the OpenAI translator (ext_proc): an
# attempt must reach the same path whichever of them sends it.
OPENAI_CHAT_PATH = "/chat/completions"
OPENAI_EMBEDDINGS_PATH = "/embeddings"
OPENAI_MODELS_PATH = "/models"
OPENAI_RESPONSES_PATH = "/responses"  # the Responses API: an OpenAI provider takes its requests as they are
# Each handler an OpenAI server serves; a legacy completion is sent as a chat.
OPENAI_PATHS: Mapping[Handler, str] = {
    Handler.CHAT: OPENAI_CHAT_PATH,
    Handler.COMPLETION: OPENAI_CHAT_PATH,
    Handler.EMBEDDINGS: OPENAI_EMBEDDINGS_PATH,
}

# Anthropic's Messages API path under a provider's base path, and its version header. Used by
# the passthrough lane's Messages routes (control plane) and the Anthropic translator (ext_proc).
ANTHROPIC_MESSAGES_PATH = "/v1/messages"
ANTHROPIC_COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
# On a token count the gateway estimated itself (no provider of the chain counts tokens), its
# answer says so. Written: ext_proc's upstream step (ext_proc/inbound/count_tokens.py).
TOKEN_COUNT_HEADER = "x-hapax-token-count"
TOKEN_COUNT_ESTIMATED = "estimated"
ANTHROPIC_VERSION_HEADER = "anthropic-version"
# What a Messages body sent to an Anthropic provider as it came keeps of the client's headers,
# beyond what every provider gets: the API version and the betas the body was written for.
ANTHROPIC_AS_SENT_HEADERS = (ANTHROPIC_VERSION_HEADER, "anthropic-beta")

# ---------------------------------------------------------------- the supervisor

# A local address on a Unix socket, as gRPC spells it ("unix:/run/hapax/xds.sock"); any other
# address is host:port. Written: `hapax serve`, for the channels between its own processes
# (xDS, ext_proc's gRPC and HTTP sides, Envoy's admin), in a directory only its user can
# open. Read: the control plane (ext_proc's endpoints, as Envoy pipe addresses), ext_proc
# and Envoy's bootstrap.
UNIX_SOCKET_PREFIX = "unix:"

# Each restarted process's restart count, a JSON object {"ext_proc-1": 0, "control_plane": 1, ...}
# in the directory the ext_proc workers share (--shared-dir). Written: `hapax serve`
# (hapax/supervisor.py). Read: ext_proc, for hapax_process_restarts_total and /health.
RESTARTS_FILE = "restarts.json"

# Folders in that directory. Written: the ext_proc worker that sees a retry-after (HOLD_OFF_DIR),
# the one that probes (VERDICTS_DIR). Read: every ext_proc worker (verdicts, /health, reasons).
HOLD_OFF_DIR = "hold-off"
VERDICTS_DIR = "provider-verdicts"

# The JSON lines a child prints on its stdout while it starts (hapax/logs.py: announce), each
# {"event": ..., "component": ...}. Written: the control plane and ext_proc. Read: `hapax serve`,
# which waits for READY_EVENT, and for a PROGRESS_EVENT the longer by its PROGRESS_BUDGET
# (seconds the announced step may take: the control plane's bounded validation, say), so that
# its wait scales with the work a child says it has to do.
READY_EVENT = "ready"
PROGRESS_EVENT = "progress"
PROGRESS_BUDGET = "budget_seconds"

# ---------------------------------------------------------------- admission (limits and budgets)

# Envoy's rate limit filter asks ext_proc's admission service (envoy.service.ratelimit.v3)
# before a request under limits goes on. Written: the control plane (the filter's domain and
# descriptor actions). Read: ext_proc's admission service.
ADMISSION_DOMAIN = "hapax"


class AdmissionEntry(StrEnum):
    """The keys of the one descriptor Envoy sends per request: what it knows of the request."""

    CHECK = "hapax"                  # which check: ADMISSION_CHECK, QUEUE_TAKE or QUEUE_RELEASE
    REQUEST_ID = "request_id"        # x-request-id: the reservation's name
    KEY_ID = "key_id"                # KEY_ID_HEADER, when the gateway checks keys
    ROUTE = "route"                  # the route's path (its metadata)
    MODEL = "model"                  # the body's model (json_to_metadata)
    BYTES = "bytes"                  # content-length: the input's size, for its token estimate
    MAX_TOKENS = "max_tokens"        # the body's limits on the answer (json_to_metadata)
    MAX_COMPLETION_TOKENS = "max_completion_tokens"
    MAX_OUTPUT_TOKENS = "max_output_tokens"  # the Responses API's
    REGION = "region"                # with regions: the (trusted) region header, which picks the chain
    COUNTRY = "country"              # with regions.geoip: GEO_COUNTRY_HEADER


# The body's limits on the answer a reservation reads, the first present winning (a chat's newer
# field over its older; the Responses API's own). Written: Envoy (json_to_metadata, the admission
# descriptor: control plane). Read: ext_proc's admission.
RESERVATION_FIELDS = (AdmissionEntry.MAX_COMPLETION_TOKENS, AdmissionEntry.MAX_TOKENS,
                      AdmissionEntry.MAX_OUTPUT_TOKENS)


# The queue's checks go to the same service under their own domain (a slot taken as the request
# starts, given back when its stream is done): the descriptor's first entry says which.
QUEUE_DOMAIN = "hapax.queue"
ADMISSION_CHECK, QUEUE_TAKE, QUEUE_RELEASE = "limit_check", "take", "release"

# Where Envoy keeps the dynamic metadata the admission service answers with (the rate limit
# filter's own namespace), and the key that says a request holds a reservation to settle.
# Written: ext_proc's admission service. Read: ext_proc's access log counter.
ADMISSION_NAMESPACE = "envoy.filters.http.ratelimit"
RESERVED_KEY = "hapax_reserved"

# ---------------------------------------------------------------- the cost ledger

# One record per request, written by ext_proc (ext_proc/ledger.py) and read by `hapax report`:
# SQLite files named LEDGER_FILE_PATTERN (by the month of the request's start, UTC) in the
# ledger's directory, each with one table LEDGER_TABLE of these columns, in this order.
LEDGER_TABLE = "request_records"
LEDGER_FILE_PATTERN = "ledger-{year:04d}-{month:02d}.sqlite"
LEDGER_COLUMNS = (
    ("time", "REAL NOT NULL"),            # the request's start, Unix seconds
    ("request_id", "TEXT PRIMARY KEY"),   # x-request-id: one record per request, whoever writes it
    ("route", "TEXT NOT NULL"),           # the route's path
    ("labels", "TEXT NOT NULL"),          # JSON object: the route's and its client's metrics labels
                                          # (an experiment's labels are columns of their own)
    ("key_id", "TEXT NOT NULL"),          # the client key's id ("" on an open gateway)
    ("client", "TEXT NOT NULL"),          # its client's name ("")
    ("provider", "TEXT NOT NULL"),        # the provider that answered ("": none did)
    ("model", "TEXT NOT NULL"),           # the model it was sent ("": none)
    ("input_tokens", "INTEGER"),          # as the provider reported them; NULL: not reported
    ("output_tokens", "INTEGER"),
    ("cached_tokens", "INTEGER"),
    ("cost_usd", "REAL NOT NULL"),        # from the price table (0 when a count or the price is unknown)
    ("price_version", "TEXT NOT NULL"),   # the configuration version whose price table priced it
    ("status", "INTEGER NOT NULL"),       # the HTTP status the client got
    ("outcome", "TEXT NOT NULL"),         # hapax_requests_total's outcome
    # Added after the first release: a file or table without them gets them (empty) when opened.
    ("experiment", "TEXT NOT NULL DEFAULT ''"),  # its A/B experiment ("": none)
    ("variant", "TEXT NOT NULL DEFAULT ''"),     # the experiment's variant that served it
    ("region", "TEXT NOT NULL DEFAULT ''"),      # the region of the provider that answered (regions:)
)

