"""The spoken prompts of the mailbox menu, in English and French, and how to say things.

The prompts ship with the product as WAV files (8 kHz, 16-bit, mono) in
``media/prompts/<language>/<name>.wav``. They are generated with espeak-ng
from :data:`TEXTS` by ``python -m media.prompts.build`` (run by hand after
changing a text; the files are committed, see ``docs/voicemail.md``).

Everything the mailbox says is a list of prompt *names* put together here:

* :func:`number_names`: a whole number. 0-59 are whole prompts; 60-99 are
  composed from tens and units (English ``60 5`` "sixty five", French
  ``60 et 1`` "soixante et un", ``60 12`` "soixante-douze", ``80 1``
  "quatre-vingt-un"); hundreds and thousands add ``hundred``/``thousand``
  (French ``cent``/``mille``, with no "un" before them); 10 000 and above are
  read digit by digit. French has a feminine form for the hours and minutes
  (``une heure``, ``vingt et une minutes``): prompts ``1f``, ``21f``, ...
* :func:`datetime_names`: when a message was received, in one of the
  directory's ``read_datetime`` modes: ``none``, ``ampm`` or ``24h``.
* :func:`digit_names`: a phone number read digit by digit.

The ``*_paths`` functions give the same as file paths (:func:`prompt_path`),
ready for :meth:`media.session.MediaService.play`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

__all__ = [
    "LANGUAGES",
    "PROMPTS_DIR",
    "TEXTS",
    "Language",
    "ReadDatetime",
    "datetime_names",
    "datetime_paths",
    "digit_names",
    "digit_paths",
    "number_names",
    "number_paths",
    "position_names",
    "position_paths",
    "prompt_names",
    "prompt_path",
]

Language = Literal["en", "fr"]
ReadDatetime = Literal["none", "ampm", "24h"]

LANGUAGES: tuple[Language, ...] = ("en", "fr")
PROMPTS_DIR = Path(__file__).resolve().parent

SILENCES = {"pause": 350}
"""Prompts that are silence, not speech (milliseconds): a pause between two parts."""

_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
           "september", "october", "november", "december")

_EN: dict[str, str] = {
    "enter_pin": "Please enter your PIN, followed by the pound key.",
    "rebound_intro": "You have a call from",
    "rebound_unknown": "You have a call from an unknown number.",
    "rebound_menu": "To accept the call, press 1. To refuse it, press any other key.",
    "confirm_answer": "Press 1 to take the call.",
    "parked_on": "Call parked on",
    "wrong_pin": "Incorrect PIN.",
    "goodbye": "Goodbye.",
    "you_have": "You have",
    "new_message": "new message",
    "new_messages": "new messages",
    "old_message": "old message",
    "old_messages": "old messages",
    "and": "and",
    "no_messages": "You have no messages.",
    "message": "Message",
    "received": "Received",
    "today": "today",
    "yesterday": "yesterday",
    "on": "on",
    "at": "at",
    "oh": "oh",
    "hundred": "hundred",
    "thousand": "thousand",
    "am": "A.M.",
    "pm": "P.M.",
    "from": "From",
    "unknown_caller": "The caller's number is unknown.",
    "menu": ("To replay the message, press 1. To delete it, press 3. "
             "For the next message, press pound. For the previous message, press star. "
             "To end, press 9."),
    "deleted": "Message deleted.",
    "end_of_messages": "End of messages.",
    "menu_end": "For the previous message, press star. To end, press 9.",
    "caller_number": "You are caller number",
    "expected_wait": "Your expected wait is about",
    "minute": "minute",
    "minutes": "minutes",
    "queue_logged_in": "You are logged in.",
    "queue_logged_out": "You are logged out.",
    **{d: d.capitalize() for d in _WEEKDAYS},
    **{m: m.capitalize() for m in _MONTHS},
    **{str(n): str(n) for n in range(60)},
    **{str(n): str(n) for n in (60, 70, 80, 90)},
}

_FR: dict[str, str] = {
    "enter_pin": "Veuillez composer votre code personnel, suivi de la touche dièse.",
    "rebound_intro": "Vous avez un appel du",
    "rebound_unknown": "Vous avez un appel d'un numéro inconnu.",
    "rebound_menu": "Pour accepter l'appel, appuyez sur 1. Pour le refuser, appuyez sur "
                    "une autre touche.",
    "confirm_answer": "Appuyez sur 1 pour prendre l'appel.",
    "parked_on": "Appel mis en attente sur le",
    "wrong_pin": "Code personnel incorrect.",
    "goodbye": "Au revoir.",
    "you_have": "Vous avez",
    "new_message": "nouveau message",
    "new_messages": "nouveaux messages",
    "old_message": "ancien message",
    "old_messages": "anciens messages",
    "and": "et",
    "no_messages": "Vous n'avez aucun message.",
    "message": "Message",
    "received": "Reçu",
    "today": "aujourd'hui",
    "yesterday": "hier",
    "on": "le",
    "first": "premier",
    "at": "à",
    "hour": "heure",
    "hours": "heures",
    "noon": "midi",
    "midnight": "minuit",
    "hundred": "cent",
    "thousand": "mille",
    "am": "du matin",
    "pm": "de l'après-midi",
    "evening": "du soir",
    "from": "De la part du",
    "unknown_caller": "Le numéro de l'appelant est inconnu.",
    "menu": ("Pour réécouter le message, tapez 1. Pour le supprimer, tapez 3. "
             "Pour le message suivant, tapez dièse. Pour le message précédent, tapez étoile. "
             "Pour terminer, tapez 9."),
    "deleted": "Message supprimé.",
    "end_of_messages": "Fin des messages.",
    "menu_end": "Pour le message précédent, tapez étoile. Pour terminer, tapez 9.",
    "caller_number": "Vous êtes l'appelant numéro",
    "expected_wait": "Votre attente est estimée à environ",
    "minute": "minute",
    "minutes": "minutes",
    "queue_logged_in": "Vous êtes connecté.",
    "queue_logged_out": "Vous êtes déconnecté.",
    "monday": "lundi",
    "tuesday": "mardi",
    "wednesday": "mercredi",
    "thursday": "jeudi",
    "friday": "vendredi",
    "saturday": "samedi",
    "sunday": "dimanche",
    "january": "janvier",
    "february": "février",
    "march": "mars",
    "april": "avril",
    "may": "mai",
    "june": "juin",
    "july": "juillet",
    "august": "août",
    "september": "septembre",
    "october": "octobre",
    "november": "novembre",
    "december": "décembre",
    **{str(n): str(n) for n in range(60)},
    "60": "soixante",
    "80": "quatre-vingt",
    "1f": "une",
    "21f": "vingt et une",
    "31f": "trente et une",
    "41f": "quarante et une",
    "51f": "cinquante et une",
}

TEXTS: dict[Language, dict[str, str]] = {"en": _EN, "fr": _FR}
"""What each prompt says, per language (name -> text for espeak-ng)."""


def prompt_names(language: Language) -> tuple[str, ...]:
    """Every prompt of ``language``: the spoken ones and the silences."""
    return (*TEXTS[language], *SILENCES)


def _check_language(language: str) -> Language:
    if language == "en":
        return "en"
    if language == "fr":
        return "fr"
    raise ValueError(f"no prompts in language {language!r} (en or fr)")


def prompt_path(language: Language, name: str) -> Path:
    """The WAV file of prompt ``name`` in ``language``; ValueError for an unknown name."""
    lang = _check_language(language)
    if name not in TEXTS[lang] and name not in SILENCES:
        raise ValueError(f"no prompt {name!r} in language {lang!r}")
    return PROMPTS_DIR / lang / f"{name}.wav"


def _paths(language: Language, names: list[str]) -> list[Path]:
    return [prompt_path(language, name) for name in names]


# --- numbers ---------------------------------------------------------------------------------


def _below_100(n: int, language: Language, feminine: bool) -> list[str]:
    if language == "fr":
        if feminine and n % 10 == 1 and n != 11 and n < 60:
            return [f"{n}f"]
        if n < 60:
            return [str(n)]
        base, rest = (60, n - 60) if n < 80 else (80, n - 80)
        if rest == 0:
            return [str(base)]
        units = _below_100(rest, language, feminine)
        # "soixante et un", "soixante et onze", but "quatre-vingt-un"
        return [str(base), "and", *units] if base == 60 and rest in (1, 11) else [str(base), *units]
    if n < 60:
        return [str(n)]
    tens, unit = divmod(n, 10)
    return [str(tens * 10)] if unit == 0 else [str(tens * 10), str(unit)]


def number_names(n: int, language: Language, *, feminine: bool = False) -> list[str]:
    """The prompts saying ``n`` (0 or more). ``feminine`` matters in French only
    (``une``, ``vingt et une``...)."""
    lang = _check_language(language)
    if n < 0:
        raise ValueError(f"cannot say a negative number: {n}")
    if n >= 10_000:
        return digit_names(str(n), lang)
    names: list[str] = []
    thousands, n = divmod(n, 1000)
    if thousands:
        if not (lang == "fr" and thousands == 1):  # "mille", not "un mille"
            names.append(str(thousands))
        names.append("thousand")
    hundreds, n = divmod(n, 100)
    if hundreds:
        if not (lang == "fr" and hundreds == 1):  # "cent", not "un cent"
            names.append(str(hundreds))
        names.append("hundred")
    if n or not names:
        names += _below_100(n, lang, feminine)
    return names


def number_paths(n: int, language: Language, *, feminine: bool = False) -> list[Path]:
    """:func:`number_names` as files."""
    return _paths(language, number_names(n, language, feminine=feminine))


def position_names(position: int, minutes: int, language: Language) -> list[str]:
    """A queue caller's position ("You are caller number 2."), then, when ``minutes``
    is not 0, the expected wait ("Your expected wait is about 3 minutes."; French
    "environ une minute", feminine)."""
    names = ["caller_number", *number_names(position, language), "pause"]
    if minutes:
        names += ["expected_wait", *number_names(minutes, language, feminine=True),
                  "minute" if minutes == 1 else "minutes"]
    return names


def position_paths(position: int, minutes: int, language: Language) -> list[Path]:
    """:func:`position_names` as files."""
    return _paths(language, position_names(position, language=language, minutes=minutes))


def digit_names(text: str, language: Language) -> list[str]:
    """The digits of ``text`` one by one (a phone number; ``+`` and the rest are skipped)."""
    _check_language(language)
    return [c for c in text if c.isascii() and c.isdigit()]


def digit_paths(text: str, language: Language) -> list[Path]:
    """:func:`digit_names` as files."""
    return _paths(language, digit_names(text, language))


# --- dates and times -------------------------------------------------------------------------


def _minutes_en(minute: int) -> list[str]:
    if minute == 0:
        return []
    return ["oh", str(minute)] if minute < 10 else number_names(minute, "en")


def _time_names(hour: int, minute: int, language: Language, mode: ReadDatetime) -> list[str]:
    if language == "en":
        if mode == "24h":  # "fourteen thirty", "fourteen hundred", "nine oh five"
            tail = ["hundred"] if minute == 0 else _minutes_en(minute)
            return [*number_names(hour, "en"), *tail]
        twelve = hour % 12 or 12  # "two thirty P.M.", "twelve A.M." (midnight)
        return [*number_names(twelve, "en"), *_minutes_en(minute), "am" if hour < 12 else "pm"]
    minutes = number_names(minute, "fr", feminine=True) if minute else []
    if mode == "24h":  # "quatorze heures trente", "une heure", "zéro heure cinq"
        word = "hour" if hour <= 1 else "hours"
        return [*number_names(hour, "fr", feminine=True), word, *minutes]
    if hour == 0:
        return ["midnight", *minutes]  # "minuit cinq"
    if hour == 12:
        return ["noon", *minutes]  # "midi trente"
    twelve = hour % 12
    part = "am" if hour < 12 else "pm" if hour < 18 else "evening"
    word = "hour" if twelve == 1 else "hours"
    return [*number_names(twelve, "fr", feminine=True), word, *minutes, part]


def datetime_names(
    when: dt.datetime,
    language: Language,
    mode: ReadDatetime,
    *,
    today: dt.date | None = None,
) -> list[str]:
    """When a message was received, as prompts; ``[]`` for ``mode == "none"``.

    ``when`` is already in the mailbox owner's time zone, ``today`` is the
    owner's date now: the day is read as "today", "yesterday", or the weekday,
    month and day (and the year when it is not this year's).

    * English: "Received today at 2 30 P.M." / "Received on Tuesday March 10
      at 14 30".
    * French: "Reçu hier à 2 heures 30 de l'après-midi" / "Reçu le mardi 10
      mars à 14 heures 30"; the 1st is "premier".
    """
    lang = _check_language(language)
    if mode == "none":
        return []
    if mode not in ("ampm", "24h"):
        raise ValueError(f"read_datetime must be none, ampm or 24h, got {mode!r}")
    day = when.date()
    names = ["received"]
    if today is not None and day == today:
        names.append("today")
    elif today is not None and day == today - dt.timedelta(days=1):
        names.append("yesterday")
    else:
        weekday, month = _WEEKDAYS[day.weekday()], _MONTHS[day.month - 1]
        if lang == "en":
            names += ["on", weekday, month, *number_names(day.day, lang)]
        else:
            date = ["first"] if day.day == 1 else number_names(day.day, lang)
            names += ["on", weekday, *date, month]
        if today is None or day.year != today.year:
            names += number_names(day.year, lang)
    names.append("at")
    names += _time_names(when.hour, when.minute, lang, mode)
    return names


def datetime_paths(
    when: dt.datetime,
    language: Language,
    mode: ReadDatetime,
    *,
    today: dt.date | None = None,
) -> list[Path]:
    """:func:`datetime_names` as files."""
    return _paths(language, datetime_names(when, language, mode, today=today))
