#!/usr/bin/env bash
# Claude Code PreToolUse hook for Bash and Monitor: refuse commands that poll babysit in a sleep loop
# (`sleep 60 && babysit log …`, `while …; do babysit status …; sleep …; done`, `watch "babysit status …"`)
# and point to `babysit wait`, which blocks on D-Bus signals instead. Anything else passes silently
# (exit 0), including input that is not what this hook expects: it never blocks on a parse failure.
#
# The command is read as a shell reads it, in one pass (linear time, whatever its length): words and
# quotes, operators, and the command word of each simple command behind its wrappers (`command`, `env`,
# `/bin/`…). A quoted argument is text, unless a shell will run it (`bash -c`, `eval`, `watch`).
exec python3 -c '
import itertools, json, os, re, sys

# a quoted string, an escaped character, or other text: what a shell word is made of
PART = r"""\x27[^\x27]*\x27?|"(?:[^"\\]+|\\.)*"?|\\.|"""
SIMPLE_COMMAND = re.compile(rf"""(?:{PART}[^;&|(){{}}\n\x27"\\]+)+""")  # between two operators
WORD = re.compile(rf"""(?:{PART}[^\s\x27"\\]+)+""")
QUOTE = re.compile(r"""\x27([^\x27]*)\x27?|"((?:[^"\\]+|\\.)*)"?|\\(.)""")
# a word a simple command must hold to matter here
INTERESTING = re.compile(r"\b(?:sleep|babysit|while|until|for|done|bash|sh|dash|zsh|ksh|eval|watch)\b")
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
KEYWORDS = {"while", "until", "for", "if", "then", "do", "else", "elif", "!", "time", "in", "done", "fi"}
WRAPPERS = {"command", "builtin", "exec", "nohup", "env", "nice", "timeout", "stdbuf", "sudo", "xargs"}
SHELLS = {"bash", "sh", "dash", "zsh", "ksh"}
READS = {"log", "status", "list"}


def unquoted(word):
    if "\x27" not in word and "\"" not in word and "\\" not in word:
        return word
    return QUOTE.sub(lambda m: next((g for g in m.groups() if g is not None), ""), word)


def scan(text, found, depth=0):
    """Note in `found` what `text` runs: a sleep, a babysit read (and its --name), a loop, a watched read."""
    seen = set()  # a simple command met again adds nothing: generated scripts repeat themselves
    loop = 0  # how deep in while/until/for loops the current command is
    # split and sifted by the regex engine: the loop below meets only the commands that can matter
    for segment in filter(INTERESTING.search, SIMPLE_COMMAND.findall(text)):
        if segment.lstrip().startswith("done"):
            loop = max(0, loop - 1)
        if segment in seen and not loop:
            continue
        seen.add(segment)
        words = (unquoted(w.group()) for w in itertools.islice(WORD.finditer(segment), 64))
        first = next(words, None)
        if first is None:
            continue
        if first in ("while", "until", "for"):
            loop += 1
        name = first
        for word in itertools.chain([first], words):  # the command word: behind keywords, assignments, wrappers
            name = os.path.basename(word)
            if not (word in KEYWORDS or ASSIGNMENT.match(word) or word.startswith("-") or name in WRAPPERS
                    or re.fullmatch(r"[0-9.]+[smhd]?", word)):
                break
        else:
            continue
        if name == "sleep" and next(words, None) is not None:
            found["sleeps"] = True
        elif name == "babysit" and next(words, None) in READS:
            found["polls"] = True
            found["loops"] = found.get("loops") or loop > 0  # read again and again
            rest = [] if "name" in found else list(words)
            for j, w in enumerate(rest):
                if w.startswith("--name=") or (w == "--name" and j + 1 < len(rest)):
                    found.setdefault("name", w[7:] if w.startswith("--name=") else rest[j + 1])
        elif depth < 3 and name in SHELLS | {"eval", "watch"}:
            rest = list(words)
            if name in SHELLS:
                inner = rest[rest.index("-c") + 1] if "-c" in rest[:-1] else ""
            else:  # eval, or watch behind its options (-n 5, --interval=5)
                j = 0
                while name == "watch" and j < len(rest) and (rest[j].startswith("-") or re.fullmatch(r"[0-9.]+", rest[j])):
                    j += 1
                inner = " ".join(rest[j:])
            inside = {}
            scan(inner, inside, depth + 1)
            found.update(inside, watched=found.get("watched") or (name == "watch" and inside.get("polls", False)))
        if blocked(found):
            return


def blocked(found):
    return found.get("watched") or (found.get("polls") and (found.get("sleeps") or found.get("loops")))


try:
    payload = json.load(sys.stdin)
    command = payload["tool_input"]["command"] if payload.get("tool_name") in ("Bash", "Monitor") else None
except Exception:
    sys.exit(0)
# most commands read no babysit at all, or neither sleep nor loop: nothing to parse
if not isinstance(command, str) or not re.search(r"babysit\W+(?:log|status|list)\b", command) or not re.search(
        r"\b(?:sleep|while|until|for|watch)\b", command):
    sys.exit(0)
found = {}
try:
    scan(command, found)
except Exception:
    sys.exit(0)
if not blocked(found):
    sys.exit(0)
name = found.get("name") or "NAME"
print(
    f"Do not poll babysit in a sleep loop. Run `babysit wait --name={name}` in the background instead: "
    "it blocks until the task is terminal (driven by D-Bus signals, no polling), prints runaway_risk "
    "events on stderr as they happen and the result JSON on stdout, and exits 0 only if the task "
    f"completed. Read output once with `babysit log --name={name} --tail=50`.",
    file=sys.stderr,
)
sys.exit(2)
'
