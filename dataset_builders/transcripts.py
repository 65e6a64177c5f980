"""Anthropic HH-RLHF transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ...") as chat messages: read by the HH importer
and by the layouts that carry such a prompt (Nectar)."""

from __future__ import annotations

import re

_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def hh_messages(transcript: str) -> list[dict[str, str]]:
    """Parse a transcript into TRL messages; text before the first turn (rare) becomes a system message."""
    parts = _TURN.split(transcript)
    messages = [{"role": "system", "content": parts[0].strip()}] if parts[0].strip() else []
    for i in range(1, len(parts), 2):
        messages.append({"role": _ROLES[parts[i]], "content": parts[i + 1].strip()})
    return messages
