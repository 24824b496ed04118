"""``mec_service_mgmt/v1``: service discovery, the app's own services, transports, subscriptions.

Paths, bodies and status codes as in the official MEC 011 v2.1.1 OpenAPI; the liveness resource
is the one of MEC 011 v3 (v2.1.1 has none).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from mec_api.mec011 import core
from mec_api.mec011.deps import Mec011, OwnServicesReader, OwnServicesWriter, ServicesReader
from mec_api.mec011.http import (
    answer_other_methods,
    base_url,
    call,
    check,
    json_response,
    no_content,
)
from mec_api.mec011.models import PLATFORM_NAMESPACE
from mec_api.mec011.notifier import CallbackNotifier
from mec_api.mec011.schemas.service_mgmt import (
    ChangeType,
    LivenessInfo,
    LivenessUpdate,
    SerAvailabilityNotificationSubscription,
    ServiceInfoRequest,
    TimeStamp,
)
from mec_api.mec011.store.service_mgmt import (
    ServiceChange,
    SqlServiceRegistry,
    StoredService,
    StoredSubscription,
)
from mec_api.problems import ProblemError, ProblemRoute

PREFIX = "/mec_service_mgmt/v1"
API = "mgmt"
ArrayQuery = Annotated[list[str] | None, Query()]
IfMatch = Annotated[str | None, Header()]
router = APIRouter(prefix=PREFIX, tags=["mec011-service-mgmt"], route_class=ProblemRoute)


async def announce_change(registry: SqlServiceRegistry, notifier: CallbackNotifier,
                          base: str, change: ServiceChange) -> None:
    """Tell every entitled subscriber whose filter matches (after the write committed).
    ``base`` is the public base URL the notification's links are built on."""
    current = change.new or change.old
    assert current is not None
    if change.old is None:
        kind: ChangeType | None = ChangeType.ADDED
    elif change.new is None:
        kind = ChangeType.REMOVED
    else:
        kind = core.classify_change(change.old.info, change.new.info)
    if kind is None:
        return
    subscribers = await call(registry.subscribers, API, current.namespace)
    for sub in subscribers:
        criteria = SerAvailabilityNotificationSubscription.model_validate(sub.body)
        if core.matches_criteria(current.info, criteria.filtering_criteria):
            notifier.submit(criteria.callback_reference, core.availability_notification(
                f"{base}{PREFIX}/applications/{sub.app_instance_id}/subscriptions/"
                f"{sub.subscription_id}",
                f"{base}{PREFIX}/services/{current.info.ser_instance_id or ''}",
                current.info, kind))


def _app_service_href(request: Request, app: str, service_id: str) -> str:
    return f"{base_url(request)}{PREFIX}/applications/{app}/services/{service_id}"


def _subscription_href(request: Request, app: str, subscription_id: str) -> str:
    return f"{base_url(request)}{PREFIX}/applications/{app}/subscriptions/{subscription_id}"


async def _announce(ctx: Mec011, request: Request, change: ServiceChange) -> None:
    await announce_change(ctx.registry, ctx.notifier, base_url(request), change)


def _listing(services: list[StoredService], query: core.ServiceQuery) -> JSONResponse:
    return json_response([s.info.to_json() for s in services
                          if core.matches_query(s.info, query)])


def _liveness(found: StoredService) -> JSONResponse:
    assert found.liveness_interval is not None and found.last_heartbeat is not None
    beat = found.last_heartbeat
    return json_response(LivenessInfo(
        state=found.info.state, interval=found.liveness_interval,
        time_stamp=TimeStamp(seconds=int(beat.timestamp()),
                             nano_seconds=beat.microsecond * 1000)).to_json())


@router.get("/services")
async def services_get(
        principal: ServicesReader, ctx: Mec011,
        ser_instance_id: ArrayQuery = None, ser_name: ArrayQuery = None,
        ser_category_id: str | None = None, consumed_local_only: bool | None = None,
        is_local: bool | None = None, scope_of_locality: str | None = None) -> JSONResponse:
    query = check(core.parse_service_query, ser_instance_id, ser_name, ser_category_id,
                  consumed_local_only, is_local, scope_of_locality)
    return _listing(await call(ctx.registry.visible_services, principal.namespace), query)


@router.get("/services/{serviceId}")
async def service_get(serviceId: str, principal: ServicesReader, ctx: Mec011) -> JSONResponse:
    found = await call(ctx.registry.service, serviceId)
    if found is None or found.namespace not in (principal.namespace, PLATFORM_NAMESPACE):
        raise ProblemError(404, "Not Found",
                           f"no service {serviceId!r} is visible to this tenant")
    return json_response(found.info.to_json(), etag=found.etag)


@router.get("/transports")
async def transports_get(principal: ServicesReader, ctx: Mec011) -> JSONResponse:
    return json_response([t.to_json() for t in ctx.transports])


@router.get("/applications/{appInstanceId}/services")
async def app_services_get(
        appInstanceId: str, principal: OwnServicesReader, ctx: Mec011,
        ser_instance_id: ArrayQuery = None, ser_name: ArrayQuery = None,
        ser_category_id: str | None = None, consumed_local_only: bool | None = None,
        is_local: bool | None = None, scope_of_locality: str | None = None) -> JSONResponse:
    query = check(core.parse_service_query, ser_instance_id, ser_name, ser_category_id,
                  consumed_local_only, is_local, scope_of_locality)
    return _listing(await call(ctx.registry.app_services, appInstanceId), query)


@router.post("/applications/{appInstanceId}/services")
async def app_services_post(request: Request, appInstanceId: str, body: ServiceInfoRequest,
                            principal: OwnServicesWriter, ctx: Mec011) -> JSONResponse:
    info = check(core.check_new_service, body, ctx.transports_by_id(),
                 ctx.registry.new_service_id())
    change = await call(ctx.registry.add_service, appInstanceId, principal.namespace, info,
                        ctx.now())
    assert change.new is not None
    await _announce(ctx, request, change)
    service_id = change.new.info.ser_instance_id or ""
    return json_response(change.new.info.to_json(), 201, etag=change.new.etag,
                         location=_app_service_href(request, appInstanceId, service_id))


@router.get("/applications/{appInstanceId}/services/{serviceId}")
async def app_service_get(appInstanceId: str, serviceId: str, principal: OwnServicesReader,
                          ctx: Mec011) -> JSONResponse:
    found = await call(ctx.registry.app_service, appInstanceId, serviceId)
    return json_response(found.info.to_json(), etag=found.etag)


@router.put("/applications/{appInstanceId}/services/{serviceId}")
async def app_service_put(request: Request, appInstanceId: str, serviceId: str,
                          body: ServiceInfoRequest, principal: OwnServicesWriter, ctx: Mec011,
                          if_match: IfMatch = None) -> JSONResponse:
    info = check(core.check_service_update, body, ctx.transports_by_id(), serviceId)
    change = await call(ctx.registry.replace_service, appInstanceId, serviceId, info,
                        lambda etag: core.if_match_satisfied(if_match, etag), ctx.now())
    assert change.new is not None
    await _announce(ctx, request, change)
    return json_response(change.new.info.to_json(), etag=change.new.etag)


@router.delete("/applications/{appInstanceId}/services/{serviceId}")
async def app_service_delete(request: Request, appInstanceId: str, serviceId: str,
                             principal: OwnServicesWriter, ctx: Mec011) -> Response:
    change = await call(ctx.registry.delete_service, appInstanceId, serviceId)
    await _announce(ctx, request, change)
    return no_content()


@router.get("/applications/{appInstanceId}/services/{serviceId}/liveness")
async def liveness_get(appInstanceId: str, serviceId: str, principal: OwnServicesWriter,
                       ctx: Mec011) -> JSONResponse:
    found = await call(ctx.registry.app_service, appInstanceId, serviceId)
    if not found.liveness_interval:
        raise ProblemError(404, "Not Found", f"service {serviceId!r} was registered "
                           "without livenessInterval: it has no liveness resource")
    return _liveness(found)


@router.patch("/applications/{appInstanceId}/services/{serviceId}/liveness")
async def liveness_patch(request: Request, appInstanceId: str, serviceId: str,
                         body: LivenessUpdate, principal: OwnServicesWriter,
                         ctx: Mec011) -> JSONResponse:
    check(core.check_heartbeat, body.state)
    change = await call(ctx.registry.heartbeat, appInstanceId, serviceId, ctx.now())
    await _announce(ctx, request, change)
    assert change.new is not None
    return _liveness(change.new)


@router.get("/applications/{appInstanceId}/subscriptions")
async def subscriptions_get(request: Request, appInstanceId: str, principal: OwnServicesWriter,
                            ctx: Mec011) -> JSONResponse:
    subs = await call(ctx.registry.subscriptions, API, appInstanceId)
    return json_response(core.subscription_link_list(
        f"{base_url(request)}{PREFIX}/applications/{appInstanceId}/subscriptions",
        (sub.body for sub in subs), core.SER_AVAILABILITY_SUBSCRIPTION))


@router.post("/applications/{appInstanceId}/subscriptions")
async def subscriptions_post(request: Request, appInstanceId: str,
                             body: SerAvailabilityNotificationSubscription,
                             principal: OwnServicesWriter, ctx: Mec011) -> JSONResponse:
    check(core.check_subscription_type, body.subscription_type,
          core.SER_AVAILABILITY_SUBSCRIPTION)
    check(core.check_callback_uri, body.callback_reference)

    def stored_body(subscription_id: str) -> dict[str, object]:
        href = _subscription_href(request, appInstanceId, subscription_id)
        return {**body.to_json(), "_links": {"self": {"href": href}}}
    sub = await call(ctx.registry.add_subscription, API, appInstanceId, principal.namespace,
                     stored_body, ctx.now())
    return json_response(sub.body, 201, location=sub.body["_links"]["self"]["href"])


@router.get("/applications/{appInstanceId}/subscriptions/{subscriptionId}")
async def subscription_get(appInstanceId: str, subscriptionId: str,
                           principal: OwnServicesWriter, ctx: Mec011) -> JSONResponse:
    sub: StoredSubscription = await call(ctx.registry.subscription, API, appInstanceId,
                                         subscriptionId)
    return json_response(sub.body)


@router.delete("/applications/{appInstanceId}/subscriptions/{subscriptionId}")
async def subscription_delete(appInstanceId: str, subscriptionId: str,
                              principal: OwnServicesWriter, ctx: Mec011) -> Response:
    await call(ctx.registry.delete_subscription, API, appInstanceId, subscriptionId)
    return no_content()


answer_other_methods(router)
