"""MEC 011 v2.1.1 service-management data types, written by hand from ``MecServiceMgmtApi.yaml``.

Required fields and enums follow the official OpenAPI file. Unknown attributes are ignored
(the spec leaves ``additionalProperties`` open; we never store what we do not understand).
Responses are dumped with ``by_alias=True, exclude_none=True``: the spec's optional fields are
"absent", never ``null``.

Two attributes come from later editions of MEC 011 (v3.x), because v2.1.1 has no liveness:
``ServiceInfo.livenessInterval`` and ``transportId`` (the spec text's "either transportId or
transportInfo" rule, which the v2.1.1 YAML reduced to ``oneOf: [object, object]``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator
from pydantic.alias_generators import to_camel


def _opt(name: str) -> Any:
    """An optional attribute whose JSON name is not the camelCase of ours (``_links``, ``qCI``)."""
    return Field(default=None, validation_alias=name, serialization_alias=name)


def _req(name: str) -> Any:
    return Field(validation_alias=name, serialization_alias=name)


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True,
                              extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _absent_not_null(cls, data: Any) -> Any:
        """The spec's optional attributes are absent or hold a value; ``null`` is neither."""
        if isinstance(data, dict):
            known = {n for name, f in cls.model_fields.items()
                     for n in (name, f.validation_alias or to_camel(name))}
            # Unknown attributes are ignored whatever they hold (the spec allows them).
            nulls = sorted(str(k) for k, v in data.items() if v is None and k in known)
            if nulls:
                raise ValueError(f"{', '.join(nulls)}: omit an attribute instead of sending null")
        return data

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ServiceState(StrEnum):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"


class SerializerType(StrEnum):
    JSON = "JSON"
    XML = "XML"
    PROTOBUF3 = "PROTOBUF3"


class LocalityType(StrEnum):
    MEC_SYSTEM = "MEC_SYSTEM"
    MEC_HOST = "MEC_HOST"
    NFVI_POP = "NFVI_POP"
    ZONE = "ZONE"
    ZONE_GROUP = "ZONE_GROUP"
    NFVI_NODE = "NFVI_NODE"


class TransportType(StrEnum):
    REST_HTTP = "REST_HTTP"
    MB_TOPIC_BASED = "MB_TOPIC_BASED"
    MB_ROUTING = "MB_ROUTING"
    MB_PUBSUB = "MB_PUBSUB"
    RPC = "RPC"
    RPC_STREAMING = "RPC_STREAMING"
    WEBSOCKET = "WEBSOCKET"


class GrantType(StrEnum):
    OAUTH2_AUTHORIZATION_CODE = "OAUTH2_AUTHORIZATION_CODE"
    OAUTH2_IMPLICIT_GRANT = "OAUTH2_IMPLICIT_GRANT"
    OAUTH2_RESOURCE_OWNER = "OAUTH2_RESOURCE_OWNER"
    OAUTH2_CLIENT_CREDENTIALS = "OAUTH2_CLIENT_CREDENTIALS"


class ChangeType(StrEnum):
    ADDED = "ADDED"
    REMOVED = "REMOVED"
    STATE_CHANGED = "STATE_CHANGED"
    ATTRIBUTES_CHANGED = "ATTRIBUTES_CHANGED"


class LinkType(Model):
    href: str | None = None


class Self(Model):
    self: LinkType


class CategoryRef(Model):
    href: str
    id: str
    name: str
    version: str


class Address(Model):
    host: str
    port: StrictInt


class EndPointInfo(Model):
    """``oneOf`` Uris | Addresses | Alternative; exactly one is checked in ``core``."""

    uris: list[str] | None = None
    addresses: list[Address] | None = None
    alternative: dict[str, Any] | None = None


class OAuth2Info(Model):
    grant_types: list[GrantType] = Field(min_length=1, max_length=4)
    token_endpoint: str


class SecurityInfo(Model):
    oauth2_info: OAuth2Info | None = _opt("oAuth2Info")


class TransportInfo(Model):
    id: str
    name: str
    description: str | None = None
    type: TransportType
    protocol: str
    version: str
    endpoint: EndPointInfo
    security: SecurityInfo
    impl_specific_info: dict[str, Any] | None = None


class ServiceInfo(Model):
    """A service as registered, stored and returned (``transportInfo`` is always resolved)."""

    ser_instance_id: str | None = None
    ser_name: str
    ser_category: CategoryRef | None = None
    version: str
    state: ServiceState
    transport_info: TransportInfo
    serializer: SerializerType
    scope_of_locality: LocalityType | None = None
    consumed_local_only: StrictBool | None = None
    is_local: StrictBool | None = None
    # MEC 011 v3 heartbeat (seconds); absent: the service has no liveness resource.
    liveness_interval: StrictInt | None = Field(default=None, ge=1, le=86400)


class ServiceInfoRequest(ServiceInfo):
    """POST/PUT body: ``transportInfo`` may be replaced by a platform ``transportId``."""

    transport_info: TransportInfo | None = None  # type: ignore[assignment]
    transport_id: str | None = None


class FilteringCriteria(Model):
    ser_instance_ids: list[str] | None = None
    ser_names: list[str] | None = None
    ser_categories: list[CategoryRef] | None = None
    states: list[ServiceState] | None = None
    is_local: StrictBool | None = None


class SerAvailabilityNotificationSubscription(Model):
    subscription_type: str
    callback_reference: str
    # Required by the spec in requests too; the server ignores what a client sends and sets it.
    links: Self | None = _opt("_links")
    filtering_criteria: FilteringCriteria | None = None


class SubscriptionLink(Model):
    href: str
    rel: str


class SubscriptionLinkListLinks(Model):
    self: LinkType
    subscriptions: list[SubscriptionLink] = Field(default_factory=list)


class SubscriptionLinkList(Model):
    links: SubscriptionLinkListLinks = _req("_links")


class LivenessUpdate(Model):
    """MEC 011 v3 ``ServiceLivenessUpdate``: the heartbeat."""

    state: ServiceState


class TimeStamp(Model):
    seconds: StrictInt
    nano_seconds: StrictInt


class LivenessInfo(Model):
    """MEC 011 v3 ``ServiceLivenessInfo``."""

    state: ServiceState
    time_stamp: TimeStamp
    interval: StrictInt
