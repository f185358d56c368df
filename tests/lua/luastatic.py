"""A small static checker for streamward's Lua scripts (used by test_static.py).

It is deliberately tiny: it strips comments, finds every ``redis.call`` / ``redis.pcall`` /
``rcall`` call, splits its arguments at top level and checks where keys come from. It also
parses the header block (``--[[ ... ]]``) into KEYS / ARGV / Returns documentation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Commands the scripts may use, with the positions (1-based, after the command name) of their
# key arguments; "all" = every argument is a key. A command missing here fails the check, so
# a new command is a conscious addition.
KEY_ARGS: dict[str, tuple[int, ...] | str] = {
    "TIME": (),
    "GET": (1,),
    "SET": (1,),
    "INCR": (1,),
    "DEL": "all",
    "EXISTS": "all",
    "PEXPIRE": (1,),
    "PTTL": (1,),
    "HGET": (1,),
    "HMGET": (1,),
    "HSET": (1,),
    "HSETNX": (1,),
    "HDEL": (1,),
    "HEXISTS": (1,),
    "PERSIST": (1,),
    "HINCRBY": (1,),
    "HGETALL": (1,),
    "SADD": (1,),
    "SREM": (1,),
    "SISMEMBER": (1,),
    "ZADD": (1,),
    "ZREM": (1,),
    "ZSCORE": (1,),
    "ZCOUNT": (1,),
    "ZRANGE": (1,),
    "ZRANGESTORE": (1, 2),
    "ZRANGEBYSCORE": (1,),
    "RPUSH": (1,),
    "ZCARD": (1,),
    "XADD": (1,),
    "XDEL": (1,),
    "XLEN": (1,),
    "XRANGE": (1,),
    "XREVRANGE": (1,),
    # a channel is no key (no slot): the start notice's channel comes from the inbox entry
    "PUBLISH": (),
}
# Commands no script may run: they touch the whole keyspace (or scripts/db state).
FORBIDDEN = {"KEYS", "SCAN", "RANDOMKEY", "FLUSHALL", "FLUSHDB", "SELECT", "EVAL", "EVALSHA"}

CALL_RE = re.compile(r"\b(?:redis\.call|redis\.pcall|rcall)\s*\(")
ALIAS_RE = re.compile(r"(?:local\s+)?([A-Za-z_]\w*)\s*=\s*redis\.(?:p?call)\b(?!\s*\()")
KEY_EXPR_RE = re.compile(r"KEYS\[(?:\d+|[a-z_]\w*)\]")
STRING_RE = re.compile(r"""^(['"])(.*)\1$""", re.S)


def strip_comments(src: str) -> str:
    """Lua source without comments (strings kept; comment text replaced by spaces)."""
    out: list[str] = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c in "'\"":
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            out.append(src[i : j + 1])
            i = j + 1
        elif src.startswith("--", i):
            m = re.match(r"--\[(=*)\[", src[i:])
            if m:
                end = src.find(f"]{m.group(1)}]", i)
                end = n if end == -1 else end + len(m.group(1)) + 2
            else:
                end = src.find("\n", i)
                end = n if end == -1 else end
            out.append(re.sub(r"[^\n]", " ", src[i:end]))
            i = end
        else:
            out.append(c)
            i += 1
    return "".join(out)


def mask_strings(code: str) -> str:
    """``code`` (already without comments) with string contents blanked, same length."""
    out: list[str] = []
    i, n = 0, len(code)
    while i < n:
        c = code[i]
        if c in "'\"":
            j = i + 1
            while j < n and code[j] != c:
                j += 2 if code[j] == "\\" else 1
            out.append(c + " " * (min(j, n) - i - 1) + code[j : j + 1])
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def split_args(src: str, start: int) -> tuple[list[str], int]:
    """Top-level arguments of the call whose ``(`` is just before ``start``; and the end."""
    args: list[str] = []
    depth = 0
    cur: list[str] = []
    i = start
    while i < len(src):
        c = src[i]
        if c in "'\"":
            j = i + 1
            while j < len(src) and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            cur.append(src[i : j + 1])
            i = j + 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                last = "".join(cur).strip()
                if last or args:
                    args.append(last)
                return args, i
            depth -= 1
        elif c == "," and depth == 0:
            args.append("".join(cur).strip())
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    raise ValueError("unbalanced call")


@dataclass
class RedisCall:
    line: int
    command: str | None  # None when the command is not a string literal
    args: list[str]


def redis_calls(src: str) -> list[RedisCall]:
    code = strip_comments(src)
    calls: list[RedisCall] = []
    for m in CALL_RE.finditer(mask_strings(code)):
        args, _ = split_args(code, m.end())
        line = code.count("\n", 0, m.start()) + 1
        cmd = None
        if args:
            lit = STRING_RE.match(args[0])
            if lit:
                cmd = lit.group(2).upper()
        calls.append(RedisCall(line, cmd, args[1:]))
    return calls


def key_problems(src: str) -> list[str]:
    """Every way the script may touch a key that does not arrive through KEYS."""
    code = mask_strings(strip_comments(src))
    problems: list[str] = []
    for m in ALIAS_RE.finditer(code):
        if m.group(1) != "rcall":
            problems.append(f"redis.call aliased as {m.group(1)!r} (only 'rcall' is checked)")
    for call in redis_calls(src):
        where = f"line {call.line}"
        if call.command is None:
            problems.append(f"{where}: command is not a string literal")
            continue
        if call.command in FORBIDDEN:
            problems.append(f"{where}: {call.command} is forbidden inside scripts")
            continue
        spec = KEY_ARGS.get(call.command)
        if spec is None:
            problems.append(f"{where}: {call.command} has no key spec in KEY_ARGS")
            continue
        positions = list(range(1, len(call.args) + 1)) if isinstance(spec, str) else list(spec)
        if isinstance(spec, str) and not positions:
            positions = [1]
        for pos in positions:
            if pos > len(call.args):
                problems.append(f"{where}: {call.command} has no key argument {pos}")
                continue
            expr = call.args[pos - 1]
            if not KEY_EXPR_RE.fullmatch(expr):
                problems.append(f"{where}: {call.command} key {expr!r} does not come from KEYS")
    return problems


@dataclass
class Header:
    """What a script's header block documents."""

    name: str | None
    keys: dict[str, str] = field(default_factory=dict)  # "1" or "1..n" -> description
    argv: dict[str, str] = field(default_factory=dict)  # "1", "3..", "4..3+n" -> description
    returns: list[str] = field(default_factory=list)  # return lines, first one included
    problems: list[str] = field(default_factory=list)

    @property
    def fixed_argv(self) -> list[int]:
        return sorted(int(k) for k in self.argv if k.isdigit())

    @property
    def argv_tail(self) -> tuple[int, str] | None:
        """(first index, description) of a variadic ARGV tail ``ARGV[i..]``, if documented."""
        tails = [(int(k.split("..")[0]), v) for k, v in self.argv.items() if ".." in k]
        return tails[0] if tails else None

    @property
    def documented_codes(self) -> set[int]:
        return {int(m) for line in self.returns for m in re.findall(r"\{(-?\d+)[,}]", line)}


HEADER_RE = re.compile(r"\A--\[\[\n(?P<body>.*?)\n\]\]\n", re.S)
DOC_RE = re.compile(r"^\s*(?P<kind>KEYS|ARGV)\[(?P<idx>[^\]]+)\]\s*(?P<desc>.*)$")


def parse_header(filename: str, src: str) -> Header:
    m = HEADER_RE.match(src)
    if m is None:
        return Header(None, problems=["does not open with a --[[ ... ]] header block"])
    lines = m.group("body").splitlines()
    first = lines[0].strip() if lines else ""
    head = Header(name=first)
    if first != filename:
        head.problems.append(f"header names {first!r}, not {filename!r}")
    in_returns = False
    for line in lines[1:]:
        d = DOC_RE.match(line)
        if d:
            in_returns = False
            table = head.keys if d.group("kind") == "KEYS" else head.argv
            idx = d.group("idx")
            if idx in table:
                head.problems.append(f"{d.group('kind')}[{idx}] documented twice")
            if not re.fullmatch(r"\d+|\d+\.\.(?:n|\d+\+n)?", idx):
                head.problems.append(f"unreadable index {d.group('kind')}[{idx}]")
            table[idx] = d.group("desc").strip()
        elif line.strip().startswith("Returns"):
            in_returns = True
            head.returns.append(line.strip())
        elif in_returns and line.strip():
            head.returns.append(line.strip())
        else:
            in_returns = False
    if not head.keys:
        head.problems.append("no KEYS[i] lines")
    if not head.returns:
        head.problems.append("no Returns line")
    fixed = head.fixed_argv
    if fixed != list(range(1, len(fixed) + 1)):
        head.problems.append(f"ARGV indices not 1..n: {fixed}")
    tail = head.argv_tail
    if tail is not None and tail[0] != len(fixed) + 1:
        head.problems.append(f"variadic ARGV[{tail[0]}..] does not follow ARGV[{len(fixed)}]")
    return head


def body_of(src: str) -> str:
    """The code after the header, without comments."""
    m = HEADER_RE.match(src)
    return strip_comments(src[m.end() :] if m else src)


def used_indices(src: str, kind: str) -> set[str]:
    """Index expressions used as ``KEYS[...]`` or ``ARGV[...]`` in the code.

    A shared function may index KEYS with its parameters (includes/ingestEntries.lua: two
    scripts order their KEYS differently); such a parameter stands for the integers its
    calls pass in that position, so ``f(5, 6)`` of ``function f(a, b) ... KEYS[a]`` uses 5."""
    code = mask_strings(body_of(src))
    used = {i.strip() for i in re.findall(rf"\b{kind}\[([^\]]+)\]", code)}
    for name, params in re.findall(r"\blocal function (\w+)\(([^)]*)\)", code):
        names = [p.strip() for p in params.split(",")]
        indexed = [i for i, p in enumerate(names) if p in used]
        if not indexed:
            continue
        for args in re.findall(rf"\b{name}\(([\d\s,]+)\)", code):
            values = [a.strip() for a in args.split(",")]
            used |= {values[i] for i in indexed if i < len(values)}
        used -= {names[i] for i in indexed}
    return used


def status_constants(src: str) -> dict[str, int]:
    """``local NAME = <int>`` lines with an upper-case name: the status code constants
    (includes/statusCodes.lua, inlined into every script)."""
    code = strip_comments(src)
    return {n: int(v) for n, v in re.findall(r"(?m)^local ([A-Z][A-Z_]*) = (-?\d+)\s*$", code)}


def returned_codes(src: str) -> set[int]:
    """What opens a returned table (an integer or a status constant): the status codes.

    A name that is no status constant raises KeyError: the check must not skip it."""
    code = mask_strings(body_of(src))
    names = status_constants(src)
    found = re.findall(r"\breturn\s*\{\s*(-?\d+|[A-Za-z_]\w*)\s*[,}]", code)
    return {int(m) if re.fullmatch(r"-?\d+", m) else names[m] for m in found}
