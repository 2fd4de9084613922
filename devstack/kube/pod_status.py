"""Writing a pod's status conditions, shared by the scheduler (PodScheduled) and the kubelet (the rest)."""

from __future__ import annotations

from .store import Obj, now_iso


def set_condition(p: Obj, type_: str, status: str, reason: str | None = None, message: str | None = None) -> None:
    conds = p["status"].setdefault("conditions", [])
    for cond in conds:
        if cond["type"] == type_:
            if cond["status"] != status:
                cond["lastTransitionTime"] = now_iso()
            cond["status"] = status
            for k, v in (("reason", reason), ("message", message)):
                if v:
                    cond[k] = v
                else:
                    cond.pop(k, None)
            return
    cond = {"type": type_, "status": status, "lastProbeTime": None, "lastTransitionTime": now_iso()}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    conds.append(cond)
