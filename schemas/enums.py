"""Closed vocabularies of the domain, with the Vietnamese labels used by the national portal."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Channel(StrEnum):
    """Hình thức tiếp nhận: how a dossier reached the centre."""

    in_person = "in_person"
    online = "online"
    postal = "postal"

    @property
    def label_vi(self) -> str:
        return _CHANNEL_VI[self]


_CHANNEL_VI = {
    Channel.in_person: "Trực tiếp",
    Channel.online: "Trực tuyến",
    Channel.postal: "Bưu chính công ích",
}


class DossierStatus(IntEnum):
    """Dossier status codes 1–10 as synced to the national public-service portal."""

    SUBMITTED_ONLINE = 1
    ACCEPTED = 2
    REFUSED = 3
    IN_PROGRESS = 4
    SUPPLEMENT_REQUESTED = 5
    AWAITING_FEES = 6
    WITHDRAWN = 7
    STOPPED = 8
    RESULT_READY = 9
    RESULT_RETURNED = 10

    @property
    def label_vi(self) -> str:
        return _STATUS_VI[self]


_STATUS_VI = {
    DossierStatus.SUBMITTED_ONLINE: "Mới đăng ký",
    DossierStatus.ACCEPTED: "Được tiếp nhận",
    DossierStatus.REFUSED: "Không được tiếp nhận",
    DossierStatus.IN_PROGRESS: "Đang xử lý",
    DossierStatus.SUPPLEMENT_REQUESTED: "Yêu cầu bổ sung",
    DossierStatus.AWAITING_FEES: "Yêu cầu nghĩa vụ tài chính",
    DossierStatus.WITHDRAWN: "Công dân rút hồ sơ",
    DossierStatus.STOPPED: "Dừng xử lý",
    DossierStatus.RESULT_READY: "Đã xử lý xong",
    DossierStatus.RESULT_RETURNED: "Đã trả kết quả",
}

#: DESIGN.md: handled = 9 + 10 + 7, paused = 5 + 6 + 8.
HANDLED = frozenset({DossierStatus.RESULT_READY, DossierStatus.RESULT_RETURNED,
                     DossierStatus.WITHDRAWN})
PAUSED = frozenset({DossierStatus.SUPPLEMENT_REQUESTED, DossierStatus.AWAITING_FEES,
                    DossierStatus.STOPPED})


class Timeliness(StrEnum):
    """Against the promised return date (ngày hẹn trả)."""

    early = "early"
    on_time = "on_time"
    late = "late"

    @property
    def label_vi(self) -> str:
        return {"early": "Trước hạn", "on_time": "Đúng hạn", "late": "Quá hạn"}[self.value]


class HotlineCategory(StrEnum):
    """Categories of calls to hotline 1022 at the provincial centre."""

    procedure = "procedure"
    dossier_status = "dossier_status"
    land = "land"
    project_progress = "project_progress"
    commune_police = "commune_police"
    complaint = "complaint"
    other = "other"

    @property
    def label_vi(self) -> str:
        return _HOTLINE_VI[self]


_HOTLINE_VI = {
    HotlineCategory.procedure: "Hỏi đáp thủ tục hành chính",
    HotlineCategory.dossier_status: "Tình trạng hồ sơ",
    HotlineCategory.land: "Đất đai, lấn chiếm",
    HotlineCategory.project_progress: "Tiến độ dự án",
    HotlineCategory.commune_police: "Công an xã",
    HotlineCategory.complaint: "Phản ánh, khiếu nại",
    HotlineCategory.other: "Khác",
}
