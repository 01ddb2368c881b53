"""An email address as Marketo takes it: the one definition producers, the worker and the
HTTP API's schema (``worker/api/openapi.json``, whose email ``pattern`` and ``maxLength``
are :data:`EMAIL_PATTERN` and :data:`EMAIL_MAX_LENGTH`) share.

The rule, on the trimmed address:

- at most :data:`EMAIL_MAX_LENGTH` (254) characters, ASCII only, no whitespace or control
  character;
- exactly one ``@``;
- a local part of 1 to 64 characters, each a letter, a digit, a dot or one of
  ``!#$%&'*+/=?^_`{|}~-`` (RFC 5322 atext). Quoted local parts are refused; where the
  dots fall is not checked (mailboxes such as ``taro..yamada@`` exist);
- a domain of at least two dot-separated labels, each 1 to 63 letters, digits and hyphens,
  neither starting nor ending with a hyphen; the last label starts with a letter, so an
  IP address (``user@10.0.0.1``) is refused, as is a domain literal (``user@[10.0.0.1]``).

ASCII only: an internationalised domain is given in its ``xn--`` form (``bücher.de`` is
``xn--bcher-kva.de``), which the rule takes; a non-ASCII local part (RFC 6531) is refused,
as Marketo and most mail systems refuse it.

:data:`EMAIL_PATTERN` uses only what Python's ``re`` and ECMA-262 (JSON Schema's regex
dialect) read alike, and no lookaround, so schema fuzzers can generate from it.
:func:`check_email` spells the pattern out to say which part is wrong; it accepts exactly
the strings that match it and are not too long (tests/unit/test_lead_validation.py holds
the two together).
"""

from __future__ import annotations

from typing import Final

from producers.errors import InvalidLead

EMAIL_MAX_LENGTH: Final = 254
LOCAL_MAX_LENGTH: Final = 64
LABEL_MAX_LENGTH: Final = 63

#: RFC 5322 atext: what an unquoted local part may hold besides dots.
_ATEXT: Final = "!#$%&'*+/=?^_`{|}~-"
_LOCAL_CLASS: Final = "[A-Za-z0-9" + _ATEXT.replace("-", "") + ".-]"
_LABEL: Final = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_LAST_LABEL: Final = "[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"

#: The whole address (with :data:`EMAIL_MAX_LENGTH`), as openapi.json's email pattern.
EMAIL_PATTERN: Final = f"^{_LOCAL_CLASS}{{1,{LOCAL_MAX_LENGTH}}}@(?:{_LABEL}\\.)+{_LAST_LABEL}$"

_LOCAL_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789." + _ATEXT
)
_LABEL_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def _refuse(reason: str) -> InvalidLead:
    return InvalidLead("email", reason)


def check_email(address: str) -> None:
    """Raise ``InvalidLead("email", ...)`` saying what is wrong unless ``address`` (trimmed)
    is an email address as Marketo takes it (see the module's rule)."""
    if len(address) > EMAIL_MAX_LENGTH:
        raise _refuse(f"is longer than {EMAIL_MAX_LENGTH} characters")
    for char in address:
        if char.isspace():
            raise _refuse("contains whitespace")
        if not char.isascii():
            raise _refuse(
                "has a non-ASCII character (give an internationalised domain in its xn-- form)"
            )
        if not char.isprintable():
            raise _refuse(f"has the control character U+{ord(char):04X}")
    ats = address.count("@")
    if ats == 0:
        raise _refuse("has no @")
    if ats > 1:
        raise _refuse("has more than one @")
    local, domain = address.split("@")
    _check_local(local)
    _check_domain(domain)


def _check_local(local: str) -> None:
    if not local:
        raise _refuse("has nothing before the @")
    if len(local) > LOCAL_MAX_LENGTH:
        raise _refuse(f"has more than {LOCAL_MAX_LENGTH} characters before the @")
    for char in local:
        if char not in _LOCAL_CHARS:
            raise _refuse(
                f"has {char!r} before the @ (letters, digits and .{_ATEXT} only, unquoted)"
            )


def _check_domain(domain: str) -> None:
    if not domain:
        raise _refuse("has no domain after the @")
    if "." not in domain:
        raise _refuse("domain has no dot")
    labels = domain.split(".")
    for label in labels:
        if not label:
            raise _refuse("domain has an empty label (a dot at an end or two in a row)")
        if len(label) > LABEL_MAX_LENGTH:
            raise _refuse(f"domain has a label longer than {LABEL_MAX_LENGTH} characters")
        for char in label:
            if char not in _LABEL_CHARS:
                raise _refuse(f"domain has {char!r} (letters, digits, hyphens and dots only)")
        if label[0] == "-" or label[-1] == "-":
            raise _refuse("domain has a label that starts or ends with a hyphen")
    if not labels[-1][0].isalpha():
        raise _refuse("domain's last label does not start with a letter (an IP address?)")
