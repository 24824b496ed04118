"""MEC 011 v2.1.1 application-support data types, written by hand from ``MecAppSupportApi.yaml``."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, StrictInt

from mec_api.mec011.schemas.service_mgmt import LinkType, Model, Self, TimeStamp, _opt, _req


class RuleState(StrEnum):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"


class FilterType(StrEnum):
    FLOW = "FLOW"
    PACKET = "PACKET"


class TrafficAction(StrEnum):
    DROP = "DROP"
    FORWARD_DECAPSULATED = "FORWARD_DECAPSULATED"
    FORWARD_ENCAPSULATED = "FORWARD_ENCAPSULATED"
    PASSTHROUGH = "PASSTHROUGH"
    DUPLICATE_DECAPSULATED = "DUPLICATE_DECAPSULATED"
    DUPLICATE_ENCAPSULATED = "DUPLICATE_ENCAPSULATED"


class InterfaceType(StrEnum):
    TUNNEL = "TUNNEL"
    MAC = "MAC"
    IP = "IP"


class TunnelType(StrEnum):
    GTP_U = "GTP_U"
    GRE = "GRE"


class IpAddressType(StrEnum):
    IP_V6 = "IP_V6"
    IP_V4 = "IP_V4"


class OperationAction(StrEnum):
    STOPPING = "STOPPING"
    TERMINATING = "TERMINATING"


class TimeSourceStatus(StrEnum):
    TRACEABLE = "TRACEABLE"
    NONTRACEABLE = "NONTRACEABLE"


class TrafficFilter(Model):
    src_address: list[str] | None = None
    dst_address: list[str] | None = None
    src_port: list[str] | None = None
    dst_port: list[str] | None = None
    protocol: list[str] | None = None
    token: list[str] | None = None
    src_tunnel_address: list[str] | None = None
    tgt_tunnel_address: list[str] | None = None
    src_tunnel_port: list[str] | None = None
    dst_tunnel_port: list[str] | None = None
    qci: StrictInt | None = _opt("qCI")
    dscp: StrictInt | None = _opt("dSCP")
    tc: StrictInt | None = _opt("tC")


class TunnelInfo(Model):
    tunnel_type: TunnelType
    tunnel_dst_address: str | None = None
    tunnel_src_address: str | None = None


class DestinationInterface(Model):
    interface_type: InterfaceType
    tunnel_info: TunnelInfo | None = None
    src_mac_address: str | None = None
    dst_mac_address: str | None = None
    dst_ip_address: str | None = None


class TrafficRule(Model):
    traffic_rule_id: str
    filter_type: FilterType
    priority: StrictInt
    traffic_filter: list[TrafficFilter]
    action: TrafficAction
    dst_interface: DestinationInterface | None = None
    state: RuleState


class DnsRule(Model):
    dns_rule_id: str
    domain_name: str
    ip_address_type: IpAddressType
    ip_address: str
    ttl: StrictInt | None = None
    state: RuleState


class AppTerminationNotificationSubscription(Model):
    subscription_type: str
    callback_reference: str
    links: Self | None = _opt("_links")
    app_instance_id: str


class AppReadyConfirmation(Model):
    indication: Literal["READY"]


class AppTerminationConfirmation(Model):
    operation_action: OperationAction


class AppTerminationNotificationLinks(Model):
    subscription: LinkType
    confirm_termination: LinkType | None = None


class AppTerminationNotification(Model):
    notification_type: Literal["AppTerminationNotification"] = "AppTerminationNotification"
    operation_action: OperationAction
    max_graceful_timeout: StrictInt
    links: AppTerminationNotificationLinks = _req("_links")


class CurrentTime(Model):
    seconds: StrictInt
    nano_seconds: StrictInt
    time_source_status: TimeSourceStatus


class NtpServer(Model):
    ntp_server_addr_type: Literal["IP_ADDRESS", "DNS_NAME"]
    ntp_server_addr: str
    min_polling_interval: StrictInt = Field(ge=3, le=17)
    max_polling_interval: StrictInt = Field(ge=3, le=17)
    local_priority: StrictInt
    authentication_option: Literal["NONE", "SYMMETRIC_KEY", "AUTO_KEY"]
    authentication_key_num: StrictInt


class TimingCaps(Model):
    time_stamp: TimeStamp | None = None
    ntp_servers: list[NtpServer] | None = None
    ptp_masters: list[dict[str, object]] | None = None
