"""The SMS Jinja environment: strict variables, local-time filters, segment and encoding checks."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from smsbot.sms.templates import RenderedSms, SmsTemplates, TemplateError
from smsbot.sms.text import Encoding

APPOINTMENT = "2026-01-15T10:30:00+00:00"  # a Thursday, winter: London is UTC
SUMMER = dt.datetime(2026, 7, 16, 9, 5, tzinfo=dt.UTC)  # a Thursday, London is UTC+1


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "templates"


def make(root: Path, files: dict[str, str], **options: object) -> SmsTemplates:
    write(root, files)
    return SmsTemplates(root, **options)  # type: ignore[arg-type]


# --- rendering ---------------------------------------------------------------------------------


def test_render_returns_text_encoding_segments_and_name(root: Path) -> None:
    sms = make(root, {"appointment/ask.txt": "Hi {{ name }}, can you make it? Reply YES or NO\n"})
    result = sms.render("appointment/ask.txt", {"name": "Sam"})
    assert result == RenderedSms(
        text="Hi Sam, can you make it? Reply YES or NO",
        encoding=Encoding.GSM7,
        segments=1,
        template="appointment/ask.txt",
    )


def test_block_tags_leave_no_blank_lines_and_output_is_stripped(root: Path) -> None:
    source = """
    {% if late %}
    Sorry we are late.
    {% endif %}
    See you soon.

"""
    sms = make(root, {"t.txt": source})
    assert sms.render("t.txt", {"late": True}).text == "Sorry we are late.\n    See you soon."
    assert sms.render("t.txt", {"late": False}).text == "See you soon."


def test_no_html_escaping(root: Path) -> None:
    sms = make(root, {"t.txt": "{{ shop }}"})
    assert sms.render("t.txt", {"shop": "Fish & <Chips>"}).text == "Fish & <Chips>"


def test_includes_work(root: Path) -> None:
    sms = make(
        root, {"t.txt": "Hi. {% include 'footer.txt' %}", "footer.txt": "Reply STOP to opt out"}
    )
    assert sms.render("t.txt", {}).text == "Hi. Reply STOP to opt out"


def test_render_string(root: Path) -> None:
    sms = SmsTemplates(root)
    result = sms.render_string("Hello {{ name }}", {"name": "Ana"})
    assert (result.text, result.template) == ("Hello Ana", None)
    # the compiled source is reused, the context is not
    assert sms.render_string("Hello {{ name }}", {"name": "Bo"}).text == "Hello Bo"


def test_inline_templates_are_sandboxed(root: Path) -> None:
    sms = SmsTemplates(root)
    with pytest.raises(TemplateError, match="the inline template"):
        sms.render_string("{{ ''.__class__.__mro__[1].__subclasses__() }}", {})


# --- errors -----------------------------------------------------------------------------------


def test_missing_template(root: Path) -> None:
    sms = SmsTemplates(root)
    with pytest.raises(TemplateError) as caught:
        sms.render("appointment/ask.txt", {})
    assert str(caught.value) == (
        f"template 'appointment/ask.txt' not found in {root}/: create it or fix the name"
    )


def test_undefined_variable_names_template_variable_and_fix(root: Path) -> None:
    sms = make(root, {"appointment/ask.txt": "Hi {{ name }}"})
    with pytest.raises(TemplateError) as caught:
        sms.render("appointment/ask.txt", {})
    assert str(caught.value) == (
        "template 'appointment/ask.txt' uses 'name', which was not provided: pass it to"
        " convo.reply(..., name=...) or put it in the conversation data"
    )


def test_undefined_variable_in_an_include_names_the_included_template(root: Path) -> None:
    sms = make(root, {"t.txt": "Hi {% include 'parts/sign.txt' %}", "parts/sign.txt": "{{ shop }}"})
    with pytest.raises(TemplateError, match=r"template 'parts/sign\.txt' uses 'shop'"):
        sms.render("t.txt", {})


def test_missing_attribute_names_template_and_line(root: Path) -> None:
    sms = make(root, {"t.txt": "Hi\n{{ patient.surname }}"})
    with pytest.raises(TemplateError, match=r"template 't.txt' on line 2 .*surname"):
        sms.render("t.txt", {"patient": {"name": "Sam"}})


def test_syntax_error_names_file_and_line(root: Path) -> None:
    sms = make(root, {"t.txt": "Hi\n{% if x %}\nno end"})
    with pytest.raises(TemplateError, match=r"template 't.txt' has a syntax error on line 3"):
        sms.render("t.txt", {"x": 1})


def test_syntax_error_inline(root: Path) -> None:
    with pytest.raises(TemplateError, match="the inline template has a syntax error on line 1"):
        SmsTemplates(root).render_string("{{ name ", {})


def test_other_runtime_errors_name_template_and_line(root: Path) -> None:
    sms = make(root, {"t.txt": "\n\n{{ 1 / n }}"})
    with pytest.raises(
        TemplateError, match=r"template 't.txt' failed on line 3: ZeroDivisionError"
    ):
        sms.render("t.txt", {"n": 0})


def test_empty_message_is_refused(root: Path) -> None:
    sms = make(root, {"t.txt": "{% if x %}Hi{% endif %}\n"})
    with pytest.raises(TemplateError, match=r"template 't\.txt' is an empty message"):
        sms.render("t.txt", {"x": False})


def test_unknown_time_zone(root: Path) -> None:
    sms = make(root, {"t.txt": "Hi"})
    with pytest.raises(TemplateError, match="'Mars/Olympus', which is not an IANA time zone"):
        sms.render("t.txt", {}, timezone="Mars/Olympus")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_segments": 0}, "max_segments"),
        ({"segment_policy": "ignore"}, "segment_policy"),
    ],
)
def test_bad_options(root: Path, options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SmsTemplates(root, **options)  # type: ignore[arg-type]


# --- date and time filters --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "zone", "expected"),
    [
        ("{{ at | date }}", "Europe/London", "Thu 15 Jan"),
        ("{{ at | time }}", "Europe/London", "10:30"),
        ("{{ at | time('12h') }}", "Europe/London", "10:30am"),
        ("{{ at | datetime }}", "Europe/London", "Thu 15 Jan at 10:30"),
        ("{{ at | datetime('12h') }}", "America/New_York", "Thu 15 Jan at 5:30am"),
        ("{{ at | time }}", "Asia/Kolkata", "16:00"),
        ("{{ at | date }}", "Pacific/Kiritimati", "Fri 16 Jan"),  # UTC+14: already tomorrow
        ("{{ at | date('%d/%m/%Y') }}", "Europe/London", "15/01/2026"),
        ("{{ at | datetime('%H.%M on %A') }}", "Europe/London", "10.30 on Thursday"),
    ],
)
def test_filters_show_the_recipients_local_time(
    root: Path, source: str, zone: str, expected: str
) -> None:
    sms = SmsTemplates(root)
    assert sms.render_string(source, {"at": APPOINTMENT}, timezone=zone).text == expected


def test_filters_take_aware_datetimes_and_z_strings(root: Path) -> None:
    sms = SmsTemplates(root)
    source = "{{ a | datetime }} / {{ b | time('12h') }}"
    context = {"a": SUMMER, "b": "2026-07-16T23:45:00Z"}
    result = sms.render_string(source, context, timezone="Europe/London")
    assert result.text == "Thu 16 Jul at 10:05 / 12:45am"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("00:00", "12:00am"), ("11:59", "11:59am"), ("12:00", "12:00pm"), ("13:07", "1:07pm")],
)
def test_twelve_hour_clock(root: Path, value: str, expected: str) -> None:
    result = SmsTemplates(root).render_string(
        "{{ t | time('12h') }}", {"t": f"2026-01-15T{value}:00+00:00"}
    )
    assert result.text == expected


def test_zone_can_be_a_zoneinfo(root: Path) -> None:
    result = SmsTemplates(root).render_string(
        "{{ t | time }}", {"t": SUMMER}, timezone=ZoneInfo("Europe/London")
    )
    assert result.text == "10:05"


def test_date_filter_takes_plain_dates(root: Path) -> None:
    sms = SmsTemplates(root)
    context = {"a": dt.date(2026, 1, 15), "b": "2026-01-16"}
    assert (
        sms.render_string("{{ a | date }}, {{ b | date }}", context).text
        == "Thu 15 Jan, Fri 16 Jan"
    )


def test_naive_datetime_names_template_and_value(root: Path) -> None:
    sms = make(root, {"reminder.txt": "See you at\n{{ at | time }}"})
    with pytest.raises(TemplateError) as caught:
        sms.render("reminder.txt", {"at": dt.datetime(2026, 1, 15, 10, 30)})
    message = str(caught.value)
    assert message.startswith("template 'reminder.txt' on line 2 gives the time filter")
    assert "datetime.datetime(2026, 1, 15, 10, 30)" in message
    assert "no UTC offset" in message


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("2026-01-15T10:30:00", "'2026-01-15T10:30:00', which has no UTC offset"),
        ("tomorrow", "'tomorrow', which is not an ISO 8601 date and time"),
        ("2026-13-01T00:00Z", "'2026-13-01T00:00Z', which is not an ISO 8601 date and time"),
        (42, "42, which is not a date and time"),
    ],
)
def test_bad_times_name_the_value(root: Path, value: object, why: str) -> None:
    with pytest.raises(TemplateError) as caught:
        SmsTemplates(root).render_string("{{ v | datetime }}", {"v": value})
    assert str(caught.value).startswith(
        f"the inline template on line 1 gives the datetime filter {why}: pass an aware datetime"
    )


def test_time_filter_refuses_plain_dates(root: Path) -> None:
    with pytest.raises(TemplateError, match="not a date and time"):
        SmsTemplates(root).render_string("{{ v | time }}", {"v": dt.date(2026, 1, 15)})


def test_renders_do_not_share_zones(root: Path) -> None:
    sms = SmsTemplates(root)
    london = sms.render_string("{{ t | time }}", {"t": APPOINTMENT}, timezone="Europe/London")
    tokyo = sms.render_string("{{ t | time }}", {"t": APPOINTMENT}, timezone="Asia/Tokyo")
    assert (london.text, tokyo.text) == ("10:30", "19:30")


# --- segments and smart characters -------------------------------------------------------------


def test_over_the_limit_warns_with_counts_but_never_the_body(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sms = make(root, {"long.txt": "{{ secret }} " * 60}, max_segments=2)
    with caplog.at_level(logging.DEBUG, logger="smsbot.sms.templates"):
        result = sms.render("long.txt", {"secret": "Hunter2xyz"})
    assert result.segments == 5
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "template 'long.txt' renders to 5 segments, over the limit of 2" in record.getMessage()
    assert "Hunter2xyz" not in caplog.text


def test_over_the_limit_fails_under_fail_policy(root: Path) -> None:
    sms = make(root, {"long.txt": "x" * 161 * 4}, max_segments=4, segment_policy="fail")
    with pytest.raises(TemplateError) as caught:
        sms.render("long.txt", {})
    assert str(caught.value) == (
        "template 'long.txt' renders to 5 segments, over the limit of 4: shorten it or raise"
        " SMSBOT_MAX_SEGMENTS"
    )


def test_at_the_limit_is_fine(root: Path) -> None:
    sms = make(root, {"t.txt": "x" * 153 * 2}, max_segments=2, segment_policy="fail")
    assert sms.render("t.txt", {}).segments == 2


def test_smart_characters_are_swapped_when_that_makes_gsm7(root: Path) -> None:
    sms = make(root, {"t.txt": "We’re open – see you “soon”…"})
    result = sms.render("t.txt", {})
    assert (result.text, result.encoding) == ('We\'re open - see you "soon"...', Encoding.GSM7)


def test_smart_characters_kept_when_the_message_is_ucs2_anyway(root: Path) -> None:
    # in UCS-2 the swap saves nothing, and … -> ... would cost two more characters
    sms = make(root, {"t.txt": "We’re open… 🎉"})
    result = sms.render("t.txt", {})
    assert (result.text, result.encoding) == ("We’re open… 🎉", Encoding.UCS2)


def test_smart_characters_off(root: Path) -> None:
    sms = make(root, {"t.txt": "We’re open"}, smart_characters=False)
    assert sms.render("t.txt", {}).encoding is Encoding.UCS2


def test_check_text_for_plain_text(root: Path) -> None:
    sms = SmsTemplates(root, max_segments=1, segment_policy="fail")
    assert sms.check_text("It’s done", name="api").text == "It's done"
    assert sms.check_text("It’s done").template is None
    with pytest.raises(TemplateError, match="the inline template renders to 2 segments"):
        sms.check_text("x" * 161)
    with pytest.raises(TemplateError, match="empty message"):
        sms.check_text("  \n")


# --- discovery --------------------------------------------------------------------------------


def test_exists_and_names(root: Path) -> None:
    sms = make(
        root,
        {"b.txt": "B", "appointment/ask.txt": "{% if %}", ".hidden.txt": "x", ".git/HEAD": "x"},
    )
    assert sms.exists("appointment/ask.txt")  # even with a syntax error
    assert not sms.exists("appointment/nope.txt")
    assert not sms.exists("../outside.txt")
    assert sms.names() == ["appointment/ask.txt", "b.txt"]


def test_names_of_a_missing_directory(tmp_path: Path) -> None:
    assert SmsTemplates(tmp_path / "nowhere").names() == []


def test_undeclared_variables(root: Path) -> None:
    source = (
        "{% set greeting = 'Hi' %}{{ greeting }} {{ name }}, {{ at | datetime }}"
        "{% for item in items %}{{ item }}{{ loop.index }}{% endfor %}{{ range(3) | list }}"
    )
    sms = make(root, {"t.txt": source})
    assert sms.undeclared_variables("t.txt") == {"name", "at", "items"}


def test_undeclared_variables_errors(root: Path) -> None:
    sms = make(root, {"bad.txt": "{{ x"})
    with pytest.raises(TemplateError, match=r"template 'bad\.txt' has a syntax error"):
        sms.undeclared_variables("bad.txt")
    with pytest.raises(TemplateError, match="not found"):
        sms.undeclared_variables("gone.txt")


def test_a_render_sees_jinjas_globals_and_leaves_the_context_alone(root: Path) -> None:
    # SmsTemplates._render hands Jinja one merged dict (shared=True): the globals must still
    # be there, a {% set %} must not leak into the caller's mapping, and a name the context
    # gives wins over a global of the same name.
    sms = make(root, {"t.txt": "{% set n = 2 %}{{ range(n) | list }} {{ dict(a=1) }} {{ lipsum }}"})
    context = {"lipsum": "mine"}
    assert sms.render("t.txt", context).text == "[0, 1] {'a': 1} mine"
    assert context == {"lipsum": "mine"}
    ns = "{% set s = namespace(k=0) %}{% for i in range(3) %}{% set s.k = s.k + i %}{% endfor %}"
    assert sms.render_string(ns + "{{ s.k }}", {}).text == "3"
