"""The Past chats list: what each chat is called there, in which order, and which chats a search keeps.

A chat's label is its title (the first words of its first message) and the date it was started, and it is unique:
chats with the same title and minute get " (2)", " (3)"... in the order they were started, so a label does not
change when newer chats arrive. Newest first (by last change); a search keeps chats whose label holds every word
of the query, in any case; at most `MAX_SHOWN` are listed (a search reaches the older ones).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable

from webui.history import ChatSummary

MAX_SHOWN = 200
DATE_FORMAT = "%Y-%m-%d %H:%M"


def chat_labels(chats: Iterable[ChatSummary]) -> dict[str, str]:
    """Chat id -> its unique label ("title, date"), for every chat given."""
    by_age = sorted(chats, key=lambda c: (c.created, c.id))
    seen: Counter[str] = Counter()
    labels: dict[str, str] = {}
    for chat in by_age:
        base = f"{chat.title or 'New chat'}, {time.strftime(DATE_FORMAT, time.localtime(chat.created))}"
        seen[base] += 1
        labels[chat.id] = base if seen[base] == 1 else f"{base} ({seen[base]})"
    return labels


def chat_choices(chats: list[ChatSummary], query: str = "") -> list[tuple[str, str]]:
    """(label, id) of the chats to list: newest first (as `chats` come), those matching `query`, `MAX_SHOWN` at most."""
    labels = chat_labels(chats)
    words = query.casefold().split()
    shown = [(labels[c.id], c.id) for c in chats if all(w in labels[c.id].casefold() for w in words)]
    return shown[:MAX_SHOWN]
