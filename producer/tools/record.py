"""The design record's texts (``../shared/seed/e5-cpu-optimization-notes.ko.md``, section 5.1):
the chatbot's questions and the store description its benchmark encoded. One copy, used by
``embedq bench``, the benchmarks and the tests."""

from __future__ import annotations

RECORD_QUERIES = [
    "연남 카페 추천해줘",
    "강남역 맛집 어디야?",
    "비건 베이커리 있나요?",
    "여의도 회식 장소 추천",
    "파스타 맛있는 데 알려줘",
]
"""The design record's online queries."""

RECORD_LONG_TEXT = (
    "이 매장은 브런치와 스페셜티 커피를 함께 제공하며, 평일 오후에 방문객이 많고 "
    "주차 공간이 협소합니다. 시그니처 메뉴로는 수제 치아바타 샌드위치와 싱글 오리진 핸드드립이 있습니다. "
    "주말에는 예약을 권장하며, 반려동물 동반이 가능합니다."
)
"""The design record's ~150-character store description."""
