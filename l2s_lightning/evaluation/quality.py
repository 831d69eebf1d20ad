"""An offline *proxy* of response quality on the 1-10 scale of an LM judge (coherence only, no relevance).

It is not a judgement of meaning: it only catches degenerate text, the usual failure of over-steered models.
Starting from 10 it subtracts:

* length: 4 points below 3 words, 2 points below 8 words (an empty response scores 1);
* repetition: ``8 * (0.8 - distinct-2) / 0.8`` when the share of distinct word bigrams is below 0.8
  (a loop such as "the the the ..." loses ~8 points; ordinary prose has distinct-2 above 0.9), and the same
  with distinct-1 below 0.3 on responses of 20+ words;
* non-ASCII garbage: ``12 *`` the share of non-ASCII characters, at most 6 points (curly quotes, dashes and
  similar typography are not counted);

then clips to [1, 10].
"""

from __future__ import annotations

import re

_TYPOGRAPHY = set("\u2018\u2019\u201c\u201d\u2013\u2014\u2026\u00a0\u2022\u00b0\u00e9")


def distinct_n(tokens: list[str], n: int) -> float:
    """Share of distinct n-grams among all n-grams (1.0 when there are none)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def heuristic_quality(response: str) -> float:
    """The proxy quality score of one response, in [1, 10] (see the module docstring)."""
    text = response.strip()
    if not text:
        return 1.0
    words = re.findall(r"\w+", text.lower())
    score = 10.0
    if len(words) < 3:
        score -= 4.0
    elif len(words) < 8:
        score -= 2.0
    if len(words) >= 3:
        score -= 8.0 * max(0.0, 0.8 - distinct_n(words, 2)) / 0.8
    if len(words) >= 20:
        score -= 8.0 * max(0.0, 0.3 - distinct_n(words, 1)) / 0.3
    garbage = sum(1 for ch in text if ord(ch) > 127 and ch not in _TYPOGRAPHY) / len(text)
    score -= min(6.0, 12.0 * garbage)
    return round(min(10.0, max(1.0, score)), 3)
