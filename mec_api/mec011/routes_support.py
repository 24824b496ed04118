"""``mec_app_support/v1``: traffic and DNS rules, termination subscriptions, readiness, timing."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Request
from fastapi.responses import JSONResponse, Response

from mec_api import scopes
from mec_api.mec011 import core
from mec_api.mec011.http import (
    Clock,
    answer_other_methods,
    base_url,
    call,
    check,
    json_response,
    no_content,
    optional_body,
    own_app,
)
from mec_api.mec011.notifier import CallbackNotifier
from mec_api.mec011.schemas import LinkType, TimeStamp
from mec_api.mec011.schemas_support import (
    AppReadyConfirmation,
    AppTerminationConfirmation,
    AppTerminationNotification,
    AppTerminationNotificationLinks,
    AppTerminationNotificationSubscription,
    CurrentTime,
    DnsRule,
    NtpServer,
    OperationAction,
    TimeSourceStatus,
    TimingCaps,
    TrafficRule,
)
from mec_api.mec011.store import SqlServiceRegistry
from mec_api.mec011.store_support import DNS, TRAFFIC, SqlAppSupport
from mec_api.principal import Principal, RouteGuard

PREFIX = "/mec_app_support/v1"
API = "support"


@dataclass(frozen=True)
class TimingConfig:
    # TRACEABLE only when the operator knows the host clock is locked to UTC (NTP/PTP).
    time_source: TimeSourceStatus = TimeSourceStatus.NONTRACEABLE
    ntp_servers: list[NtpServer] = field(default_factory=list)


def build_support_router(support: SqlAppSupport, registry: SqlServiceRegistry,
                         guard: RouteGuard, notifier: CallbackNotifier, now: Clock,
                         timing: TimingConfig) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["mec011-app-support"])
    own = Depends(own_app(guard, scopes.MEC011_APP_SUPPORT))
    any_app = Depends(guard.require(scopes.MEC011_APP_SUPPORT))

    def app_href(request: Request, app: str, tail: str) -> str:
        return f"{base_url(request)}{PREFIX}/applications/{app}/{tail}"

    def rule_routes(kind: str, path: str, id_field: str,
                    model: type[TrafficRule] | type[DnsRule]) -> None:
        @router.get(f"/applications/{{appInstanceId}}/{path}", name=f"{kind}_rules_get")
        async def rules_get(appInstanceId: str,
                            principal: Principal = own) -> JSONResponse:
            return json_response([r.body for r in await call(support.rules, kind, appInstanceId)])

        @router.get(f"/applications/{{appInstanceId}}/{path}/{{ruleId}}",
                    name=f"{kind}_rule_get")
        async def rule_get(appInstanceId: str, ruleId: str,
                           principal: Principal = own) -> JSONResponse:
            rule = await call(support.rule, kind, appInstanceId, ruleId)
            return json_response(rule.body, etag=rule.etag)

        @router.put(f"/applications/{{appInstanceId}}/{path}/{{ruleId}}",
                    name=f"{kind}_rule_put")
        async def rule_put(appInstanceId: str, ruleId: str,
                           body: Annotated[dict[str, Any], Body()],
                           if_match: Annotated[str | None, Header()] = None,
                           principal: Principal = own) -> JSONResponse:
            proposed = _validated(model, body)

            def change(current: dict[str, Any]) -> dict[str, Any]:
                return core.check_rule_update(current, proposed, id_field, ruleId)
            rule = await call(support.update_rule, kind, appInstanceId, ruleId, change,
                              lambda etag: core.if_match_satisfied(if_match, etag), now())
            return json_response(rule.body, etag=rule.etag)

    rule_routes(TRAFFIC, "traffic_rules", "trafficRuleId", TrafficRule)
    rule_routes(DNS, "dns_rules", "dnsRuleId", DnsRule)

    @router.get("/applications/{appInstanceId}/subscriptions")
    async def subscriptions_get(request: Request, appInstanceId: str,
                                principal: Principal = own) -> JSONResponse:
        subs = await call(registry.subscriptions, API, appInstanceId)
        return json_response(core.subscription_link_list(
            app_href(request, appInstanceId, "subscriptions"),
            (sub.body for sub in subs), core.APP_TERMINATION_SUBSCRIPTION))

    @router.post("/applications/{appInstanceId}/subscriptions")
    async def subscriptions_post(request: Request, appInstanceId: str,
                                 body: AppTerminationNotificationSubscription,
                                 principal: Principal = own) -> JSONResponse:
        check(core.check_subscription_type, body.subscription_type,
              core.APP_TERMINATION_SUBSCRIPTION)
        check(core.check_callback_uri, body.callback_reference)
        if body.app_instance_id != appInstanceId:
            check(_raise_foreign_filter, body.app_instance_id)

        def stored_body(subscription_id: str) -> dict[str, object]:
            href = app_href(request, appInstanceId, f"subscriptions/{subscription_id}")
            return {**body.to_json(), "_links": {"self": {"href": href}}}
        sub = await call(registry.add_subscription, API, appInstanceId, principal.namespace,
                         stored_body, now())
        return json_response(sub.body, 201, location=sub.body["_links"]["self"]["href"])

    @router.get("/applications/{appInstanceId}/subscriptions/{subscriptionId}")
    async def subscription_get(appInstanceId: str, subscriptionId: str,
                               principal: Principal = own) -> JSONResponse:
        sub = await call(registry.subscription, API, appInstanceId, subscriptionId)
        return json_response(sub.body)

    @router.delete("/applications/{appInstanceId}/subscriptions/{subscriptionId}")
    async def subscription_delete(appInstanceId: str, subscriptionId: str,
                                  principal: Principal = own) -> Response:
        await call(registry.delete_subscription, API, appInstanceId, subscriptionId)
        return no_content()

    @router.post("/applications/{appInstanceId}/confirm_ready")
    async def confirm_ready(request: Request, appInstanceId: str,
                            principal: Principal = own) -> Response:
        await optional_body(request, AppReadyConfirmation)
        await call(support.confirm_ready, appInstanceId, now())
        return no_content()

    @router.post("/applications/{appInstanceId}/confirm_termination")
    async def confirm_termination(request: Request, appInstanceId: str,
                                  principal: Principal = own) -> Response:
        body = await optional_body(request, AppTerminationConfirmation)
        await call(support.confirm_termination, appInstanceId,
                   body.operation_action if body else None, now())
        return no_content()

    @router.get("/timing/current_time")
    async def current_time(principal: Principal = any_app) -> JSONResponse:
        stamp = _timestamp(now())
        return json_response(CurrentTime(seconds=stamp.seconds, nano_seconds=stamp.nano_seconds,
                                         time_source_status=timing.time_source).to_json())

    @router.get("/timing/timing_caps")
    async def timing_caps(principal: Principal = any_app) -> JSONResponse:
        caps = TimingCaps(time_stamp=_timestamp(now()))
        if timing.ntp_servers:
            caps.ntp_servers = list(timing.ntp_servers)
        return json_response(caps.to_json())

    answer_other_methods(router)
    return router


def _timestamp(moment: Any) -> TimeStamp:
    return TimeStamp(seconds=int(moment.timestamp()), nano_seconds=moment.microsecond * 1000)


def _validated(model: type[TrafficRule] | type[DnsRule], body: dict[str, Any]) -> dict[str, Any]:
    from pydantic import ValidationError

    from mec_api.problems import ProblemError
    try:
        return model.model_validate(body).to_json()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ProblemError(400, "Bad Request",
                           f"the body is not a {model.__name__}: "
                           f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


def _raise_foreign_filter(app_instance_id: str) -> None:
    raise core.InvalidSubscription(
        "subscription-app-instance",
        f"appInstanceId {app_instance_id!r} in the body must be the path's appInstanceId: an "
        "app subscribes to its own termination only")


async def notify_termination(support: SqlAppSupport, registry: SqlServiceRegistry,
                             notifier: CallbackNotifier, public_base: str, app_instance_id: str,
                             action: OperationAction, max_graceful_timeout_s: int,
                             now: Clock) -> int:
    """Platform side (MEPM role): tell an app it will be stopped/terminated, e.g. because its
    node lost its attestation. Returns how many subscriptions were notified."""
    moment = now()
    await call(support.begin_termination, app_instance_id, action,
               moment + timedelta(seconds=max_graceful_timeout_s))
    subs = await call(registry.subscriptions, API, app_instance_id)
    confirm = f"{public_base.rstrip('/')}{PREFIX}/applications/{app_instance_id}" \
              "/confirm_termination"
    for sub in subs:
        notifier.submit(sub.body["callbackReference"], AppTerminationNotification(
            operation_action=action, max_graceful_timeout=max_graceful_timeout_s,
            links=AppTerminationNotificationLinks(
                subscription=LinkType(href=sub.body["_links"]["self"]["href"]),
                confirm_termination=LinkType(href=confirm))).to_json())
    return len(subs)
