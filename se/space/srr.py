"""The WLCG Storage Resource Reporting document (SRR, JSON schema 4.2).  Pure.

``{"storageservice": {...}}`` with the service's endpoints (WebDAV over https/davs; the Tape
REST API as ``taperest`` when tape is enabled), one ``storageshares`` entry per share (its
name is what Rucio's ``spacetoken`` and DIRAC match; free = totalsize - usedsize) and the
online and nearline capacities.  The numbers come in from the accounting and the filesystem;
this module only shapes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from se.config import ShareConfig

__all__ = ["Endpoint", "ShareReport", "build_document", "serving_state"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    url: str
    interface: str  # "https" (WebDAV), "taperest"
    version: str = ""
    capabilities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ShareReport:
    share: ShareConfig
    used: int  # bytes, from the accounting
    files: int
    total: int  # bytes: the share's size, else what its filesystem offers
    state: str  # open | closed | draining
    latency: str
    retention: str


def serving_state(share: ShareConfig, total: int, free: int, threshold: float) -> str:
    """What SRR says of a share: the admin's word unless "open"; then draining when less
    than ``threshold`` of ``total`` is ``free`` (0: never)."""
    if share.serving_state != "open":
        return share.serving_state
    if threshold > 0 and total > 0 and free < threshold * total:
        return "draining"
    return "open"


def build_document(
    *,
    implementation_version: str,
    name: str,
    service_id: str,
    quality_level: str,
    endpoints: Sequence[Endpoint],
    shares: Sequence[ShareReport],
    online: tuple[int, int],
    nearline: tuple[int, int] | None,
    now: float,
) -> dict[str, Any]:
    """The SRR document; ``online``/``nearline`` are (total, used) bytes."""
    names = [r.share.name for r in shares]
    ts = int(now)
    service: dict[str, Any] = {
        "name": name,
        "implementation": "se",
        "implementationversion": implementation_version,
        "qualitylevel": quality_level,
        "latestupdate": ts,
    }
    if service_id:
        service["id"] = service_id
    capacity: dict[str, Any] = {"online": {"totalsize": online[0], "usedsize": online[1]}}
    if nearline is not None:
        capacity["nearline"] = {"totalsize": nearline[0], "usedsize": nearline[1]}
    service["storagecapacity"] = capacity
    eps: list[dict[str, Any]] = []
    for ep in endpoints:
        item: dict[str, Any] = {
            "name": ep.name,
            "endpointurl": ep.url,
            "interfacetype": ep.interface,
            "qualitylevel": quality_level,
            "assignedshares": names if ep.interface != "taperest" else _tape_names(shares),
        }
        if ep.version:
            item["interfaceversion"] = ep.version
        if ep.capabilities:
            item["capabilities"] = list(ep.capabilities)
        eps.append(item)
    service["storageendpoints"] = eps
    out = []
    for r in shares:
        assigned = [ep.name for ep in endpoints if ep.interface != "taperest"]
        if r.latency == "nearline":
            assigned += [ep.name for ep in endpoints if ep.interface == "taperest"]
        out.append(
            {
                "name": r.share.name,
                "timestamp": ts,
                "totalsize": r.total,
                "usedsize": r.used,
                "numberoffiles": r.files,
                "vos": list(r.share.vos),
                "path": list(r.share.prefixes),
                "accesslatency": r.latency,
                "retentionpolicy": r.retention,
                "servingstate": r.state,
                "assignedendpoints": assigned,
            }
        )
    service["storageshares"] = out
    return {"storageservice": service}


def _tape_names(shares: Sequence[ShareReport]) -> list[str]:
    return [r.share.name for r in shares if r.latency == "nearline"]
