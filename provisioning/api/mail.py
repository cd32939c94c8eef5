"""Welcome and password-reset emails, over the directory's ``[system] smtp`` relay.

The links point to ``[system] admin_url``, the admin listener as users reach
it: never to a request's ``Host``, which whoever asks for a reset chooses (a
reset link pointing to their server would hand them the token).

A link carries a one-time token (``secrets.token_urlsafe(32)``; the store keeps
its SHA-256 only): ``POST {admin_url}/api/v1/auth/reset/{token}`` with
``{"password": "..."}`` sets the web password, once, within its lifetime (30
minutes for a reset, 72 hours in a welcome). A newer link, any new password or
the user's removal ends it.

The relay is used as :mod:`provisioning.smtp` says, as for voicemail email.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import aiosmtplib

from provisioning.api.auth import sha256
from provisioning.api.errors import ApiError
from provisioning.model import Language, System, User
from provisioning.smtp import relay
from provisioning.store import Store

__all__ = ["RESET_SECONDS", "WELCOME_SECONDS", "build_reset", "build_welcome", "issue_link",
           "mail_ready", "send_email", "send_welcome"]

RESET_SECONDS = 30 * 60
WELCOME_SECONDS = 72 * 3600

_TEXT: dict[Language, dict[str, str]] = {
    "en": {
        "welcome_subject": "Your phone: extension {ext}",
        "hello": "Hello {name},",
        "welcome_intro": "Your extension on {domain} is ready.",
        "extension": "Extension",
        "sip": "Phone (SIP) settings",
        "server": "Server",
        "user": "User name",
        "password": "Password",
        "web": "Web sign-in",
        "set_password": "Choose your web password (link valid {hours} hours, usable once):",
        "reset_subject": "Reset your web password (extension {ext})",
        "reset_intro": "Someone asked to reset the web password of extension {ext}. If it was "
                       "you, use this link within {minutes} minutes (it works once):",
        "reset_ignore": "If it was not you, ignore this email: nothing changes.",
        "how": "(The web page posts the new password to this address: "
               "POST with {\"password\": \"...\"}.)",
    },
    "fr": {
        "welcome_subject": "Votre téléphone : poste {ext}",
        "hello": "Bonjour {name},",
        "welcome_intro": "Votre poste sur {domain} est prêt.",
        "extension": "Poste",
        "sip": "Réglages du téléphone (SIP)",
        "server": "Serveur",
        "user": "Nom d'utilisateur",
        "password": "Mot de passe",
        "web": "Connexion web",
        "set_password": "Choisissez votre mot de passe web (lien valable {hours} heures, "
                        "utilisable une fois) :",
        "reset_subject": "Réinitialiser votre mot de passe web (poste {ext})",
        "reset_intro": "Quelqu'un a demandé à réinitialiser le mot de passe web du poste {ext}. "
                       "Si c'est vous, utilisez ce lien dans les {minutes} minutes (une seule "
                       "fois) :",
        "reset_ignore": "Sinon, ignorez ce message : rien ne change.",
        "how": "(La page web envoie le nouveau mot de passe à cette adresse : "
               "POST avec {\"password\": \"...\"}.)",
    },
}


def mail_ready(system: System, user: User, where: str) -> list[tuple[str, str]]:
    """What is missing to email ``user`` (each named by field); empty when all is there."""
    errors = []
    if system.smtp is None:
        errors.append(("system.smtp", "no SMTP relay configured ([system] smtp)"))
    if not system.admin_url:
        errors.append(("system.admin_url", "the public URL of the admin listener is needed "
                                           "for the links ([system] admin_url)"))
    if not user.email:
        errors.append((f"{where}.email", f"user {user.extension} has no email address"))
    return errors


def reset_link(system: System, token: str) -> str:
    return f"{system.admin_url}/api/v1/auth/reset/{token}"


async def issue_link(store: Store, extension: str, now: float, seconds: float) -> str:
    token = secrets.token_urlsafe(32)
    await store.create_reset_token(extension, sha256(token), now, now + seconds)
    return token


def _message(system: System, user: User, subject: str, body: list[str]) -> EmailMessage:
    assert system.smtp is not None
    email = EmailMessage()
    email["From"] = system.smtp.sender or f"pbx@{system.domain}"
    email["To"] = Address(display_name=user.name, addr_spec=user.email)
    email["Subject"] = subject
    email["Date"] = format_datetime(dt.datetime.now(dt.UTC))
    email["Message-ID"] = make_msgid("account", domain=system.domain)
    email.set_content("\n".join(body) + "\n")
    return email


def build_welcome(system: System, user: User, token: str) -> EmailMessage:
    """The extension, the SIP credentials (to the user's own address, the one place
    the SIP password goes) and a link to choose the web password."""
    text = _TEXT[user.voicemail.language]
    return _message(system, user, text["welcome_subject"].format(ext=user.extension), [
        text["hello"].format(name=user.name or user.extension), "",
        text["welcome_intro"].format(domain=system.domain), "",
        f"{text['extension']}: {user.extension}", "",
        f"{text['sip']}:",
        f"  {text['server']}: {system.domain}",
        f"  {text['user']}: {user.extension}",
        f"  {text['password']}: {user.password}", "",
        f"{text['web']}: {system.admin_url}/", "",
        text["set_password"].format(hours=WELCOME_SECONDS // 3600),
        reset_link(system, token), text["how"],
    ])


def build_reset(system: System, user: User, token: str) -> EmailMessage:
    text = _TEXT[user.voicemail.language]
    return _message(system, user, text["reset_subject"].format(ext=user.extension), [
        text["hello"].format(name=user.name or user.extension), "",
        text["reset_intro"].format(ext=user.extension, minutes=RESET_SECONDS // 60),
        reset_link(system, token), text["how"], "", text["reset_ignore"],
    ])


async def send_welcome(store: Store, system: System, user: User, where: str) -> str:
    """Email ``user`` their welcome (a new 72-hour link in it); the address it went to.
    :class:`ApiError` 422 naming what is missing, 502 when the relay refuses."""
    errors = mail_ready(system, user, where)
    if errors:
        raise ApiError(422, errors)
    token = await issue_link(store, user.extension, time.time(), WELCOME_SECONDS)
    await send_email(system, build_welcome(system, user, token))
    return user.email


async def send_email(system: System, email: EmailMessage) -> None:
    """Hand ``email`` to the relay; :class:`ApiError` 502 when it does not take it."""
    smtp = system.smtp
    assert smtp is not None
    try:
        await relay(smtp, email)
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        raise ApiError(502, [("system.smtp", f"the relay {smtp.host}:{smtp.port} did not "
                                             f"take the email: {type(exc).__name__}")]) from None
