"""Mail templates: Jinja2 with StrictUndefined; HTML autoescaped, text and subject not.

Lookup per file: the plan's template_dir first, then the defaults shipped as package data in
upgrader/templates/announce/ (read through importlib.resources, so it works from a wheel)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from upgrader.errors import InputError

DEFAULTS_PACKAGE = "upgrader"
DEFAULTS_DIR = ("templates", "announce")

# What an expression in a template can raise besides Jinja's own errors.
_TEMPLATE_CODE_ERRORS = (TypeError, ValueError, ArithmeticError, AttributeError, LookupError)

_HINT = "fix the template; available variables are listed in upgrader/templates/announce/README.md"


class _TemplateLoader(jinja2.BaseLoader):
    """template_dir/<name> if it exists, else the packaged default of the same name."""

    def __init__(self, template_dir: Path | None) -> None:
        self.template_dir = template_dir

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        if "/" in template or "\\" in template or template.startswith("."):
            raise jinja2.TemplateNotFound(template)
        if self.template_dir is not None:
            path = self.template_dir / template
            if path.is_file():
                try:
                    return path.read_text(encoding="utf-8"), str(path), lambda: False
                except (OSError, UnicodeDecodeError) as exc:
                    raise InputError(f"cannot read mail template {path}: {exc}", hint=_HINT) from None
        default = resources.files(DEFAULTS_PACKAGE).joinpath(*DEFAULTS_DIR, template)
        if not default.is_file():
            raise jinja2.TemplateNotFound(template)
        return default.read_text(encoding="utf-8"), f"(default) {template}", lambda: True


class Templates:
    """Renders the templates of one template_dir (None: the defaults only)."""

    def __init__(self, template_dir: Path | None) -> None:
        if template_dir is not None and not template_dir.is_dir():
            raise InputError(
                f"announce.template_dir {template_dir} is not a directory",
                hint="template_dir is relative to the plan file; leave it out to use the default templates",
            )
        self.template_dir = template_dir
        self._env = jinja2.Environment(
            loader=_TemplateLoader(template_dir),
            undefined=jinja2.StrictUndefined,
            autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2", "html"), default_for_string=False, default=False),
            keep_trailing_newline=True,
        )

    def origin(self, name: str) -> str:
        """Where template `name` comes from, for messages: its path, or "(default) name"."""
        if self.template_dir is not None and (self.template_dir / name).is_file():
            return str(self.template_dir / name)
        return f"(default) {name}"

    def render(self, name: str, context: Mapping[str, Any]) -> str:
        """Render template file `name`; any template problem is an InputError naming it."""
        where = self.origin(name)
        try:
            return self._env.get_template(name).render(context)
        except jinja2.TemplateSyntaxError as exc:
            raise InputError(f"mail template {exc.filename or where}:{exc.lineno}: {exc.message}", hint=_HINT) from None
        except jinja2.TemplateNotFound as exc:
            raise InputError(f"mail template {where}: no template named {exc.name!r}", hint=_HINT) from None
        except jinja2.TemplateError as exc:  # UndefinedError with StrictUndefined, and the rest
            raise InputError(f"mail template {where}: {exc}", hint=_HINT) from None
        except _TEMPLATE_CODE_ERRORS as exc:  # e.g. arithmetic on None in a custom template
            raise InputError(f"mail template {where}: {type(exc).__name__}: {exc}", hint=_HINT) from None

    def render_string(self, what: str, source: str, context: Mapping[str, Any]) -> str:
        """Render a template given as text (announce.subject from the plan)."""
        try:
            return self._env.from_string(source).render(context)
        except jinja2.TemplateSyntaxError as exc:
            raise InputError(f"{what}: line {exc.lineno}: {exc.message}", hint=_HINT) from None
        except jinja2.TemplateError as exc:
            raise InputError(f"{what}: {exc}", hint=_HINT) from None
        except _TEMPLATE_CODE_ERRORS as exc:
            raise InputError(f"{what}: {type(exc).__name__}: {exc}", hint=_HINT) from None
