"""Contacts from and to CSV, streamed: `smsbot contacts import` and `smsbot contacts export`.

An import reads the file row by row and writes batches of BATCH rows, each as one query for the
contacts already there, one executemany upsert by phone and, with a group, one executemany of
memberships: memory stays constant however long the file. A bad row is reported with its line
number and reason and the rest are imported.

Columns: `phone` (required), then optionally `name`, `language`, `timezone`, `groups`
(separated by ";"); every other column is a custom field. A field declared in smsbot.toml
(`[contacts.fields]`) or by an earlier import keeps its type; a new column becomes a text
field, and the report says so. An empty cell leaves what is stored unchanged.

Both act in one workspace: an import upserts that workspace's contacts, an export reads only
them, and its header names only the fields they hold (field types are the deployment's, but
which fields another workspace uses is its own business).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, Engine, select, text

from smsbot.app.contacts_write import ImportRow, write_batch
from smsbot.engine.contact import FieldTypeError, check_field_name, encode, parse_field
from smsbot.pipeline.contacts import field_types
from smsbot.sms.phone import PhoneNumberError, normalize
from smsbot.sms.zones import iana_zone
from smsbot.store.models import contact_fields_t, contact_groups_t, contacts_t
from smsbot.store.upsert import insert_on_conflict
from smsbot.workspaces import DEFAULT

log = logging.getLogger(__name__)

BATCH = 1_000
# PostgreSQL: an import of at least this many rows ends with ANALYZE of the tables it wrote.
# Autovacuum gets there within a minute or so; until then the planner reads a table of 100,000
# new rows with the statistics of an empty one, and the campaign sync that follows an import
# read each page's group memberships through the whole group (27 ms a page of 2,000, against
# 9 ms after ANALYZE: bench/README.md, session 19).
ANALYZE_AFTER = 10_000
STANDARD = ("phone", "name", "language", "timezone", "groups")

Progress = Callable[[int, int], None]

_DECLARE = insert_on_conflict(contact_fields_t, ["workspace", "name"], update=("type",))
_NEW_FIELD = insert_on_conflict(contact_fields_t, ["workspace", "name"])


class ContactsError(Exception):
    """A contacts command cannot go on (a bad header, an unreadable file); one line."""


@dataclasses.dataclass
class ImportReport:
    """What an import did."""

    imported: int = 0
    bad: list[str] = dataclasses.field(default_factory=list)  # "line N: reason"
    new_fields: list[str] = dataclasses.field(default_factory=list)  # became text fields

    def summary(self, path: Path) -> str:
        """One line for the terminal."""
        new = f"; new text field(s): {', '.join(self.new_fields)}" if self.new_fields else ""
        return (
            f"imported {self.imported:,} contact(s) from {path}; {len(self.bad):,} bad row(s){new}"
        )


def declared_types(
    conn: Connection, config: Mapping[str, str], now: dt.datetime, workspace: str
) -> dict[str, str]:
    """`workspace`'s field types: smsbot.toml's [contacts.fields] (every workspace's) over
    those its earlier imports declared."""
    if config:
        rows = [
            {"workspace": workspace, "name": n, "type": k, "created_at": now}
            for n, k in config.items()
        ]
        conn.execute(_DECLARE, rows)
    return field_types(conn, workspace)


def _header(reader: Iterator[list[str]], path: str) -> list[str]:
    header = next(reader, None)
    if header is None:
        raise ContactsError(f"{path} is empty: its first line names the columns, e.g. phone,name")
    names = [h.strip() for h in header]
    if "phone" not in names:
        raise ContactsError(f"{path} has no 'phone' column: name the columns in its first line")
    if len(set(names)) != len(names):
        raise ContactsError(f"{path} names a column twice in its first line")
    for name in names:
        if name not in STANDARD:
            try:
                check_field_name(name)
            except FieldTypeError as exc:
                raise ContactsError(f"{path}, column {name!r}: {exc}") from None
    return names


def _parse(cells: list[str], names: list[str], types: Mapping[str, str], region: str) -> ImportRow:
    if len(cells) != len(names):
        raise ValueError(f"{len(cells)} cell(s) where the header names {len(names)}")
    if any("\x00" in cell for cell in cells):  # no database stores it; PostgreSQL refuses it
        raise ValueError("a cell contains a NUL character")
    values = dict(zip(names, cells, strict=True))
    try:
        phone = normalize(values["phone"], region)
    except PhoneNumberError as exc:
        raise ValueError(str(exc)) from None
    zone = values.get("timezone", "").strip() or None
    if zone is not None:
        iana_zone(zone)  # raises a ValueError saying what a zone looks like
    fields: dict[str, Any] = {}
    for name, cell in values.items():
        if name not in STANDARD:
            value = parse_field(name, types.get(name, "text"), cell)
            if value is not None:
                fields[name] = encode(value)
    groups = {g.strip()[:100] for g in values.get("groups", "").split(";") if g.strip()}
    return ImportRow(
        phone,
        values.get("name", "").strip()[:200] or None,
        values.get("language", "").strip()[:16] or None,
        zone,
        fields,
        groups,
    )


class _Writer:
    """Writes one batch in a thread while the next is parsed; never more than one in flight."""

    def __init__(self, engine: Engine, group: str | None, now: dt.datetime, workspace: str) -> None:
        self._engine, self._group, self._now = engine, group, now
        self._workspace = workspace
        self._started = time.monotonic()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="smsbot-import")
        self._pending: Future[None] | None = None
        # One connection for the whole import, a transaction per batch: a new connection per
        # batch cost as much as writing the batch on PostgreSQL.
        self._conn: Connection | None = None
        self._rows = 0  # written so far

    def _write(self, batch: dict[str, ImportRow]) -> None:
        if self._conn is None:
            self._conn = self._engine.connect()
        self._rows += len(batch)
        with self._conn.begin():
            # Each batch is stamped with when it is written, not when the import began: the
            # campaigns sync reads contacts changed since a cursor a few seconds behind the
            # clock, and a long import's later batches must land after it.
            elapsed = dt.timedelta(seconds=time.monotonic() - self._started)
            write_batch(self._conn, batch, self._group, self._now + elapsed, self._workspace)

    def submit(self, batch: dict[str, ImportRow]) -> None:
        """Wait for the batch in flight (raising its error), then start writing `batch`."""
        self.wait()
        if batch:
            self._pending = self._pool.submit(self._write, batch)

    def wait(self) -> None:
        """Wait for the batch in flight."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def finish(self) -> None:
        """Wait for the last batch; after a large import on PostgreSQL, ANALYZE what it wrote
        (see ANALYZE_AFTER)."""
        self.wait()
        if self._conn is None or self._rows < ANALYZE_AFTER:
            return
        if self._conn.dialect.name == "postgresql":
            self._pool.submit(_analyze, self._conn).result()

    def close(self) -> None:
        """Finish the last batch and stop the thread."""
        try:
            self.wait()
        finally:
            if self._conn is not None:  # closed in the thread that used it
                self._pool.submit(self._conn.close).result()
                self._conn = None
            self._pool.shutdown()


def _stream(
    reader: Any,
    names: list[str],
    types: Mapping[str, str],
    region: str,
    writer: _Writer,
    report: ImportReport,
    progress: Progress | None,
    total: int,
) -> None:
    batch: dict[str, ImportRow] = {}
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue  # a blank line
        try:
            row = _parse(cells, names, types, region)
        except ValueError as exc:
            report.bad.append(f"line {reader.line_num}: {exc}")
            continue
        if (was := batch.get(row.phone)) is not None:  # twice in one batch: merge
            row.fields = {**was.fields, **row.fields}
            row.groups |= was.groups
        batch[row.phone] = row
        report.imported += 1
        if len(batch) >= BATCH:
            writer.submit(batch)
            batch = {}
            if progress:
                progress(reader.line_num - 1, total)
    writer.submit(batch)


def count_lines(path: Path) -> int:
    """Lines in a file (for a progress bar), read in blocks: constant memory."""
    lines = 0
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            lines += block.count(b"\n")
    return lines


def _analyze(conn: Connection) -> None:
    with conn.begin():
        conn.execute(text("ANALYZE contacts, contact_groups"))


def import_csv(
    engine: Engine,
    path: Path,
    *,
    region: str,
    config_fields: Mapping[str, str],
    now: dt.datetime,
    group: str | None = None,
    progress: Progress | None = None,
    workspace: str = DEFAULT,
) -> ImportReport:
    """Upsert every good row of the CSV at `path` by phone; report the bad ones by line."""
    total = count_lines(path) - 1 if progress else 0
    try:
        file: IO[str] = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ContactsError(f"cannot read {path}: {exc.strerror}") from None
    with file:
        report = import_file(
            engine,
            file,
            str(path),
            region=region,
            config_fields=config_fields,
            now=now,
            group=group,
            progress=progress,
            total=total,
            workspace=workspace,
        )
    if progress:
        progress(total, total)
    return report


def import_file(
    engine: Engine,
    file: IO[str],
    label: str,
    *,
    region: str,
    config_fields: Mapping[str, str],
    now: dt.datetime,
    group: str | None = None,
    progress: Progress | None = None,
    total: int = 0,
    workspace: str = DEFAULT,
) -> ImportReport:
    """Import into `workspace` from an open text file (opened with newline=""); `label` names
    it in errors."""
    report = ImportReport()
    reader = csv.reader(file)
    try:
        names = _header(reader, label)
        with engine.begin() as conn:
            types = declared_types(conn, config_fields, now, workspace)
            new = [n for n in names if n not in STANDARD and n not in types]
            if new:
                conn.execute(
                    _NEW_FIELD,
                    [
                        {"workspace": workspace, "name": n, "type": "text", "created_at": now}
                        for n in new
                    ],
                )
                types.update(dict.fromkeys(new, "text"))
                report.new_fields = new
        writer = _Writer(engine, group, now, workspace)
        try:
            _stream(reader, names, types, region, writer, report, progress, total)
            writer.finish()
        finally:
            writer.close()
    except (csv.Error, UnicodeDecodeError) as exc:
        where = f"line {reader.line_num}: " if reader.line_num else ""
        raise ContactsError(f"{label}: {where}not a CSV file we can read ({exc})") from None
    return report


_USED_FIELDS = {
    "sqlite": "SELECT DISTINCT j.key FROM contacts AS c, json_each(c.fields) AS j"
    " WHERE c.workspace = :workspace",
    "postgresql": "SELECT DISTINCT json_object_keys(c.fields) FROM contacts AS c"
    " WHERE c.workspace = :workspace",
}


def used_fields(conn: Connection, workspace: str) -> list[str]:
    """The custom fields `workspace`'s contacts hold, by name."""
    used = set(conn.execute(text(_USED_FIELDS[conn.dialect.name]), {"workspace": workspace}))
    declared = set(field_types(conn, workspace))
    return sorted(declared & {str(name) for (name,) in used})


def export_rows(
    engine: Engine, group: str | None = None, workspace: str = DEFAULT
) -> Iterator[list[str]]:
    """The header, then one CSV row per contact of `workspace` (of `group`), BATCH at a time."""
    c, g = contacts_t, contact_groups_t
    with engine.connect() as conn:
        fields = used_fields(conn, workspace)
        yield [*STANDARD, *fields]
        last = 0
        while True:
            query = (
                select(c)
                .where(c.c.workspace == workspace, c.c.id > last)
                .order_by(c.c.id)
                .limit(BATCH)
            )
            if group is not None:
                query = query.where(c.c.id.in_(select(g.c.contact_id).where(g.c.name == group)))
            rows = conn.execute(query).all()
            if not rows:
                return
            memberships: dict[int, list[str]] = {}
            for contact_id, name in conn.execute(
                select(g.c.contact_id, g.c.name)
                .where(g.c.contact_id.in_([r.id for r in rows]))
                .order_by(g.c.name)
            ):
                memberships.setdefault(contact_id, []).append(name)
            for r in rows:
                stored = r.fields or {}
                yield [
                    r.phone,
                    r.name or "",
                    r.language or "",
                    r.timezone or "",
                    ";".join(memberships.get(r.id, [])),
                    *(_cell(stored.get(f)) for f in fields),
                ]
            last = rows[-1].id


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def export_csv(
    engine: Engine, out: IO[str], group: str | None = None, workspace: str = DEFAULT
) -> int:
    """Write `workspace`'s contacts (of `group`) to `out` as CSV; return how many."""
    writer = csv.writer(out)
    count = -1
    for count, row in enumerate(export_rows(engine, group, workspace)):  # noqa: B007
        writer.writerow(row)
    return count
