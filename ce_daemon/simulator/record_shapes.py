"""The shapes of simulated Netskope records: value pools and the fields of each subtype.

Internal to `ce_daemon.simulator.records`. Everything here runs once per `RecordFactory`, from a
seeded RNG; the per-record work is in `records`. Some values deliberately carry unicode, ``|``,
``=``, ``\\`` and newlines (CEF and LEEF must escape them), and some profiles omit optional fields,
as real tenants do.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ce_daemon.netskope.subtypes import ALERT_DISPLAY_NAMES

Record = dict[str, Any]

POOL_SIZE = 64
"""Profiles per pool: users, apps, and variants of each subtype."""

_SEVERITIES = ("low", "medium", "high", "critical", "informational")
_FIRST = ("ana", "bruno", "chen", "dmitri", "elif", "fatima", "gabriel", "hana", "ivan", "jürgen", "zoë")
_LAST = ("silva", "okafor", "wang", "petrov", "yilmaz", "haddad", "martin", "sato", "novak", "weiß")
_OUS = ("/Engineering", "/Finance/Payables", "/Sales/EMEA", "/R&D | Labs", "/Support")
_DEVICES = (
    ("Windows Device", "Windows 11", "Chrome"),
    ("Mac Device", "macOS 14.4", "Safari"),
    ("Windows Device", "Windows 10", "Edge"),
    ("iPhone", "iOS 17.4", "Native"),
    ("Linux Device", "Ubuntu 22.04", "Firefox"),
)
_LOCATIONS = (
    ("US", "San Jose", "California"),
    ("GB", "London", "England"),
    ("DE", "München", "Bayern"),
    ("JP", "Tokyo", "Tokyo"),
    ("BR", "São Paulo", "São Paulo"),
)
_APPS = (
    ("Dropbox", "Cloud Storage", "www.dropbox.com/home/Shared"),
    ("Google Drive", "Cloud Storage", "drive.google.com/drive/u/0/folders"),
    ("Microsoft OneDrive for Business", "Cloud Storage", "contoso-my.sharepoint.com/personal"),
    ("Slack", "Collaboration", "app.slack.com/client/T024BE7LD"),
    ("Salesforce", "CRM", "na139.salesforce.com/lightning/r/Account"),
    ("Box", "Cloud Storage", "app.box.com/folder/0"),
    ("GitHub", "Development Tools", "github.com/acme/payments/blob/main/config.yml"),
    ("ChatGPT", "Generative AI", "chat.openai.com/c/4f1c"),
    ("Gmail", "Webmail", "mail.google.com/mail/u/0/#inbox"),
    ("WeTransfer", "Cloud Storage", "wetransfer.com/downloads?token=a=b"),
    ("Amazon Web Services", "IaaS/PaaS", "console.aws.amazon.com/s3/buckets"),
    ("Zoom", "Collaboration", "zoom.us/j/93012345678"),
)
_ACTIVITIES = ("Upload", "Download", "Share", "Edit", "Login Successful", "Browse", "Delete", "Post")
_ACTIONS = ("alert", "block", "allow", "useralert", "bypass")
_POLICIES = (
    "Block uploads to personal instances",
    "DLP - PCI=strict",
    "Allow | Audit unmanaged devices",
    "Coach users\\GenAI",
    "Default Web Policy",
)
_FILES = (
    ("Q3 forecast.xlsx", "xlsx", "C:\\Users\\jdoe\\Documents\\Q3 forecast.xlsx"),
    ("résumé (final).docx", "docx", "/Users/zoe/Desktop/résumé (final).docx"),
    ("отчёт.pdf", "pdf", "/home/ivan/Документы/отчёт.pdf"),
    ("customers.csv", "csv", "C:\\exports\\customers.csv"),
    ("setup|v2.exe", "exe", "D:\\tools\\setup|v2.exe"),
)


IdFields = tuple[tuple[str, int], ...]
Finish = Callable[[Record, int, int], None]

# (field name, bit shift): 64-bit ids drawn from the record's own hash bits.
_NET_IDS: IdFields = (("transaction_id", 0), ("request_id", 9), ("app_session_id", 17), ("connection_id", 25))


@dataclass(frozen=True, slots=True)
class Variant:
    """The subtype-specific part of a record, plus what must be fresh per record."""

    fields: Record
    id_fields: IdFields = _NET_IDS
    finish: Finish | None = None


def _ip(rng: random.Random, private: bool) -> str:
    if private:
        return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    first = rng.choice((13, 20, 34, 52, 104, 142, 151, 185))
    return f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def user_pool(rng: random.Random, tenant: str) -> list[Record]:
    pool = []
    for n in range(POOL_SIZE):
        name = f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}"
        user = f"{name}@{tenant}.example.com"
        device, os_name, browser = rng.choice(_DEVICES)
        country, city, region = rng.choice(_LOCATIONS)
        profile: Record = {
            "user": user,
            "ur_normalized": user.lower(),
            "srcip": _ip(rng, private=False),
            "device": device,
            "os": os_name,
            "browser": browser,
            "src_country": country,
            "src_location": city,
            "src_region": region,
        }
        # Real tenants leave these out for some users (API connectors, unmanaged devices).
        if n % 5:
            profile["userip"] = _ip(rng, private=True)
        if n % 7:
            profile["organization_unit"] = rng.choice(_OUS)
        pool.append(profile)
    return pool


def app_pool(rng: random.Random) -> list[Record]:
    pool = []
    for n, (app, category, path) in enumerate(_APPS * 4):
        profile: Record = {
            "app": app,
            "appcategory": category,
            "category": category,
            "site": app.split()[0].lower(),
            "hostname": path.split("/", 1)[0],
            "dstip": _ip(rng, private=False),
            "dst_country": rng.choice(_LOCATIONS)[0],
            "cci": rng.randrange(30, 100),
            "ccl": rng.choice(("low", "medium", "high", "excellent")),
            "access_method": rng.choice(("Client", "Reverse Proxy", "API Connector", "Secure Forwarder")),
            "traffic_type": "CloudApp",
        }
        if n % 6:
            profile["url"] = f"https://{path}"
        if n % 4 == 0:
            profile["instance_id"] = f"{profile['site']}-{rng.randrange(1000, 9999)}"
        pool.append(profile)
    return pool


def _policy_fields(rng: random.Random) -> Record:
    file_name, file_type, _ = rng.choice(_FILES)
    return {
        "activity": rng.choice(_ACTIVITIES),
        "action": rng.choice(_ACTIONS),
        "policy": rng.choice(_POLICIES),
        "severity": rng.choice(_SEVERITIES),
        "object": file_name,
        "object_type": "File",
        "file_type": file_type,
        "file_size": rng.randrange(200, 50_000_000),
    }


# -- alert shapes: the fields each alert subtype adds to the policy fields ---------------------


def _malware(rng: random.Random) -> Record:
    md5, sha256 = rng.randbytes(16).hex(), rng.randbytes(32).hex()
    family = rng.choice(("Trojan.GenericKD", "W97M.Downloader", "Ransom.LockBit", "EICAR-Test-File"))
    return {
        "alert_name": f"{family} detected",
        "malware_name": family,
        "malware_type": rng.choice(("Trojan", "Virus", "Ransomware", "Adware")),
        "malware_id": rng.randbytes(8).hex(),
        "md5": md5,
        "sha256": sha256,
        "local_md5": md5,
        "local_sha256": sha256,
        "detection_engine": rng.choice(("Netskope AV", "Sandbox", "ML Engine")),
        "file_path": rng.choice(_FILES)[2],
    }


def _malsite(rng: random.Random) -> Record:
    category = rng.choice(("Phishing", "Malware Distribution", "Command and Control", "Spam URLs"))
    host = f"{rng.choice(('login-micros0ft', 'secure-paypa1', 'cdn-update', 'docs-share'))}.example.net"
    return {
        "alert_name": f"Malsite: {category}",
        "malsite_category": category,
        "severity_level": rng.randrange(1, 6),
        "malsite_id": rng.randbytes(6).hex(),
        "url": f"http://{host}/verify?session={rng.randrange(10**6)}",
        "dsthost": host,
        "malsite_country": rng.choice(_LOCATIONS)[0],
        "threat_match_field": "url",
    }


def _dlp(rng: random.Random) -> Record:
    profile = rng.choice(("PCI-DSS", "PII | GDPR", "Source Code", "HIPAA=PHI"))
    return {
        "alert_name": f"DLP violation: {profile}",
        "dlp_profile": profile,
        "dlp_rule": rng.choice(("Credit Card Number", "IBAN", "Passport Number", "AWS Secret Key")),
        "dlp_rule_severity": rng.choice(_SEVERITIES[:4]),
        "dlp_rule_count": rng.randrange(1, 400),
        "dlp_file": rng.choice(_FILES)[0],
        "dlp_is_unique_count": rng.choice(("true", "false")),
    }


def _compromised_credential(rng: random.Random) -> Record:
    return {
        "alert_name": "Compromised credential found",
        "breach_id": rng.randbytes(8).hex(),
        "breach_date": rng.randrange(1_500_000_000, 1_700_000_000),
        "breach_score": rng.randrange(1, 100),
        "breach_target_references": rng.choice(("linkedin.com", "adobe.com", "unknown paste site")),
        "email_source": rng.choice(("Breach Database", "Dark Web Monitoring")),
    }


def _security_assessment(rng: random.Random) -> Record:
    return {
        "alert_name": rng.choice(("S3 bucket is public", "MFA not enabled on root account")),
        "sa_profile_name": rng.choice(("CIS AWS 1.4", "Azure Security Benchmark")),
        "sa_rule_name": rng.choice(("Ensure MFA is enabled", "Block public access=on")),
        "sa_rule_severity": rng.choice(_SEVERITIES[:4]),
        "compliance_standards": "CIS | NIST 800-53",
        "account_id": str(rng.randrange(10**11, 10**12)),
        "region_name": rng.choice(("us-east-1", "eu-central-1", "ap-northeast-1")),
        "resource_category": rng.choice(("Storage", "IAM", "Compute")),
        "asset_id": f"arn:aws:s3:::bucket-{rng.randrange(1000)}",
    }


def _uba(rng: random.Random) -> Record:
    score = rng.randrange(0, 1001)
    return {
        "type": "anomaly",
        "alert_name": rng.choice(("Data exfiltration\nto personal instance", "Bulk file download")),
        "score": score,
        "risk_level": _SEVERITIES[min(score // 250, 3)],
        "threshold": rng.randrange(10, 200),
        "bucket_size": rng.choice((600, 3600, 86400)),
        # the fields CE's own mapping files read from UBA alerts (under keys such as uba_inst1)
        "event_type": rng.choice(("Data Exfiltration", "Bulk Download", "Rare Event")),
        "policy_name": rng.choice(_POLICIES),
        "policy_actions": rng.sample(_ACTIONS, 2),
        "md5_list": [rng.randbytes(16).hex() for _ in range(rng.randrange(1, 4))],
        "uba_inst1": rng.choice(("corp-tenant", "example.onmicrosoft.com")),
        "uba_inst2": rng.choice(("personal", "gmail.com")),
        "uba_ap1": rng.choice(("Box", "Microsoft OneDrive for Business")),
        "uba_ap2": rng.choice(("Dropbox", "Google Drive")),
    }


def _ctep(rng: random.Random) -> Record:
    return {
        "alert_name": rng.choice(("Exploit attempt blocked", "C2 beacon detected")),
        "signature_id": str(rng.randrange(10**9, 10**12)),
        "threat_name": rng.choice(("CVE-2021-44228 Log4Shell", "Cobalt Strike beacon")),
        "srcport": rng.randrange(1024, 65536),
        "dstport": rng.choice((80, 443, 8080)),
    }


def _quarantine(rng: random.Random) -> Record:
    file_name = rng.choice(_FILES)[0]
    return {
        "alert_name": "File quarantined",
        "quarantine_profile": rng.choice(("Default quarantine", "Legal=Hold area")),
        "q_original_filename": file_name,
        "q_app": rng.choice(("Box", "Google Drive")),
        "quarantine_file_name": f"{rng.randbytes(4).hex()}_{file_name}",
    }


def _remediation(rng: random.Random) -> Record:
    return {
        "alert_name": "Public share revoked",
        "remediation_action": rng.choice(("Revoke access", "Change owner", "Quarantine")),
        "to_user": f"external.{rng.randrange(100)}@gmail.com",
        "from_user": f"owner.{rng.randrange(100)}@example.com",
    }


def _device(rng: random.Random) -> Record:
    return {
        "alert_name": "Unmanaged device detected",
        "device_classification": rng.choice(("managed", "unmanaged", "unknown")),
        "serial_number": rng.randbytes(5).hex().upper(),
        "device_id": rng.randbytes(8).hex(),
    }


def _content(rng: random.Random) -> Record:
    file_name, _, file_path = rng.choice(_FILES)
    return {
        "alert_name": "Content policy match",
        "content_scan_type": rng.choice(("Inline", "API")),
        "file_name": file_name,
        "file_path": file_path,
    }


def _policy(rng: random.Random) -> Record:
    return {"alert_name": rng.choice(_POLICIES)}


def _watchlist(rng: random.Random) -> Record:
    return {
        "alert_name": rng.choice(_POLICIES),
        "watchlist_name": rng.choice(("Departing employees", "Contractors")),
    }


_ALERT_SHAPES: dict[str, tuple[Callable[[random.Random], Record], IdFields]] = {
    "compromisedcredential": (_compromised_credential, _NET_IDS),
    "ctep": (_ctep, _NET_IDS),
    "dlp": (_dlp, (*_NET_IDS, ("dlp_incident_id", 31), ("dlp_parent_id", 33))),
    "malsite": (_malsite, _NET_IDS),
    "malware": (_malware, _NET_IDS),
    "policy": (_policy, _NET_IDS),
    "quarantine": (_quarantine, _NET_IDS),
    "remediation": (_remediation, _NET_IDS),
    "securityassessment": (_security_assessment, ()),
    "uba": (_uba, ()),
    "watchlist": (_watchlist, _NET_IDS),
    "device": (_device, ()),
    "content": (_content, _NET_IDS),
}


def alert_variant(rng: random.Random, subtype: str) -> Variant:
    build, id_fields = _ALERT_SHAPES[subtype]
    fields: Record = {
        "type": "nspolicy",
        "alert": "yes",
        "alert_type": ALERT_DISPLAY_NAMES[subtype],
        "acked": "false",
        **_policy_fields(rng),
    }
    fields |= build(rng)
    fields.setdefault("policy_action", fields["action"])
    return Variant(fields, id_fields)


# -- event shapes ------------------------------------------------------------------------------
# Values derived from the timestamp, and nested dicts, are set per record by a `finish` function;
# nested dicts are fresh so that a consumer mutating one record touches no other.


def _page(rng: random.Random) -> Record:
    return {
        "numbytes": rng.randrange(200, 5_000_000),
        "client_bytes": rng.randrange(100, 20_000),
        "server_bytes": rng.randrange(100, 5_000_000),
        "useragent": rng.choice(("Mozilla/5.0 (Windows NT 10.0; Win64; x64)", "curl/8.4.0")),
        "dstport": 443,
        "http_status": rng.choice((200, 204, 302, 403, 404)),
    }


def _page_times(record: Record, bits: int, timestamp: int) -> None:
    duration = bits >> 80 & 0xFF
    record["page_starttime"] = timestamp - duration
    record["page_endtime"] = timestamp
    record["page_duration"] = duration


def _application(rng: random.Random) -> Record:
    return {"type": "nspolicy", **_policy_fields(rng)}


def _audit(rng: random.Random) -> Record:
    return {
        "type": "admin_audit_logs",
        "audit_log_event": rng.choice(("Login Successful", "Edit Policy", "Apply Changes", "Delete=User")),
        "severity_level": rng.randrange(1, 6),
    }


def _audit_data(record: Record, bits: int, timestamp: int) -> None:
    record["supporting_data"] = {"data_type": "policy", "data_values": [_POLICIES[bits >> 48 & 3]]}


def _infrastructure(rng: random.Random) -> Record:
    return {
        "alarm_name": rng.choice(("Publisher down", "Tunnel flap", "Certificate expiry")),
        "alarm_description": "Publisher lost contact with the Netskope cloud | code=7",
        "device": f"publisher-{rng.randrange(20)}",
        "severity": rng.choice(_SEVERITIES),
    }


def _infrastructure_data(record: Record, bits: int, timestamp: int) -> None:
    record["supporting_data"] = {
        "data_type": "publisher",
        "data_values": [f"publisher-{bits >> 48 & 0xFF}", "Connection lost\nretrying"],
    }


def _network(rng: random.Random) -> Record:
    return {
        "ip_protocol": rng.choice(("TCP", "UDP")),
        "dstport": rng.choice((22, 53, 443, 3389, 5432)),
        "srcport": rng.randrange(1024, 65536),
        "client_bytes": rng.randrange(100, 100_000),
        "server_bytes": rng.randrange(100, 10_000_000),
        "total_packets": rng.randrange(2, 20_000),
        "publisher_name": f"publisher-{rng.randrange(20)}",
        "action": rng.choice(("allow", "block")),
    }


def _connection(rng: random.Random) -> Record:
    return {"dstport": 443, "numbytes": rng.randrange(200, 9_000_000)}


def _connection_times(record: Record, bits: int, timestamp: int) -> None:
    duration = bits >> 80 & 0xFFF
    record["conn_starttime"] = timestamp - duration
    record["conn_endtime"] = timestamp
    record["conn_duration"] = duration
    record["srcport"] = 1024 + (bits >> 40 & 0xEFFF)


def _endpoint(rng: random.Random) -> Record:
    file_name, _, file_path = rng.choice(_FILES)
    return {
        "event_type": rng.choice(("USB write", "Process start", "Clipboard copy")),
        "action": rng.choice(("block", "allow", "alert")),
        "file_path": file_path,
        "process_name": rng.choice(("explorer.exe", "chrome.exe", "python3")),
        "pid": rng.randrange(100, 60_000),
        "process_cert_subject": "CN=Microsoft Windows, O=Microsoft Corporation, L=Redmond",
        "object": file_name,
    }


def _client_status(rng: random.Random) -> Record:
    return {
        "client_version": rng.choice(("118.1.0.1822", "120.0.5.1961")),
        "status": rng.choice(("Enabled", "Disabled", "Upgrade failed")),
        "event_type": rng.choice(("Tunnel Up", "Tunnel Down", "Client Installed")),
    }


def _client_status_info(record: Record, bits: int, timestamp: int) -> None:
    # A device is one of each user's two (from the bits that pick the user), so a device recurs across
    # records under one host id (``device_id``, CE's key of its Devices entity) and one host name.
    device = (bits % POOL_SIZE) * 2 + (bits >> 12 & 1)
    serial = f"{device * 0x9E3779 & 0xFFFFFF:06X}"
    record["device_id"] = f"{serial}-{device:04d}"
    record["host_info"] = {
        "hostname": f"LAPTOP-{serial}",
        "nsdeviceuid": f"{device * 0x2545F491 & 0xFFFFFFFF:08X}-NSD-{serial}",
        "os": record.get("os", "Windows 11"),
        "device_make": ("Dell Inc.", "Apple", "Lenovo")[device % 3],
        "device_model": ("Latitude 7440", "MacBook Pro", "ThinkPad X1")[device % 3],
        "serial_number": serial,
        "mac_addresses": [f"02:00:{device >> 8 & 0xFF:02x}:{device & 0xFF:02x}:5e:01"],
        "last_update_timestamp": timestamp,
    }
    record["user_info"] = {
        "username": record["user"],
        "userkey": f"{bits >> 70 & 0xFFFFFF:x}",
        "device_classification_status": ("managed", "unmanaged")[bits >> 3 & 1],
    }
    record["client_install_time"] = timestamp - (bits >> 64 & 0xFFFFF)


def _incident(rng: random.Random) -> Record:
    return {
        "status": rng.choice(("new", "in_progress", "resolved")),
        "assignee": rng.choice(("soc-l1@example.com", "", "María Núñez")),
        "severity": rng.choice(_SEVERITIES[:4]),
        "object_id": rng.randbytes(8).hex(),
    }


_EVENT_SHAPES: dict[str, tuple[Callable[[random.Random], Record], IdFields, Finish | None]] = {
    "page": (_page, _NET_IDS, _page_times),
    "application": (_application, _NET_IDS, None),
    "audit": (_audit, (), _audit_data),
    "infrastructure": (_infrastructure, (), _infrastructure_data),
    "network": (_network, (("network_session_id", 3), ("connection_id", 25)), None),
    "connection": (_connection, _NET_IDS, _connection_times),
    "endpoint": (_endpoint, (), None),
    "clientstatus": (_client_status, (), _client_status_info),
    "incident": (_incident, (("incident_id", 1), ("dlp_incident_id", 31)), None),
}


def event_variant(rng: random.Random, subtype: str, tenant: str) -> Variant:
    build, id_fields, finish = _EVENT_SHAPES[subtype]
    fields: Record = {"type": subtype, "record_type": subtype, **build(rng)}
    if subtype == "audit":
        fields["url"] = f"https://{tenant}.goskope.com/ns#/settings"
    return Variant(fields, id_fields, finish)
