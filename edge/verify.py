"""Command signature checks for the gateway: the verifier :class:`edge.commands.CommandHandler` calls.

With the cloud's public key configured (``uplink.command_public_key``) a command is refused unless
it carries a valid Ed25519 signature by that key, is bound to this site, and was issued for no
longer than :data:`MAX_COMMAND_VALIDITY` (so a leaked signed command cannot stay usable for days).
Without a key (the demo) unsigned commands are accepted and a warning is logged once, because
then anyone who can publish to this gateway's command topic can open its gates.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import structlog

from protocol.models import Command
from protocol.signing import BadSignature, KeyFormatError, load_public_key, verify_command

__all__ = ["MAX_COMMAND_VALIDITY", "make_verifier"]

# The cloud caps a command's lifetime at one hour (cloud.schemas.CommandRequest.expires_in_s);
# five minutes of slack for clock differences.
MAX_COMMAND_VALIDITY = timedelta(minutes=65)

log = structlog.get_logger("steward.verify")

Verifier = Callable[[Command], str | None]


def make_verifier(
    public_key_b64: str | None,
    *,
    site_id: str | None = None,
    max_validity: timedelta = MAX_COMMAND_VALIDITY,
) -> Verifier:
    """Build the gateway's verifier: ``verify(cmd)`` returns a reason to refuse, or None to go on.

    ``public_key_b64`` is base64 of the raw key (PEM also accepted); a malformed key raises
    :class:`ValueError` here, at start-up, rather than refusing every command later. ``site_id``,
    when given, also refuses commands signed for another site (gateway ids repeat across sites).
    """
    if not public_key_b64:
        warned = False

        def accept_unsigned(cmd: Command) -> str | None:
            nonlocal warned
            if not warned:
                warned = True
                log.warning(
                    "command.signatures_not_checked",
                    hint="set uplink.command_public_key so only the cloud can command this gateway",
                )
            return None

        return accept_unsigned

    try:
        key = load_public_key(public_key_b64)
    except KeyFormatError as exc:
        raise ValueError(f"uplink.command_public_key: {exc}") from None

    def verify(cmd: Command) -> str | None:
        try:
            verify_command(cmd, key)
        except BadSignature as exc:
            return f"bad signature: {exc.reason}"
        if site_id is not None and cmd.site_id != site_id:
            return f"command is for site {cmd.site_id!r}, not this one"
        if cmd.expires_at - cmd.issued_at > max_validity:
            return f"command is valid for longer than {max_validity}; refusing it"
        return None

    return verify
