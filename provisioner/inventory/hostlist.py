"""Node ranges in the hostlist notation admins know from Slurm and pdsh.

`node[01-04,07]` expands to node01..node04, node07; several bracket groups multiply out
(`r[1-2]n[1-2]`). A number keeps the width of the range's first bound, so `node[01-10]` pads
and `node[8-10]` does not. `compress` is the inverse: names in, shortest notation out.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict

MAX_EXPANSION = 100_000

_GROUP = re.compile(r"\[([^\[\]]*)\]")
_TAIL = re.compile(r"^(.*?)(\d+)(\D*)$")


class HostlistError(ValueError):
    pass


def split_top(expr: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in expr:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise HostlistError(f"unbalanced ']' in {expr!r}")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise HostlistError(f"unbalanced '[' in {expr!r}")
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _expand_group(body: str, expr: str) -> list[str]:
    out: list[str] = []
    for item in body.split(","):
        item = item.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not m:
            raise HostlistError(f"bad range {item!r} in {expr!r}")
        lo_s, hi_s = m.group(1), m.group(2) or m.group(1)
        lo, hi = int(lo_s), int(hi_s)
        if hi < lo:
            raise HostlistError(f"range {item!r} in {expr!r} runs backwards")
        if hi - lo >= MAX_EXPANSION:
            raise HostlistError(f"range {item!r} in {expr!r} is too large")
        out.extend(str(n).zfill(len(lo_s)) for n in range(lo, hi + 1))
    return out


def expand_one(expr: str) -> list[str]:
    """Expand one hostlist term (no top-level commas)."""
    pieces = _GROUP.split(expr)
    if "[" in "".join(pieces[0::2]) or "]" in "".join(pieces[0::2]):
        raise HostlistError(f"unbalanced brackets in {expr!r}")
    choices = [[p] if i % 2 == 0 else _expand_group(p, expr) for i, p in enumerate(pieces)]
    total = 1
    for c in choices:
        total *= len(c)
    if total > MAX_EXPANSION:
        raise HostlistError(f"{expr!r} expands to more than {MAX_EXPANSION} names")
    return ["".join(t) for t in itertools.product(*choices)]


def expand(expr: str) -> list[str]:
    """Expand a comma list of hostlist terms, keeping order and dropping repeats."""
    seen: dict[str, None] = {}
    for term in split_top(expr):
        for name in expand_one(term):
            seen.setdefault(name, None)
    return list(seen)


def is_range(expr: str) -> bool:
    return "[" in expr or "," in expr


def compress(names: list[str] | tuple[str, ...]) -> str:
    """The shortest hostlist for `names` (ranging the last number in each name)."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    plain: list[str] = []
    for name in dict.fromkeys(names):
        m = _TAIL.match(name)
        if m and "[" not in name and "]" not in name and "," not in name:
            groups[(m.group(1), m.group(3))].append(m.group(2))
        else:
            plain.append(name)
    terms: list[str] = []
    for (prefix, suffix), nums in sorted(groups.items()):
        nums.sort(key=lambda s: (int(s), s))
        items: list[str] = []
        i = 0
        while i < len(nums):
            start = nums[i]
            width, j = len(start), i
            while (
                j + 1 < len(nums)
                and int(nums[j + 1]) == int(nums[j]) + 1
                and nums[j + 1] == str(int(nums[j + 1])).zfill(width)
            ):
                j += 1
            items.append(start if j == i else f"{start}-{nums[j]}")
            i = j + 1
        if len(items) == 1 and "-" not in items[0]:
            terms.append(f"{prefix}{items[0]}{suffix}")
        else:
            terms.append(f"{prefix}[{','.join(items)}]{suffix}")
    return ",".join(terms + sorted(plain))
