"""Text that comes from tasks and callers (commands, names, details, output), shown on a terminal and never
obeyed: rich markup stays literal, and no control sequence (a title change, an OSC 52 clipboard write, a
cursor move) reaches the terminal. Pipes get the text as it is."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.text import Text

# every C0 and C1 control but tab and newline: ESC, CSI (0x9b) and OSC (0x9d) among them, and a lone CR,
# which would let a line overwrite what was shown before it
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with each control character written out as `\\xNN` (a CRLF line end stays a line end)."""
    return CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text.replace("\r\n", "\n"))


def literal(text: str, style: str = "") -> Text:
    """A rich Text of `text`, printable, with no markup read in it."""
    from rich.text import Text

    return Text(printable(text), style=style)
