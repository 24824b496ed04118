"""Pure MEC 011 rules: query and subscription filters, ETags, body rules pydantic cannot say.

No I/O, no clock: callers pass ``now``. Every failed rule raises a ``Mec011RuleError`` that
names the rule (``check``) and says what to send instead, with the HTTP ``status`` (400, 403) a
route answers with: it is a :class:`kernel.errors.CheckedError`, rendered as ProblemDetails by
the app's one handler.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kernel.errors import CheckedError
from mec_api.mec011.schemas.service_mgmt import (
    ChangeType,
    FilteringCriteria,
    LocalityType,
    ServiceInfo,
    ServiceInfoRequest,
    ServiceState,
    TransportInfo,
    TransportType,
)

SER_AVAILABILITY_SUBSCRIPTION = "SerAvailabilityNotificationSubscription"
APP_TERMINATION_SUBSCRIPTION = "AppTerminationNotificationSubscription"
# The v2.1.1 YAML says notificationType "Shall be set to SerAvailabilityNotificationSubscription"
# (later editions: "SerAvailabilityNotification"); we send what the file we implement says.
SER_AVAILABILITY_NOTIFICATION_TYPE = "SerAvailabilityNotificationSubscription"
# ScopeOfLocality: "If absent, defaults to MEC_HOST".
DEFAULT_LOCALITY = LocalityType.MEC_HOST


class Mec011RuleError(CheckedError, ValueError):
    """A request broke a MEC 011 rule (``check`` names it, ``detail`` says what to send)."""

    status = 400

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(detail, check=check)


class InvalidQuery(Mec011RuleError):
    pass


class InvalidServiceInfo(Mec011RuleError):
    pass


class InvalidSubscription(Mec011RuleError):
    pass


class ReadOnlyAttribute(Mec011RuleError):
    """The app tried to change a rule attribute that only the MEC platform (MEO) configures."""

    status = 403


@dataclass(frozen=True)
class ServiceQuery:
    ser_instance_ids: tuple[str, ...] = ()
    ser_names: tuple[str, ...] = ()
    ser_category_id: str | None = None
    consumed_local_only: bool | None = None
    is_local: bool | None = None
    scope_of_locality: LocalityType | None = None


def parse_service_query(
    ser_instance_id: Sequence[str] | None = None,
    ser_name: Sequence[str] | None = None,
    ser_category_id: str | None = None,
    consumed_local_only: bool | None = None,
    is_local: bool | None = None,
    scope_of_locality: str | None = None,
) -> ServiceQuery:
    """The spec: 'Either ser_instance_id or ser_name or ser_category_id or none of them shall
    be present.' The other three filters combine freely (logical AND)."""
    present = [name for name, value in (("ser_instance_id", ser_instance_id),
                                        ("ser_name", ser_name),
                                        ("ser_category_id", ser_category_id)) if value]
    if len(present) > 1:
        raise InvalidQuery("service-query-exclusive",
                           f"{' and '.join(present)} were both given; send at most one of "
                           "ser_instance_id, ser_name and ser_category_id")
    locality: LocalityType | None = None
    if scope_of_locality is not None:
        try:
            locality = LocalityType(scope_of_locality)
        except ValueError:
            raise InvalidQuery("scope-of-locality",
                               f"{scope_of_locality!r} is not a LocalityType; use one of "
                               + ", ".join(t.value for t in LocalityType)) from None
    return ServiceQuery(tuple(ser_instance_id or ()), tuple(ser_name or ()), ser_category_id,
                        consumed_local_only, is_local, locality)


def matches_query(service: ServiceInfo, query: ServiceQuery) -> bool:
    if query.ser_instance_ids and service.ser_instance_id not in query.ser_instance_ids:
        return False
    if query.ser_names and service.ser_name not in query.ser_names:
        return False
    if query.ser_category_id is not None and (
            service.ser_category is None or service.ser_category.id != query.ser_category_id):
        return False
    if (query.consumed_local_only is not None
            and bool(service.consumed_local_only) != query.consumed_local_only):
        return False
    if query.is_local is not None and bool(service.is_local) != query.is_local:
        return False
    return not (query.scope_of_locality is not None
                and (service.scope_of_locality or DEFAULT_LOCALITY) != query.scope_of_locality)


def matches_criteria(service: ServiceInfo, criteria: FilteringCriteria | None) -> bool:
    """SerAvailabilityNotificationSubscription.filteringCriteria: absent matches every service;
    present attributes combine with AND; an empty list constrains nothing."""
    if criteria is None:
        return True
    if criteria.ser_instance_ids and service.ser_instance_id not in criteria.ser_instance_ids:
        return False
    if criteria.ser_names and service.ser_name not in criteria.ser_names:
        return False
    if criteria.ser_categories and (
            service.ser_category is None
            or service.ser_category.id not in {c.id for c in criteria.ser_categories}):
        return False
    if criteria.states and service.state not in criteria.states:
        return False
    return criteria.is_local is None or bool(service.is_local) == criteria.is_local


def canonical_json(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def compute_etag(body: Mapping[str, Any]) -> str:
    """A strong ETag over the representation: equal bodies, equal tags, on every replica."""
    return '"' + hashlib.sha256(canonical_json(body)).hexdigest()[:32] + '"'


def if_match_satisfied(if_match: str | None, current_etag: str) -> bool:
    """RFC 9110 If-Match with the strong comparison: absent or ``*`` passes; weak tags never do."""
    if if_match is None:
        return True
    candidates = [tag.strip() for tag in if_match.split(",")]
    return "*" in candidates or current_etag in candidates


def _check_transport(transport: TransportInfo) -> None:
    endpoint = transport.endpoint
    forms = [name for name, value in (("uris", endpoint.uris), ("addresses", endpoint.addresses),
                                      ("alternative", endpoint.alternative)) if value is not None]
    if len(forms) != 1:
        raise InvalidServiceInfo("endpoint-one-of",
                                 "transportInfo.endpoint must hold exactly one of uris, "
                                 f"addresses or alternative (got {forms or 'none'})")
    if transport.type == TransportType.REST_HTTP and transport.protocol.upper() != "HTTP":
        raise InvalidServiceInfo("rest-protocol",
                                 "transportInfo.protocol shall be HTTP for a REST_HTTP transport "
                                 f"(got {transport.protocol!r})")


def _resolve(request: ServiceInfoRequest, transports: Mapping[str, TransportInfo],
             service_id: str) -> ServiceInfo:
    if (request.transport_id is None) == (request.transport_info is None):
        raise InvalidServiceInfo("transport-one-of",
                                 "send either transportInfo or transportId (the id of a "
                                 "platform transport from GET /transports), not both or neither")
    if request.transport_id is not None:
        transport = transports.get(request.transport_id)
        if transport is None:
            raise InvalidServiceInfo("transport-id",
                                     f"transportId {request.transport_id!r} is not a platform "
                                     f"transport; known: {sorted(transports)}")
    else:
        assert request.transport_info is not None
        transport = request.transport_info
        _check_transport(transport)
    fields = request.model_dump(by_alias=False, exclude_none=True,
                                exclude={"transport_id", "transport_info"})
    fields["ser_instance_id"] = service_id
    return ServiceInfo.model_validate({**fields, "transport_info": transport})


def check_new_service(request: ServiceInfoRequest, transports: Mapping[str, TransportInfo],
                      new_id: str) -> ServiceInfo:
    """POST: the MEC platform assigns serInstanceId, so a client must not send one."""
    if request.ser_instance_id is not None:
        raise InvalidServiceInfo("ser-instance-id-assigned",
                                 "serInstanceId is assigned by the MEC platform: omit it in POST")
    return _resolve(request, transports, new_id)


def check_service_update(request: ServiceInfoRequest, transports: Mapping[str, TransportInfo],
                         service_id: str) -> ServiceInfo:
    if request.ser_instance_id is not None and request.ser_instance_id != service_id:
        raise InvalidServiceInfo("ser-instance-id-immutable",
                                 f"serInstanceId {request.ser_instance_id!r} differs from the "
                                 f"resource {service_id!r}: omit it or send the same value")
    return _resolve(request, transports, service_id)


def classify_change(old: ServiceInfo, new: ServiceInfo) -> ChangeType | None:
    """What a subscriber is told about a PUT; ``None`` when nothing changed."""
    old_body, new_body = old.to_json(), new.to_json()
    if old_body == new_body:
        return None
    old_body.pop("state"), new_body.pop("state")
    return ChangeType.STATE_CHANGED if old_body == new_body else ChangeType.ATTRIBUTES_CHANGED


def availability_notification(subscription_href: str, service_href: str, service: ServiceInfo,
                              change: ChangeType) -> dict[str, Any]:
    return {
        "notificationType": SER_AVAILABILITY_NOTIFICATION_TYPE,
        "serviceReferences": [{
            "link": {"href": service_href},
            "serName": service.ser_name,
            "serInstanceId": service.ser_instance_id,
            "state": service.state.value,
            "changeType": change.value,
        }],
        "_links": {"subscription": {"href": subscription_href}},
    }


def subscription_link_list(self_href: str, bodies: Iterable[Mapping[str, Any]],
                           rel: str) -> dict[str, Any]:
    """SubscriptionLinkList (both APIs): the list's own link and one link per subscription."""
    return {"_links": {"self": {"href": self_href},
                       "subscriptions": [{"href": b["_links"]["self"]["href"], "rel": rel}
                                         for b in bodies]}}


def check_subscription_type(given: str, expected: str) -> None:
    if given != expected:
        raise InvalidSubscription("subscription-type",
                                  f"subscriptionType must be {expected!r} (got {given!r})")


_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
# An absolute http(s) URI with a host (name, IPv4 or [IPv6]), optional port, printable ASCII
# (the same in Python and in JSON Schema's ECMA regex, whose \S differs on Unicode spaces).
CALLBACK_URI_PATTERN = (r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%-]+)(:" + _PORT
                        + r")?([/?#][!-~]*)?$")
_CALLBACK_URI = re.compile(CALLBACK_URI_PATTERN)


def check_callback_uri(uri: str) -> None:
    """Notifications go to absolute http(s) URIs only (no file:, no relative references)."""
    if _CALLBACK_URI.fullmatch(uri) is None:  # fullmatch: `$` also matches before a \n
        raise InvalidSubscription("callback-reference",
                                  f"callbackReference {uri[:200]!r} must be an absolute "
                                  "http(s) URI")


def liveness_expired(last_heartbeat: datetime, interval_s: int, now: datetime) -> bool:
    """A service that sent no heartbeat for two intervals has missed one: it goes INACTIVE."""
    return now - last_heartbeat > timedelta(seconds=2 * interval_s)


def check_heartbeat(state: ServiceState) -> None:
    if state != ServiceState.ACTIVE:
        raise InvalidServiceInfo("heartbeat-state",
                                 "a heartbeat (PATCH liveness) must say state ACTIVE; to take a "
                                 "service down, PUT its ServiceInfo with state INACTIVE")


def check_rule_update(current: Mapping[str, Any], proposed: Mapping[str, Any], id_field: str,
                      rule_id: str, mutable: Iterable[str] = ("state",)) -> dict[str, Any]:
    """Traffic/DNS rules are configured by the MEC platform; an app may change only ``state``.

    Returns the stored rule with the mutable attributes taken from ``proposed``."""
    if proposed.get(id_field) != rule_id:
        raise InvalidServiceInfo(f"{id_field}-immutable",
                                 f"{id_field} in the body must equal the resource id {rule_id!r}")
    allowed = set(mutable) | {id_field}
    changed = sorted(k for k in set(current) | set(proposed)
                     if k not in allowed and current.get(k) != proposed.get(k))
    if changed:
        raise ReadOnlyAttribute("rule-read-only",
                                f"only {', '.join(sorted(mutable))} may be changed by the app; "
                                f"{', '.join(changed)} are configured by the MEC platform: send "
                                "them as returned by GET")
    return {**current, **{k: proposed[k] for k in mutable if k in proposed}}
