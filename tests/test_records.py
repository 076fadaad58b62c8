"""Names as records.py validates and normalises them: ASCII bytes, whole labels, ASCII case only."""

from __future__ import annotations

import pytest

from dockerdns.records import InvalidName, absolute, fold, is_valid_name, zone_name


@pytest.mark.parametrize(
    "name, valid",
    [
        ("db", True),
        ("db.docker.", True),
        ("DB.Docker", True),
        ("_http._tcp.web", True),
        ("a" * 63 + ".docker.", True),
        ("a" * 64 + ".docker.", False),
        (".".join(["a" * 49] * 5), True),  # 249 characters
        (".".join(["a" * 50] * 5) + "a", False),  # 255 characters
        ("db\n", False),  # `$` matches before a trailing newline; fullmatch does not
        ("db\n.docker.", False),
        ("db\r", False),
        ("db\x00", False),
        ("\u212aafka", False),  # KELVIN SIGN: str.lower() makes it "k"
        ("\u212aafka.docker.", False),
        ("\u0130stanbul", False),  # LATIN CAPITAL I WITH DOT: lower() gives two characters
        ("\uff44\uff42", False),  # fullwidth "db"
        ("caf\u00e9", False),
        ("-db", False),
        ("db-", False),
        ("d..b", False),
        ("", False),
        (".", False),
    ],
)
def test_is_valid_name(name: str, valid: bool) -> None:
    """Only ASCII letters, digits, hyphen and underscore, whole-label matches, within RFC 1035 lengths."""
    assert is_valid_name(name) is valid


@pytest.mark.parametrize("name", ["\u212aafka", "db\n.x", "x.db\n.", "\u0130.docker."])
def test_absolute_refuses_what_lower_would_mend(name: str) -> None:
    """absolute() validates before it lower-cases: `\\u212aafka` is not turned into `kafka`."""
    with pytest.raises(InvalidName):
        absolute(name, "docker")


def test_absolute_lowercases_ascii() -> None:
    """Valid names come back absolute and lower-case; surrounding spaces are not part of the name."""
    assert absolute(" KAFKA ", "Docker") == "kafka.docker."
    assert absolute("Api.Example.TEST.", "docker") == "api.example.test."


def test_fold_changes_ascii_letters_only() -> None:
    """fold() is DNS case folding (RFC 4343): A-Z only; other characters stay as they are."""
    assert fold("AbC-\u212a\u0130\u00c9") == "abc-\u212a\u0130\u00c9"
    assert zone_name("DOCKER.") == "docker."
