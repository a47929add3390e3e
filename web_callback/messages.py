"""Plain-language explanations of the attempt error codes of the contract.

The dashboard shows ``error_message`` to the person who clicked "connect", so each code maps to
one sentence that says what happened and what to do, with no technical detail and no secret.
Keeping the mapping here means the API, the CLI and any page say the same thing.
"""

from __future__ import annotations

__all__ = ["ERROR_MESSAGES", "error_message"]

ERROR_MESSAGES: dict[str, str] = {
    "access_denied": "You declined the permission request, so the account was not connected.",
    "state_invalid": "The sign-in link was not valid; please start connecting the account again.",
    "state_expired": "The sign-in took too long and the link expired; please start connecting the account again.",
    "state_reused": "This sign-in link had already been used; please start connecting the account again.",
    "token_exchange_failed": "The platform refused to complete the sign-in; please try connecting again.",
    "exchange_uncertain": (
        "We could not confirm the sign-in with the platform because it did not answer in time; "
        "please try connecting again."
    ),
    "profile_fetch_failed": "We signed in but could not read the account's profile; please try connecting again later.",
    "save_failed": "We signed in but could not save the account; please try connecting again later.",
    "login_failed": "The handle or app password was not accepted; check them and try again.",
    "app_password_required": (
        "That is the account's main password. Create an app password in Bluesky "
        "(Settings, Privacy and security, App passwords) and connect with it instead."
    ),
    "instance_unreachable": "The Mastodon server could not be reached or is not a Mastodon server; check its address.",
    "timeout": "Connecting took too long and was stopped; please try again.",
}

_FALLBACK = "Connecting the account failed; please try again."


def error_message(code: str | None) -> str | None:
    """The sentence for ``code``; a generic sentence for an unknown code; None for no code."""
    if not code:
        return None
    return ERROR_MESSAGES.get(code, _FALLBACK)
