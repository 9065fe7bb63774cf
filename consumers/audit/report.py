"""``motcua report``: the officials' report of a period, for the province, each provincial
site and each commune, from the audit replay (``consumers.audit.replay``): the figures come
from the archived events through ``schemas.figures``, never from a second formula.

Labels are the official Vietnamese terms (tiếp nhận; trực tuyến / trực tiếp / bưu chính;
trước hạn / đúng hạn / trễ hạn ...). xlsx is written with openpyxl, rates as numbers
formatted as percentages (a spreadsheet in Vietnamese shows 83,55%); csv is UTF-8 with a
byte-order mark, so that a spreadsheet opens it with its diacritics; json keeps the
figures' own names (those of ``motcua counters --json``).
"""

from __future__ import annotations

import base64
import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from consumers.audit.replay import Replay
from consumers.audit.store import Archive
from schemas.counters import PROVINCE, node_scope
from schemas.nodes import all_nodes
from schemas.note import Checkpoint, Note

#: (figure name, official label) in the report's column order
COLUMNS: tuple[tuple[str, str], ...] = (
    ("received", "Tiếp nhận"),
    ("received.online", "Trực tuyến"),
    ("received.in_person", "Trực tiếp"),
    ("received.postal", "Bưu chính"),
    ("received.full_online", "Trực tuyến toàn trình"),
    ("online_rate", "Tỷ lệ trực tuyến"),
    ("handled", "Đã giải quyết"),
    ("handled.early", "Trước hạn"),
    ("handled.on_time", "Đúng hạn"),
    ("handled.late", "Trễ hạn"),
    ("on_time_rate", "Tỷ lệ đúng hạn"),
    ("in_progress", "Đang giải quyết"),
    ("paused", "Tạm dừng"),
    ("overdue", "Quá hạn"),
    ("supplement_requests", "Yêu cầu bổ sung"),
    ("refused", "Từ chối"),
    ("withdrawn", "Rút hồ sơ"),
    ("digitised.components", "Số hóa thành phần hồ sơ"),
    ("digitised.results", "Số hóa kết quả"),
    ("hotline.calls", "Cuộc gọi 1022"),
)
RATES = frozenset({"online_rate", "on_time_rate"})
KIND_LABEL = {"province": "Tỉnh", "site": "Trung tâm PVHCC tỉnh", "commune": "Xã, phường"}


@dataclass(frozen=True)
class Row:
    kind: str  # province | site | commune
    code: str
    name: str
    figures: dict[str, Any]  # Figures.as_dict() plus "overdue"

    def value(self, column: str) -> Any:
        return self.figures[column]


@dataclass(frozen=True)
class Meta:
    start: date
    end: date
    events: int
    rules: str
    archive: str
    checkpoint: str | None  # the newest cosigned checkpoint, summed up, when there is one
    checkpoint_note: str | None = None  # that checkpoint's signed note, whole
    held: int = 0  # events archived beyond a gap in their chain: not counted


def cosigned_checkpoint(archive: Archive) -> tuple[int, str, str] | None:
    """(tree size, summary, signed note) of the archive's newest cosigned checkpoint: a
    reader checks the note with the sites' public keys (docs/audit.md)."""
    held = archive.cosigned()
    if not held:
        return None
    size, _, data = held[-1]
    note = Note.parse(data)
    cp = Checkpoint.parse(note.text)
    witnesses = []
    for sig in note.signatures:
        stamp = sig.cosigned_at
        if sig.name != cp.origin and stamp is not None:
            at = datetime.fromtimestamp(stamp, UTC)
            witnesses.append(f"{sig.name} lúc {at:%H:%M:%S %d/%m/%Y} UTC")
    summary = (f"{cp.origin}, cây {size:,} sự kiện".replace(",", ".")
               + f", gốc {base64.b64encode(cp.root).decode()}; đồng ký: "
               + ", ".join(witnesses))
    return size, summary, data


def rows(replayed: Replay, start: date, end: date, scope: str | None = None) -> list[Row]:
    """The province, then both sites, then the communes (by code); or one scope."""
    wanted = [("province", PROVINCE, PROVINCE, "Tỉnh Hưng Yên")]
    nodes = sorted(all_nodes(), key=lambda n: (not n.is_site, n.id))
    wanted += [("site" if n.is_site else "commune", node_scope(n.id), n.id, n.name)
               for n in nodes]
    out = []
    for kind, s, code, name in wanted:
        if scope is not None and s != scope:
            continue
        fig = replayed.figures(s, start, end)
        d: dict[str, Any] = fig.as_dict()
        d["overdue"] = fig.stocks_at_end["overdue.in_progress"] + \
            fig.stocks_at_end["overdue.paused"]
        out.append(Row(kind, code, name, d))
    return out


def _title(meta: Meta) -> list[str]:
    return [
        "BÁO CÁO KẾT QUẢ TIẾP NHẬN, GIẢI QUYẾT THỦ TỤC HÀNH CHÍNH",
        f"Từ ngày {meta.start:%d/%m/%Y} đến ngày {meta.end:%d/%m/%Y}",
        f"Nguồn: lưu trữ kiểm toán {meta.archive}, {meta.events:,} sự kiện; quy tắc đếm "
        f"phiên bản {meta.rules}".replace(",", "."),
        ("Điểm kiểm tra đã đồng ký: " + meta.checkpoint) if meta.checkpoint else
        "Điểm kiểm tra đã đồng ký: chưa có (no checkpoint of this archive is cosigned yet; "
        "`motcua audit verify` checks the archive itself)",
        *(["Bản ký đầy đủ: " + " | ".join(meta.checkpoint_note.strip().splitlines())]
          if meta.checkpoint_note else []),
        *([f"Không tính {meta.held:,} sự kiện nằm sau một chỗ đứt trong chuỗi của nơi gửi "
           "(chờ các sự kiện còn thiếu; `motcua audit replay` liệt kê)".replace(",", ".")]
          if meta.held else []),
    ]


def write_xlsx(path: Path, table: list[Row], meta: Meta) -> None:
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font

    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Tổng hợp"
    for i, line in enumerate(_title(meta), start=1):
        sheet.cell(row=i, column=1, value=line).font = Font(bold=i == 1, size=14 if i == 1
                                                             else 11)
    header = len(_title(meta)) + 2
    heads = ["Cấp", "Mã", "Đơn vị", *(label for _, label in COLUMNS)]
    for c, label in enumerate(heads, start=1):
        cell = sheet.cell(row=header, column=c, value=label)
        cell.font = Font(bold=True)
        cell.alignment = Alignment(wrap_text=True, vertical="top")
    for r, row in enumerate(table, start=header + 1):
        sheet.cell(row=r, column=1, value=KIND_LABEL[row.kind])
        sheet.cell(row=r, column=2, value=row.code)
        sheet.cell(row=r, column=3, value=row.name)
        for c, (name, _) in enumerate(COLUMNS, start=4):
            value = row.value(name)
            if name in RATES:
                cell = sheet.cell(row=r, column=c,
                                  value=None if value is None else float(Decimal(value) / 100))
                cell.number_format = "0.00%"
            else:
                cell = sheet.cell(row=r, column=c, value=int(value))
                cell.number_format = "#,##0"
    sheet.freeze_panes = sheet.cell(row=header + 1, column=4)
    sheet.column_dimensions["C"].width = 28
    book.save(path)


def write_csv(table: list[Row], meta: Meta) -> bytes:
    out = io.StringIO()
    w = csv.writer(out)
    for line in _title(meta):
        w.writerow([line])
    w.writerow(["Cấp", "Mã", "Đơn vị", *(label for _, label in COLUMNS)])
    for row in table:
        w.writerow([KIND_LABEL[row.kind], row.code, row.name,
                    *("" if row.value(n) is None else row.value(n) for n, _ in COLUMNS)])
    return out.getvalue().encode("utf-8-sig")


def write_json(table: list[Row], meta: Meta) -> bytes:
    body = {"from": meta.start.isoformat(), "to": meta.end.isoformat(),
            "source": {"archive": meta.archive, "events": meta.events,
                       "counter_rules": meta.rules, "checkpoint": meta.checkpoint,
                       "checkpoint_note": meta.checkpoint_note,
                       "held_beyond_a_gap": meta.held},
            "labels": dict(COLUMNS),
            "rows": [{"kind": r.kind, "code": r.code, "name": r.name, **r.figures}
                     for r in table]}
    return json.dumps(body, ensure_ascii=False, indent=1).encode()
