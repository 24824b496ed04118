"""``mec_app_support/v1``: traffic and DNS rules, termination subscriptions, readiness, timing."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Request
from fastapi.responses import JSONResponse, Response

from mec_api.mec011 import core
from mec_api.mec011.deps import AppSupportCaller, Mec011, OwnAppSupportCaller
from mec_api.mec011.http import (
    Clock,
    answer_other_methods,
    base_url,
    call,
    check,
    json_response,
    no_content,
    optional_body,
    optional_body_doc,
)
from mec_api.mec011.notifier import CallbackNotifier
from mec_api.mec011.schemas.app_support import (
    AppReadyConfirmation,
    AppTerminationConfirmation,
    AppTerminationNotification,
    AppTerminationNotificationLinks,
    AppTerminationNotificationSubscription,
    CurrentTime,
    DnsRule,
    OperationAction,
    TimingCaps,
    TrafficRule,
)
from mec_api.mec011.schemas.service_mgmt import LinkType, TimeStamp
from mec_api.mec011.store.app_support import DNS, TRAFFIC, SqlAppSupport
from mec_api.mec011.store.service_mgmt import SqlServiceRegistry
from mec_api.problems import ProblemRoute

PREFIX = "/mec_app_support/v1"
API = "support"
TRAFFIC_RULES = "/applications/{appInstanceId}/traffic_rules"
DNS_RULES = "/applications/{appInstanceId}/dns_rules"
JsonObject = Annotated[dict[str, Any], Body()]
IfMatch = Annotated[str | None, Header()]
router = APIRouter(prefix=PREFIX, tags=["mec011-app-support"], route_class=ProblemRoute)


def _app_href(request: Request, app: str, tail: str) -> str:
    return f"{base_url(request)}{PREFIX}/applications/{app}/{tail}"


async def _rules(ctx: Mec011, kind: str, app: str) -> JSONResponse:
    return json_response([r.body for r in await call(ctx.support.rules, kind, app)])


async def _rule(ctx: Mec011, kind: str, app: str, rule_id: str) -> JSONResponse:
    rule = await call(ctx.support.rule, kind, app, rule_id)
    return json_response(rule.body, etag=rule.etag)


async def _put_rule(ctx: Mec011, kind: str, app: str, rule_id: str, proposed: dict[str, Any],
                    if_match: str | None, id_field: str) -> JSONResponse:
    def change(current: dict[str, Any]) -> dict[str, Any]:
        return core.check_rule_update(current, proposed, id_field, rule_id)
    rule = await call(ctx.support.update_rule, kind, app, rule_id, change,
                      lambda etag: core.if_match_satisfied(if_match, etag), ctx.now())
    return json_response(rule.body, etag=rule.etag)


@router.get(TRAFFIC_RULES)
async def traffic_rules_get(appInstanceId: str, principal: OwnAppSupportCaller,
                            ctx: Mec011) -> JSONResponse:
    return await _rules(ctx, TRAFFIC, appInstanceId)


@router.get(TRAFFIC_RULES + "/{ruleId}")
async def traffic_rule_get(appInstanceId: str, ruleId: str, principal: OwnAppSupportCaller,
                           ctx: Mec011) -> JSONResponse:
    return await _rule(ctx, TRAFFIC, appInstanceId, ruleId)


@router.put(TRAFFIC_RULES + "/{ruleId}")
async def traffic_rule_put(appInstanceId: str, ruleId: str, body: JsonObject,
                           principal: OwnAppSupportCaller, ctx: Mec011,
                           if_match: IfMatch = None) -> JSONResponse:
    return await _put_rule(ctx, TRAFFIC, appInstanceId, ruleId, _validated(TrafficRule, body),
                           if_match, "trafficRuleId")


@router.get(DNS_RULES)
async def dns_rules_get(appInstanceId: str, principal: OwnAppSupportCaller,
                        ctx: Mec011) -> JSONResponse:
    return await _rules(ctx, DNS, appInstanceId)


@router.get(DNS_RULES + "/{ruleId}")
async def dns_rule_get(appInstanceId: str, ruleId: str, principal: OwnAppSupportCaller,
                       ctx: Mec011) -> JSONResponse:
    return await _rule(ctx, DNS, appInstanceId, ruleId)


@router.put(DNS_RULES + "/{ruleId}")
async def dns_rule_put(appInstanceId: str, ruleId: str, body: JsonObject,
                       principal: OwnAppSupportCaller, ctx: Mec011,
                       if_match: IfMatch = None) -> JSONResponse:
    return await _put_rule(ctx, DNS, appInstanceId, ruleId, _validated(DnsRule, body),
                           if_match, "dnsRuleId")


@router.get("/applications/{appInstanceId}/subscriptions")
async def subscriptions_get(request: Request, appInstanceId: str,
                            principal: OwnAppSupportCaller, ctx: Mec011) -> JSONResponse:
    subs = await call(ctx.registry.subscriptions, API, appInstanceId)
    return json_response(core.subscription_link_list(
        _app_href(request, appInstanceId, "subscriptions"),
        (sub.body for sub in subs), core.APP_TERMINATION_SUBSCRIPTION))


@router.post("/applications/{appInstanceId}/subscriptions")
async def subscriptions_post(request: Request, appInstanceId: str,
                             body: AppTerminationNotificationSubscription,
                             principal: OwnAppSupportCaller, ctx: Mec011) -> JSONResponse:
    check(core.check_subscription_type, body.subscription_type,
          core.APP_TERMINATION_SUBSCRIPTION)
    check(core.check_callback_uri, body.callback_reference)
    if body.app_instance_id != appInstanceId:
        check(_raise_foreign_filter, body.app_instance_id)

    def stored_body(subscription_id: str) -> dict[str, object]:
        href = _app_href(request, appInstanceId, f"subscriptions/{subscription_id}")
        return {**body.to_json(), "_links": {"self": {"href": href}}}
    sub = await call(ctx.registry.add_subscription, API, appInstanceId, principal.namespace,
                     stored_body, ctx.now())
    return json_response(sub.body, 201, location=sub.body["_links"]["self"]["href"])


@router.get("/applications/{appInstanceId}/subscriptions/{subscriptionId}")
async def subscription_get(appInstanceId: str, subscriptionId: str,
                           principal: OwnAppSupportCaller, ctx: Mec011) -> JSONResponse:
    sub = await call(ctx.registry.subscription, API, appInstanceId, subscriptionId)
    return json_response(sub.body)


@router.delete("/applications/{appInstanceId}/subscriptions/{subscriptionId}")
async def subscription_delete(appInstanceId: str, subscriptionId: str,
                              principal: OwnAppSupportCaller, ctx: Mec011) -> Response:
    await call(ctx.registry.delete_subscription, API, appInstanceId, subscriptionId)
    return no_content()


@router.post("/applications/{appInstanceId}/confirm_ready",
             openapi_extra=optional_body_doc(AppReadyConfirmation))
async def confirm_ready(request: Request, appInstanceId: str, principal: OwnAppSupportCaller,
                        ctx: Mec011) -> Response:
    await optional_body(request, AppReadyConfirmation)
    await call(ctx.support.confirm_ready, appInstanceId, ctx.now())
    return no_content()


@router.post("/applications/{appInstanceId}/confirm_termination",
             openapi_extra=optional_body_doc(AppTerminationConfirmation))
async def confirm_termination(request: Request, appInstanceId: str,
                              principal: OwnAppSupportCaller, ctx: Mec011) -> Response:
    body = await optional_body(request, AppTerminationConfirmation)
    await call(ctx.support.confirm_termination, appInstanceId,
               body.operation_action if body else None, ctx.now())
    return no_content()


@router.get("/timing/current_time")
async def current_time(principal: AppSupportCaller, ctx: Mec011) -> JSONResponse:
    stamp = _timestamp(ctx.now())
    return json_response(CurrentTime(seconds=stamp.seconds, nano_seconds=stamp.nano_seconds,
                                     time_source_status=ctx.timing.time_source).to_json())


@router.get("/timing/timing_caps")
async def timing_caps(principal: AppSupportCaller, ctx: Mec011) -> JSONResponse:
    caps = TimingCaps(time_stamp=_timestamp(ctx.now()))
    if ctx.timing.ntp_servers:
        caps.ntp_servers = list(ctx.timing.ntp_servers)
    return json_response(caps.to_json())


answer_other_methods(router)


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
