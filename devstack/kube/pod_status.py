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


def update_ready(p: Obj) -> None:
    """ContainersReady and Ready from containerStatuses[].ready and spec.readinessGates, as
    pkg/kubelet/status/generate.go GenerateContainersReadyCondition / GeneratePodReadyCondition word them."""
    if p["status"].get("phase") in ("Succeeded", "Failed"):
        return  # _complete / _terminated wrote PodCompleted / ContainersNotReady
    statuses = {st["name"]: st for st in p["status"].get("containerStatuses") or []}
    unready = [c["name"] for c in p["spec"].get("containers") or [] if not statuses.get(c["name"], {}).get("ready")]
    if unready:
        message = f"containers with unready status: [{' '.join(unready)}]"
        set_condition(p, "ContainersReady", "False", "ContainersNotReady", message)
        set_condition(p, "Ready", "False", "ContainersNotReady", message)
        return
    set_condition(p, "ContainersReady", "True")
    conds = {c["type"]: c for c in p["status"].get("conditions") or []}
    problems = []
    for gate in p["spec"].get("readinessGates") or []:
        cond = conds.get(gate.get("conditionType", ""))
        if cond is None:
            problems.append(f'corresponding condition of pod readiness gate "{gate.get("conditionType")}" '
                            "does not exist.")
        elif cond.get("status") != "True":
            problems.append(f'the status of pod readiness gate "{gate.get("conditionType")}" is not "True", '
                            f'but {cond.get("status")}')
    if problems:
        set_condition(p, "Ready", "False", "ReadinessGatesNotReady", ", ".join(problems))
    else:
        set_condition(p, "Ready", "True")
