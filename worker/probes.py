"""The probe set an export is checked on: hundreds of texts chosen to find where two tokenizers of
"the same" model disagree, or where an exported graph computes other numbers.

A tokenizer file and the tokenizer a library builds for the same model need not agree (one
XLM-R build dropped the file's normalizer: a full-width colon became ``<unk>`` on the torch path
and ``:`` on the export's). So the probes cover what normalizers, pre-tokenizers and truncation
treat specially: Korean and English, mixed scripts, full-width and other NFKC-sensitive
characters, emoji, control and invisible characters, accents in both composed and decomposed
form, and texts over any token window. Deterministic: the same list every time.
"""

from __future__ import annotations

BASE = [
    "연남 카페 추천해줘",
    "강남역 맛집 어디야?",
    "비건 베이커리 있나요?",
    "여의도 회식 장소 추천",
    "파스타 맛있는 데 알려줘",
    "이 매장은 브런치와 스페셜티 커피를 함께 제공하며, 평일 오후에 방문객이 많고 주차 공간이 협소합니다.",
    "How do I reset my password?",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "Retrieval-augmented generation grounds a language model in a vector store.",
    "서울 지하철 2호선은 순환선입니다 (Seoul Metro Line 2 is a loop line).",
    "東京と大阪の間は新幹線で約2時間半です。",
    "北京是中国的首都\uff0c人口超过两千万。",  # a full-width comma
    "Ça coûte 12,50 € — déjà payé? Naïve café, façade, Ærø, Straße.",
    "Привет, как дела? Это тест токенизатора.",
    "مرحبا بالعالم، هذا اختبار.",
    "नमस्ते दुनिया, यह एक परीक्षण है।",
    "x",
    "12345 67890 3.14159 1e-9 0x1F -42",
    "https://example.com/path?q=embedq&lang=ko#section-2 user@example.org",
    "def f(x): return {'a': [1, 2, 3]}  # code, brackets & symbols <>|\\^~`",
]
"""Ordinary texts of the scripts a multilingual chatbot meets."""

SPECIALS = [
    "\uff1a",  # full-width colon (the one that turned into <unk>)
    "\uff01\uff1f\uff0c\uff0e",  # full-width ! ? , .
    "\uff21\uff22\uff23\uff11\uff12\uff13",  # full-width ABC123
    "\uff08\uff09\u3010\u3011\u300c\u300d",  # full-width and CJK brackets
    "\ufb01\ufb02",  # ligatures fi fl
    "\u2460\u2461\u2462",  # circled digits
    "\u2163\u216b",  # roman numerals
    "\u338f\u33a1\u2103",  # ㎏ ㎡ ℃
    "\uff76\uff80\uff76\uff85",  # half-width katakana
    "\u00b2\u00b3\u00bd",  # superscripts, a fraction
    "\u2026\u2014\u2013\u00b7",  # ellipsis, dashes, middle dot
    "\u201c\u201d\u2018\u2019\u00ab\u00bb",  # curly quotes, guillemets
    "\u00e9 vs e\u0301",  # composed and decomposed accent
    "\u1100\u1161\u11a8",  # Hangul jamo (decomposed 각)
    "\U0001f600\U0001f44d\U0001f3fd",  # emoji, a skin tone
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # a ZWJ family
    "\u2764\ufe0f \U0001f1f0\U0001f1f7",  # variation selector, a flag
    "\u200b",  # zero-width space
    "\u200c\u200d",  # zero-width (non-)joiner
    "\u00ad",  # soft hyphen
    "\ufeff",  # byte order mark
    "\u2028\u2029",  # line and paragraph separators
    "\t",
    "\r\n",
    "\u0007\u001b",  # control characters
    "\u00a0\u3000",  # no-break and ideographic spaces
    "  leading and trailing  ",
    "UPPER lower MiXeD",
]
"""Characters that normalizers and pre-tokenizers treat specially."""

LONG_KO = "서울의 대중교통은 지하철과 버스로 이루어져 있으며 환승 할인이 적용됩니다. "
LONG_EN = "A long English passage about retrieval augmented generation and vector stores. "


def probe_texts() -> list[str]:
    """The probe texts: the base texts, each special alone and inside a base text, and long
    texts over any token window (about 300 in all)."""
    out = list(BASE)
    for i, special in enumerate(SPECIALS):
        out.append(special)
        base = BASE[i % len(BASE)]
        middle = len(base) // 2
        out.append(base[:middle] + special + base[middle:])
        out.append(special + BASE[(i + 7) % len(BASE)] + special)
    for n in (20, 60, 120):
        out.append(LONG_KO * n)
        out.append(LONG_EN * n)
        out.append((LONG_KO + SPECIALS[n % len(SPECIALS)] + LONG_EN) * (n // 2))
    out.append("\uff1a".join(BASE) * 8)  # specials past the window's edge
    return out


def probes() -> list[tuple[str, str]]:
    """(kind, text): every probe text as a query and as a passage."""
    texts = probe_texts()
    return [("query", t) for t in texts] + [("passage", t) for t in texts]
