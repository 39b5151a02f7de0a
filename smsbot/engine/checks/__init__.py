"""`smsbot check`: find what would break a flow before any message is sent.

Errors (the check fails):

- load: what stops smsbot loading the flows (smsbot.engine.loader), among them a `return
  self.X` naming no State and a template that does not exist;
- bad-return, unknown-method: a handler returning a state's name as a string; a scheduled
  method that does not exist;
- unreachable-state: no path from the initial state reaches it;
- stuck-state: a non-final state with no way out and no timeout;
- template-variable: a template variable no start data, step data or template global provides;
- template-syntax, template-unreadable: a template Jinja cannot read;
- keyword-conflict, config: two flows triggered by one keyword on one number; a binding smsbot
  would refuse at start-up.

Warnings (each with its file, line and fix):

- ucs2: a character that sends a template as UCS-2 (70 characters a segment instead of 160);
- segments: a template whose worst case takes more segments than CheckOptions.segment_limit;
- opt-out-wording: the first message of a flow that starts conversations unprompted does not
  say how to opt out;
- timeout-after-expiry: a state timeout longer than the conversation expiry;
- unknown-return, template-variable: where the source cannot be followed, and what was skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path

from smsbot.config import Settings
from smsbot.engine.checks.flows import flow_findings, keyword_findings
from smsbot.engine.checks.report import CheckOptions, Finding, Report
from smsbot.engine.checks.templates import TemplateChecker
from smsbot.engine.flow import Flow
from smsbot.engine.loader import flow_problems, import_flows
from smsbot.engine.startdata import StartField, start_fields

__all__ = ["CheckOptions", "Finding", "Report", "check_project"]

log = logging.getLogger(__name__)


def check_project(
    flows_dir: Path, templates_dir: Path, settings: Settings, options: CheckOptions | None = None
) -> Report:
    """Check the flows in `flows_dir` and the templates in `templates_dir`.

    `settings` gives the number bindings ([numbers] in smsbot.toml); `options` what warnings
    measure against (by default from `settings`). Raises FlowLoadError only when `flows_dir`
    is missing.
    """
    if options is None:
        options = CheckOptions(
            smart_characters=settings.smart_characters,
            conversation_expiry=settings.conversation_expiry,
        )
    classes, problems = import_flows(flows_dir)
    templates = TemplateChecker(templates_dir, options, _fields(classes))
    findings: list[Finding] = []
    if not templates_dir.is_dir():
        findings.append(
            Finding(
                "error",
                "load",
                str(templates_dir),
                None,
                "the templates directory does not exist: create it, or pass --templates DIR",
            )
        )
    else:
        problems += flow_problems(classes, templates.templates)
    findings += [Finding("error", "load", p.file, p.line, p.message) for p in problems]
    named: dict[str, type[Flow]] = {}
    for cls in classes:
        if isinstance(cls.name, str) and cls.name:
            named.setdefault(cls.name, cls)
    keywords, prompted = keyword_findings(named, settings)
    findings += keywords
    for cls in named.values():
        findings += flow_findings(cls, templates, options, prompted=cls.name in prompted)
    findings += templates.findings()
    log.debug("checked %d flows and %d templates", len(named), len(templates.names()))
    return Report(list(dict.fromkeys(findings)), sorted(named), templates.names())


def _fields(classes: list[type[Flow]]) -> dict[str, StartField]:
    """Every flow's declared start fields by name: the types template samples use."""
    fields: dict[str, StartField] = {}
    for cls in classes:
        try:
            declared = start_fields(cls.start_data)
        except TypeError:
            continue  # the loader reports it
        for field in declared:
            fields.setdefault(field.name, field)
    return fields
