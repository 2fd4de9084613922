"""Failure and rollback notifications of the deploy DAG: a JSON POST through the http provider's HttpNotifier.

``models[].notify`` (config/model.py) names an Airflow HTTP connection and an endpoint on its host. Then

- every deploy task gets an ``on_failure_callback`` (``failure``): a step that failed for good (after its
  retries; a skip is no failure) posts the model, the version, the step, its error and what to do;
- the ``rollback`` task gets an ``on_success_callback`` (``rollback``): the candidate was rolled back and
  the previously promoted version serves again. Airflow calls it only when the task succeeded, i.e. the
  rollback pod really ran and exited 0; a skipped rollback (nothing was loaded) runs
  ``on_skipped_callback`` instead (Task SDK 1.3 ``task_runner.finalize``).

Both run in the task's own runner process after its state is decided (for a deferred task: after it
resumes on a worker), so they see the task's exception and can read XCom. Composing the message is the
pure :func:`failure_notice` / :func:`rollback_notice` (a :class:`Notice` record); only
:func:`notice_from_context` reads the Airflow context. A notification that cannot be sent is a warning in
the task log: it never changes or hides the task's own outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.providers.http.notifications.http import HttpNotifier

if TYPE_CHECKING:
    from triton_rollout.config import ModelDeployment

log = logging.getLogger(__name__)

SOURCE = "triton-rollout"
FAILURE = "failure"
ROLLBACK = "rollback"
WHAT_TO_DO = "what to do:"  # how every project error ends its message (errors.RolloutError, operators.py)
ROLLBACK_TASK = "rollback"
CANDIDATE_STEPS = ("load", "smoke", "promote")  # the failures that trigger the rollback task
# Airflow's own fallback for links when [api] base_url is unset (task_runner's RuntimeTaskInstance.log_url).
DEFAULT_BASE_URL = "http://localhost:8080"
MAX_ERROR_CHARS = 4000  # chat webhooks cap a message's size; the task log keeps the whole error
SEND_TIMEOUT_S = 10.0  # requests has no default timeout: a silent webhook must not hold the task runner

# What to do when the error itself does not say (project errors and step pods always do).
STEP_HINTS: dict[str, str] = {
    "wait_for_release": "check the run's conf (the error names the key) and the S3 connection, then trigger again",
    "resolve": "check the version param and that the release's manifest.json exists under the model's release "
               "prefix; deploying an older version than Triton serves needs allow_downgrade=true",
    "build_engine": "read the build_engine log (build spec, GPU pool, checkpoint); the previous version keeps serving",
    "sync": "read the sync log (S3 access, PVC space); nothing was published, the previous version keeps serving",
    "load": "the rollback task puts the previous version back; read the load log, fix the release, publish a new one",
    "smoke": "the rollback task puts the previous version back; read the smoke log, fix the release, publish a new one",
    "promote": "the rollback task puts the previous version back; read the promote log and the PVC's state/ folder",
    "rollback": "the rollback itself failed: check what Triton serves now (`python -m triton_rollout status`) "
                "and run the reconcile DAG",
    "announce": "the version was promoted but is not ready: run the reconcile DAG or read the Triton log",
}
DEFAULT_HINT = "read the task log (link below)"


@dataclass(frozen=True)
class Notice:
    """One notification. ``version``: the release the run deployed (None before it was resolved);
    ``serving_version``: for a rollback, the version that serves again (None: none was promoted before);
    ``failed_step``: for a rollback, which candidate step failed."""

    event: str
    model: str
    version: int | None
    dag_id: str
    run_id: str
    step: str
    error: str | None
    what_to_do: str
    run_url: str
    log_url: str
    try_number: int | None = None
    serving_version: int | None = None
    failed_step: str | None = None

    @property
    def text(self) -> str:
        """One readable message (the field chat webhooks such as Slack's display)."""
        v = f" v{self.version}" if self.version is not None else ""
        if self.event == ROLLBACK:
            serving = (f"v{self.serving_version} serves again" if self.serving_version is not None
                       else "no version was promoted before, so the candidate was unloaded")
            why = f" after {self.failed_step} failed" if self.failed_step else ""
            head = f"{self.model}{v} was rolled back{why}: {serving}."
        else:
            first = (self.error or "no error message").splitlines()[0]
            head = f"{self.model}{v}: {self.step} failed: {first}"
        return f"[{SOURCE}] {head}\nWhat to do: {self.what_to_do}\nRun: {self.run_url}"

    def to_json(self) -> dict[str, Any]:
        return {"source": SOURCE, **asdict(self), "text": self.text,
                "sent_at": datetime.now(UTC).isoformat(timespec="seconds")}


# -- composing (pure) -----------------------------------------------------------------------------------

def split_what_to_do(message: str) -> tuple[str, str | None]:
    """(the error without its what-to-do line, the hint) from a message that ends like every project error:
    ``<error>\\n  what to do: <hint>`` (lines after the hint, e.g. "a retry cannot change that", stay in
    the error)."""
    lines = message.strip().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(WHAT_TO_DO):
            hint = line.strip()[len(WHAT_TO_DO):].strip()
            rest = [part.strip() for part in lines[:i] + lines[i + 1:] if part.strip()]
            return "\n".join(rest), hint or None
    return message.strip(), None


def run_url(base_url: str, dag_id: str, run_id: str) -> str:
    """The run in the Airflow 3 UI (the route RuntimeTaskInstance.log_url also builds on)."""
    return f"{base_url.rstrip('/')}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def task_url(base_url: str, dag_id: str, run_id: str, task_id: str, try_number: int | None = None) -> str:
    url = f"{run_url(base_url, dag_id, run_id)}/tasks/{quote(task_id, safe='')}"
    return f"{url}?try_number={try_number}" if try_number else url


def failure_notice(*, model: str, step: str, error: BaseException | str | None, version: int | None,
                   dag_id: str, run_id: str, base_url: str, try_number: int | None = None) -> Notice:
    message = _error_text(error)
    text, hint = split_what_to_do(message) if message else (None, None)
    if text and len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + " [...]"
    return Notice(event=FAILURE, model=model, version=version, dag_id=dag_id, run_id=run_id, step=step,
                  error=text or None, what_to_do=hint or STEP_HINTS.get(step, DEFAULT_HINT),
                  run_url=run_url(base_url, dag_id, run_id),
                  log_url=task_url(base_url, dag_id, run_id, step, try_number), try_number=try_number)


def rollback_notice(*, model: str, failed_version: int | None, serving_version: int | None,
                    failed_step: str | None, dag_id: str, run_id: str, base_url: str,
                    step: str = ROLLBACK_TASK) -> Notice:
    failed = f"v{failed_version}" if failed_version is not None else "the candidate"
    where = failed_step or "failed step's"
    what = (f"nothing to do for the service; {failed} stays on the PVC but is not served: read the {where} log, "
            "fix the release and publish a new version")
    # The log worth reading is the failed step's, not the rollback's.
    return Notice(event=ROLLBACK, model=model, version=failed_version, dag_id=dag_id, run_id=run_id, step=step,
                  error=None, what_to_do=what, run_url=run_url(base_url, dag_id, run_id),
                  log_url=task_url(base_url, dag_id, run_id, failed_step or step),
                  serving_version=serving_version, failed_step=failed_step)


def _error_text(error: BaseException | str | None) -> str:
    if error is None:
        return ""
    if isinstance(error, str):
        return error
    text = str(error).strip()
    return text or type(error).__name__  # e.g. a bare TimeoutError()


# -- reading the Airflow context --------------------------------------------------------------------------

def ui_base_url() -> str:
    """``[api] base_url`` (the URL users reach the api-server and its UI at), else Airflow's own fallback."""
    try:
        from airflow.sdk.configuration import conf

        return str(conf.get("api", "base_url", fallback=None) or DEFAULT_BASE_URL)
    except Exception:  # a link is a courtesy; the message goes out without a reachable one
        return DEFAULT_BASE_URL


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _pull(ti: Any, task_id: str, key: str = "return_value") -> Any:
    try:
        return ti.xcom_pull(task_ids=task_id, key=key)
    except Exception as exc:  # a missing XCom only leaves a field empty
        log.debug("no XCom %s of %s: %s", key, task_id, exc)
        return None


def run_version(context: Mapping[str, Any]) -> int | None:
    """The version the run deploys: resolve's XCom, else what the sensor found, else the ``version`` param."""
    ti = context["ti"]
    for task_id in ("resolve", "wait_for_release"):
        data = _pull(ti, task_id)
        if isinstance(data, Mapping) and _int(data.get("version")) is not None:
            return _int(data.get("version"))
    params = context.get("params") or {}
    return _int(params.get("version")) if isinstance(params, Mapping) else None


def _failed_candidate_step(ti: Any) -> str | None:
    try:
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=list(CANDIDATE_STEPS), run_ids=[ti.run_id])
        mine = states.get(ti.run_id, {})
    except Exception as exc:  # the message goes out without it
        log.debug("cannot read the states of %s: %s", CANDIDATE_STEPS, exc)
        return None
    return next((s for s in CANDIDATE_STEPS if mine.get(s) == "failed"), None)


def notice_from_context(event: str, model: str, context: Mapping[str, Any], *,
                        base_url: str | None = None) -> Notice:
    """The notice for ``event`` from a task callback's context (``ti``, ``exception``, ``params``)."""
    ti = context["ti"]
    base = base_url or ui_base_url()
    dag_id, run_id = str(ti.dag_id), str(context.get("run_id") or ti.run_id)
    if event == ROLLBACK:
        result = _pull(ti, ti.task_id, "result")
        serving = _int(result.get("promoted")) if isinstance(result, Mapping) else None
        return rollback_notice(model=model, failed_version=run_version(context), serving_version=serving,
                               failed_step=_failed_candidate_step(ti), dag_id=dag_id, run_id=run_id, base_url=base,
                               step=str(ti.task_id))
    return failure_notice(model=model, step=str(ti.task_id), error=context.get("exception"),
                          version=run_version(context), dag_id=dag_id, run_id=run_id, base_url=base,
                          try_number=_int(getattr(ti, "try_number", None)))


# -- sending ----------------------------------------------------------------------------------------------

class RolloutNotifier(HttpNotifier):
    """HttpNotifier whose JSON body is the :class:`Notice` of this task's ``event``; never raises."""

    # Nothing is rendered with Jinja: an error message holding "{{" must arrive verbatim, not break rendering.
    template_fields = ()

    def __init__(self, *, event: str, model: str, http_conn_id: str, endpoint: str = "",
                 timeout_s: float = SEND_TIMEOUT_S) -> None:
        super().__init__(http_conn_id=http_conn_id, endpoint=endpoint or None, method="POST",
                         headers={"Content-Type": "application/json"}, extra_options={"timeout": timeout_s})
        self.event = event
        self.model = model

    def notify(self, context: Any) -> None:
        notice = notice_from_context(self.event, self.model, context)
        self.json = notice.to_json()
        super().notify(context)
        self.log.info("sent the %s notification of %s v%s (%s) to connection %s", self.event, self.model,
                      notice.version, notice.step, self.http_conn_id)

    async def async_notify(self, context: Any) -> None:
        notice = notice_from_context(self.event, self.model, context)
        self.json = notice.to_json()
        await super().async_notify(context)

    def __call__(self, *args: Any) -> None:
        try:
            if len(args) == 1:
                # A task callback. BaseNotifier.__call__ would also log the failure as an ERROR before
                # re-raising; with nothing to render, notify() is all it does.
                self.notify(args[0])
            else:
                super().__call__(*args)
        except Exception as exc:  # the task's own outcome stands; the webhook is someone else's outage
            self.log.warning("could not send the %s notification of %s to connection %r (endpoint %r): %s: %s; "
                             "the task's outcome is unchanged", self.event, self.model, self.http_conn_id,
                             self.endpoint, type(exc).__name__, exc)


def failure_callbacks(model: ModelDeployment) -> dict[str, Any]:
    """``default_args`` for the deploy DAG: every task's final failure is posted (``notify.when`` failure)."""
    return _callbacks(model, FAILURE, "on_failure_callback")


def rollback_callbacks(model: ModelDeployment) -> dict[str, Any]:
    """Keyword arguments for the rollback task: its success is posted (``notify.when`` rollback)."""
    return _callbacks(model, ROLLBACK, "on_success_callback")


def _callbacks(model: ModelDeployment, event: str, callback: str) -> dict[str, Any]:
    settings = model.notify
    if not settings.wants(event) or settings.http_conn_id is None:
        return {}
    return {callback: [RolloutNotifier(event=event, model=model.name, http_conn_id=settings.http_conn_id,
                                       endpoint=settings.endpoint)]}
