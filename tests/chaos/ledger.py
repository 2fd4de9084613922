"""The figures of the faults suite (`make chaos`): one row per fault or bad-input class.

Every chaos test (and the bad-input property tests) counts what it did into the process-wide ``LEDGER``;
a `--chaos` session writes the rows to ``tests/chaos/results/chaos.json`` and the README's table to
``tests/chaos/results/chaos.md`` at its end (tests/conftest.py ``pytest_sessionfinish``). The counts come
from what the tests observed (a partial version seen by the watcher, a wrong answer to a client), never
from what they expected: a row whose ``survived`` is short of ``injected`` is a failed test as well.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class FaultRow:
    """One fault (or bad-input class): how it was injected, what the system did, and the counts."""

    group: str  # "Airflow", "Triton", "S3", "Storage", "Kubernetes", "Concurrency", "Bad input", ...
    fault: str  # what went wrong, in a user's words
    injected_how: str = ""
    behaviour: str = ""  # what the system did about it
    runs: int = 0  # rounds run (a round may inject several faults)
    injected: int = 0  # faults injected (kills, storms, stalls, bad inputs tried)
    survived: int = 0  # injections after which every invariant held
    data_lost: int = 0  # a promoted/previous version damaged or missing, a record lost
    partial_visible: int = 0  # a half-written version seen in the model repository by a watcher
    wrong_answers: int = 0  # client answers from an untested version or with wrong values
    hangs: int = 0  # an operation that outlived its deadline
    client_answers: int = 0  # answers the clients received while the fault ran (0 where no client ran)
    seconds: float = 0.0  # wall time of the rounds
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


class Ledger:
    """Rows by (group, fault); thread-safe adds, since client loops and watchers count from threads."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], FaultRow] = {}
        self.lock = threading.Lock()

    def row(self, group: str, fault: str, *, injected_how: str = "", behaviour: str = "") -> FaultRow:
        with self.lock:
            found = self._rows.get((group, fault))
            if found is None:
                found = self._rows[(group, fault)] = FaultRow(group=group, fault=fault)
            if injected_how:
                found.injected_how = injected_how
            if behaviour:
                found.behaviour = behaviour
            return found

    def rows(self) -> list[FaultRow]:
        with self.lock:
            return list(self._rows.values())

    def write(self, directory: Path = RESULTS) -> Path | None:
        rows = self.rows()
        if not rows:
            return None
        directory.mkdir(parents=True, exist_ok=True)
        doc = {"finished": datetime.now(UTC).isoformat(timespec="seconds"), "rows": [asdict(r) for r in rows]}
        (directory / "chaos.json").write_text(json.dumps(doc, indent=2) + "\n")
        table = directory / "chaos.md"
        table.write_text(markdown(rows) + "\n")
        return table


def markdown(rows: list[FaultRow]) -> str:
    head = ("| Group | Fault | Injected how | What the system did | Runs | Injected | Survived | Data lost "
            "| Partial visible | Wrong answers | Hangs | Client answers |")
    lines = [head, "|" + "---|" * 12]
    for r in sorted(rows, key=lambda r: (GROUP_ORDER.get(r.group, 99), r.fault)):
        lines.append(
            f"| {r.group} | {r.fault} | {r.injected_how} | {r.behaviour} | {r.runs} | {r.injected} | {r.survived} "
            f"| {r.data_lost} | {r.partial_visible} | {r.wrong_answers} | {r.hangs} | {r.client_answers or '-'} |"
        )
    return "\n".join(lines)


GROUP_ORDER = {name: i for i, name in enumerate(
    ["Airflow", "Triton", "S3", "Storage", "Kubernetes", "Concurrency", "Bad input", "Secrets", "Signing"])}

LEDGER = Ledger()


def counted_in(group: str, fault: str, *, injected_how: str, behaviour: str,
               ) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A test decorator (innermost, under @given / parametrize): every example or case the test runs is one
    injection of ``fault``; it survived when the test's assertions held for it."""

    def wrap(test: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(test)
        def counted_test(*args: Any, **kwargs: Any) -> None:
            row = LEDGER.row(group, fault, injected_how=injected_how, behaviour=behaviour)
            with LEDGER.lock:
                row.runs += 1
                row.injected += 1
            test(*args, **kwargs)
            with LEDGER.lock:
                row.survived += 1

        return counted_test

    return wrap
