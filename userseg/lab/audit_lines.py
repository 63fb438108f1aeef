"""Samba auth-audit log lines with chosen values, for tests, benchmarks and floods.

The shape is a real Samba 4.17 `auth_json_audit` line (kinit against the KDC,
captured in tests/data/events/samba/); only user, address, time and ids vary.
"""

from __future__ import annotations

from datetime import datetime

DOMAIN_SID = "S-1-5-21-2912434476-2553157008-4068195788"


def samba_line(user: str, addr: str, now: datetime, n: int) -> str:
    """A real Samba 4.17 auth_json_audit line (kinit, Kerberos KDC) with these values."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%f+0000")
    ipfield = f"ipv4:{addr}:{40000 + n % 20000}" if ":" not in addr else f"ipv6:{addr}:{40000 + n % 20000}"
    return (
        f'  {{"timestamp": "{stamp}", "type": "Authentication", "Authentication": {{"version": '
        f'{{"major": 1, "minor": 2}}, "eventId": 4624, "logonId": "{n:016x}", "logonType": 3, '
        f'"status": "NT_STATUS_OK", "localAddress": null, "remoteAddress": "{ipfield}", '
        f'"serviceDescription": "Kerberos KDC", "authDescription": "ENC-TS Pre-authentication", '
        f'"clientDomain": null, "clientAccount": "{user}@LAB.EXAMPLE", "workstation": null, '
        f'"becameAccount": "{user}", "becameDomain": "LAB", "becameSid": "{DOMAIN_SID}-{1100 + n % 90000}", '
        f'"mappedAccount": "{user}", "mappedDomain": "LAB", "netlogonComputer": null, '
        f'"netlogonTrustAccount": null, "netlogonNegotiateFlags": "0x00000000", '
        f'"netlogonSecureChannelType": 0, "netlogonTrustAccountSid": null, '
        f'"passwordType": "aes256-cts-hmac-sha1-96", "duration": 7296}}}}\n'
    )
