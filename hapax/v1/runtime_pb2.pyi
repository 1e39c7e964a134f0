from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Provider(_message.Message):
    __slots__ = ("name", "type", "model", "aliases", "base_url", "cluster", "timeout_seconds", "api_key", "health_check", "price", "forward_headers", "models", "api_key_source", "max_concurrent_requests", "region")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    BASE_URL_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    HEALTH_CHECK_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    FORWARD_HEADERS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    API_KEY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    model: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    base_url: str
    cluster: str
    timeout_seconds: float
    api_key: str
    health_check: HealthCheck
    price: ModelPrice
    forward_headers: _containers.RepeatedScalarFieldContainer[str]
    models: _containers.RepeatedCompositeFieldContainer[ServedModel]
    api_key_source: str
    max_concurrent_requests: int
    region: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., model: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., base_url: _Optional[str] = ..., cluster: _Optional[str] = ..., timeout_seconds: _Optional[float] = ..., api_key: _Optional[str] = ..., health_check: _Optional[_Union[HealthCheck, _Mapping]] = ..., price: _Optional[_Union[ModelPrice, _Mapping]] = ..., forward_headers: _Optional[_Iterable[str]] = ..., models: _Optional[_Iterable[_Union[ServedModel, _Mapping]]] = ..., api_key_source: _Optional[str] = ..., max_concurrent_requests: _Optional[int] = ..., region: _Optional[str] = ...) -> None: ...

class ServedModel(_message.Message):
    __slots__ = ("name", "families", "price")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FAMILIES_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    name: str
    families: _containers.RepeatedScalarFieldContainer[str]
    price: ModelPrice
    def __init__(self, name: _Optional[str] = ..., families: _Optional[_Iterable[str]] = ..., price: _Optional[_Union[ModelPrice, _Mapping]] = ...) -> None: ...

class ModelPrice(_message.Message):
    __slots__ = ("input_per_million", "output_per_million")
    INPUT_PER_MILLION_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PER_MILLION_FIELD_NUMBER: _ClassVar[int]
    input_per_million: float
    output_per_million: float
    def __init__(self, input_per_million: _Optional[float] = ..., output_per_million: _Optional[float] = ...) -> None: ...

class HealthCheck(_message.Message):
    __slots__ = ("interval_seconds", "timeout_seconds", "healthy_threshold", "unhealthy_threshold")
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    UNHEALTHY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    interval_seconds: float
    timeout_seconds: float
    healthy_threshold: int
    unhealthy_threshold: int
    def __init__(self, interval_seconds: _Optional[float] = ..., timeout_seconds: _Optional[float] = ..., healthy_threshold: _Optional[int] = ..., unhealthy_threshold: _Optional[int] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("path", "handler", "version", "metrics_labels", "dedup")
    class MetricsLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PATH_FIELD_NUMBER: _ClassVar[int]
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    METRICS_LABELS_FIELD_NUMBER: _ClassVar[int]
    DEDUP_FIELD_NUMBER: _ClassVar[int]
    path: str
    handler: str
    version: str
    metrics_labels: _containers.ScalarMap[str, str]
    dedup: str
    def __init__(self, path: _Optional[str] = ..., handler: _Optional[str] = ..., version: _Optional[str] = ..., metrics_labels: _Optional[_Mapping[str, str]] = ..., dedup: _Optional[str] = ...) -> None: ...

class Chain(_message.Message):
    __slots__ = ("cluster", "providers", "attempts")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    providers: _containers.RepeatedScalarFieldContainer[str]
    attempts: int
    def __init__(self, cluster: _Optional[str] = ..., providers: _Optional[_Iterable[str]] = ..., attempts: _Optional[int] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "provider", "chain", "family")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    name: str
    provider: str
    chain: str
    family: str
    def __init__(self, name: _Optional[str] = ..., provider: _Optional[str] = ..., chain: _Optional[str] = ..., family: _Optional[str] = ...) -> None: ...

class Runtime(_message.Message):
    __slots__ = ("config_version", "providers", "routes", "chains", "models", "auto_chains", "clients", "keys_required", "admission", "queue", "ledger", "experiments", "regions")
    class AutoChainsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    CHAINS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    AUTO_CHAINS_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    KEYS_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    ADMISSION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    config_version: str
    providers: _containers.RepeatedCompositeFieldContainer[Provider]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    chains: _containers.RepeatedCompositeFieldContainer[Chain]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    auto_chains: _containers.ScalarMap[str, str]
    clients: _containers.RepeatedCompositeFieldContainer[Client]
    keys_required: bool
    admission: Admission
    queue: Queue
    ledger: Ledger
    experiments: _containers.RepeatedCompositeFieldContainer[Experiment]
    regions: Regions
    def __init__(self, config_version: _Optional[str] = ..., providers: _Optional[_Iterable[_Union[Provider, _Mapping]]] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., chains: _Optional[_Iterable[_Union[Chain, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., auto_chains: _Optional[_Mapping[str, str]] = ..., clients: _Optional[_Iterable[_Union[Client, _Mapping]]] = ..., keys_required: _Optional[bool] = ..., admission: _Optional[_Union[Admission, _Mapping]] = ..., queue: _Optional[_Union[Queue, _Mapping]] = ..., ledger: _Optional[_Union[Ledger, _Mapping]] = ..., experiments: _Optional[_Iterable[_Union[Experiment, _Mapping]]] = ..., regions: _Optional[_Union[Regions, _Mapping]] = ...) -> None: ...

class Experiment(_message.Message):
    __slots__ = ("name", "model", "routes", "sticky_header", "variants")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    STICKY_HEADER_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    routes: _containers.RepeatedScalarFieldContainer[str]
    sticky_header: str
    variants: _containers.RepeatedCompositeFieldContainer[Variant]
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., routes: _Optional[_Iterable[str]] = ..., sticky_header: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[Variant, _Mapping]]] = ...) -> None: ...

class Variant(_message.Message):
    __slots__ = ("name", "provider", "chain", "model", "buckets")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    name: str
    provider: str
    chain: str
    model: str
    buckets: int
    def __init__(self, name: _Optional[str] = ..., provider: _Optional[str] = ..., chain: _Optional[str] = ..., model: _Optional[str] = ..., buckets: _Optional[int] = ...) -> None: ...

class Regions(_message.Message):
    __slots__ = ("header", "home", "countries", "residency", "views")
    class CountriesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ResidencyEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HEADER_FIELD_NUMBER: _ClassVar[int]
    HOME_FIELD_NUMBER: _ClassVar[int]
    COUNTRIES_FIELD_NUMBER: _ClassVar[int]
    RESIDENCY_FIELD_NUMBER: _ClassVar[int]
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    header: str
    home: str
    countries: _containers.ScalarMap[str, str]
    residency: _containers.ScalarMap[str, str]
    views: _containers.RepeatedCompositeFieldContainer[RegionView]
    def __init__(self, header: _Optional[str] = ..., home: _Optional[str] = ..., countries: _Optional[_Mapping[str, str]] = ..., residency: _Optional[_Mapping[str, str]] = ..., views: _Optional[_Iterable[_Union[RegionView, _Mapping]]] = ...) -> None: ...

class RegionView(_message.Message):
    __slots__ = ("key", "models", "auto_chains")
    class AutoChainsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    AUTO_CHAINS_FIELD_NUMBER: _ClassVar[int]
    key: str
    models: _containers.RepeatedCompositeFieldContainer[Model]
    auto_chains: _containers.ScalarMap[str, str]
    def __init__(self, key: _Optional[str] = ..., models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., auto_chains: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Ledger(_message.Message):
    __slots__ = ("directory", "retention_days", "store")
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    RETENTION_DAYS_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    directory: str
    retention_days: int
    store: str
    def __init__(self, directory: _Optional[str] = ..., retention_days: _Optional[int] = ..., store: _Optional[str] = ...) -> None: ...

class Queue(_message.Message):
    __slots__ = ("max_waiting", "timeout_seconds")
    MAX_WAITING_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    max_waiting: int
    timeout_seconds: float
    def __init__(self, max_waiting: _Optional[int] = ..., timeout_seconds: _Optional[float] = ...) -> None: ...

class Client(_message.Message):
    __slots__ = ("name", "key_ids", "department", "metrics_labels", "limits", "priority")
    class MetricsLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_IDS_FIELD_NUMBER: _ClassVar[int]
    DEPARTMENT_FIELD_NUMBER: _ClassVar[int]
    METRICS_LABELS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    key_ids: _containers.RepeatedScalarFieldContainer[str]
    department: str
    metrics_labels: _containers.ScalarMap[str, str]
    limits: Limits
    priority: int
    def __init__(self, name: _Optional[str] = ..., key_ids: _Optional[_Iterable[str]] = ..., department: _Optional[str] = ..., metrics_labels: _Optional[_Mapping[str, str]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., priority: _Optional[int] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("requests_per_minute", "requests_per_day", "tokens_per_minute", "tokens_per_day", "budget_usd", "budget_period")
    REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    BUDGET_USD_FIELD_NUMBER: _ClassVar[int]
    BUDGET_PERIOD_FIELD_NUMBER: _ClassVar[int]
    requests_per_minute: int
    requests_per_day: int
    tokens_per_minute: int
    tokens_per_day: int
    budget_usd: float
    budget_period: str
    def __init__(self, requests_per_minute: _Optional[int] = ..., requests_per_day: _Optional[int] = ..., tokens_per_minute: _Optional[int] = ..., tokens_per_day: _Optional[int] = ..., budget_usd: _Optional[float] = ..., budget_period: _Optional[str] = ...) -> None: ...

class Admission(_message.Message):
    __slots__ = ("store", "fail_closed", "default_max_tokens", "departments")
    class DepartmentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Limits
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Limits, _Mapping]] = ...) -> None: ...
    STORE_FIELD_NUMBER: _ClassVar[int]
    FAIL_CLOSED_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DEPARTMENTS_FIELD_NUMBER: _ClassVar[int]
    store: str
    fail_closed: bool
    default_max_tokens: int
    departments: _containers.MessageMap[str, Limits]
    def __init__(self, store: _Optional[str] = ..., fail_closed: _Optional[bool] = ..., default_max_tokens: _Optional[int] = ..., departments: _Optional[_Mapping[str, Limits]] = ...) -> None: ...

class ConfigStatus(_message.Message):
    __slots__ = ("serving_version", "reloads_applied", "reloads_unchanged", "reloads_invalid", "last_error", "rejections", "last_error_source", "last_error_paths", "unchecked_version")
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    RELOADS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    RELOADS_UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    RELOADS_INVALID_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_SOURCE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_PATHS_FIELD_NUMBER: _ClassVar[int]
    UNCHECKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    serving_version: str
    reloads_applied: int
    reloads_unchanged: int
    reloads_invalid: int
    last_error: str
    rejections: _containers.RepeatedCompositeFieldContainer[Rejection]
    last_error_source: str
    last_error_paths: _containers.RepeatedScalarFieldContainer[str]
    unchecked_version: str
    def __init__(self, serving_version: _Optional[str] = ..., reloads_applied: _Optional[int] = ..., reloads_unchanged: _Optional[int] = ..., reloads_invalid: _Optional[int] = ..., last_error: _Optional[str] = ..., rejections: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., last_error_source: _Optional[str] = ..., last_error_paths: _Optional[_Iterable[str]] = ..., unchecked_version: _Optional[str] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("node", "type_url", "version", "reason")
    NODE_FIELD_NUMBER: _ClassVar[int]
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    node: str
    type_url: str
    version: str
    reason: str
    def __init__(self, node: _Optional[str] = ..., type_url: _Optional[str] = ..., version: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
