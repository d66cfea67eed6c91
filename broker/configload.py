"""Loading :class:`~broker.config.Settings` from an INI file plus ``BROKER_<SECTION>_<KEY>`` overrides.

Where settings come from, later wins:

1. built-in defaults (the dataclass defaults of :mod:`broker.config`; ``conf/broker.ini`` documents every
   one of them and a test keeps the two in step),
2. the file named by ``--config FILE``, else by ``BROKER_CONFIG``, if any,
3. environment variables ``BROKER_<SECTION>_<KEY>`` (section names contain no underscore, so
   ``BROKER_LIMITS_MAX_NODES`` is section ``limits``, key ``max_nodes``),
4. command-line options such as ``--db URL``.

Strict: an unknown section or key in the file, or an unknown ``BROKER_*`` variable, is a
:class:`~broker.errors.ConfigError` that names it. ``BROKER_CONFIG`` and ``BROKER_TEST_*`` (the test suite's
variables) are the only other ``BROKER_*`` names allowed.

Relative paths in a file are resolved against the file's directory; in the environment, against the
current directory.
"""

from __future__ import annotations

import ast
import configparser
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_type_hints

from broker.config import Settings, sections
from broker.errors import ConfigError

#: environment variable naming the configuration file
CONFIG_ENV = "BROKER_CONFIG"
#: prefix of the test suite's own variables, which configuration loading ignores
TEST_ENV_PREFIX = "BROKER_TEST_"

_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def _convert(raw: str, kind: Any, where: str, base: Path | None, key: str) -> Any:
    raw = raw.strip()
    try:
        if kind is bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if kind is int:
            for unit, factor in sorted(_UNITS.items(), key=lambda kv: -len(kv[0])):
                if raw.endswith(unit) and raw[: -len(unit)].strip().isdigit():
                    return int(raw[: -len(unit)]) * factor
            try:
                return int(raw.replace("_", ""))
            except ValueError:
                raise ValueError("expected a whole number (sizes may end in B, KiB, MiB or GiB)") from None
        if kind is float:
            try:
                return float(raw)
            except ValueError:
                raise ValueError("expected a number") from None
        if kind == tuple[str, ...]:
            items = tuple(raw.replace(",", " ").split())
            if (key.endswith("_dirs") or key == "roots") and base is not None:
                items = tuple(str((base / os.path.expanduser(i)).resolve()) for i in items)
            return items
        if key in ("config", "workdir", "catalogue") and raw and base is not None:
            return str((base / os.path.expanduser(raw)).resolve())
        return raw
    except ValueError as exc:
        raise ConfigError(f"{where}: invalid value {raw!r}: {exc}") from None


def _syntax_error(file: Path, exc: configparser.Error) -> str:
    """One line naming the file and line of an INI syntax error (configparser's own spans several lines)."""
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"{file}:{exc.lineno}: {exc.line.strip()!r} comes before any [section] header"
    if isinstance(exc, configparser.ParsingError):
        lineno, shown = exc.errors[0]  # configparser keeps the line as its repr()
        line = ast.literal_eval(shown).strip()
        return f"{file}:{lineno}: cannot parse {line!r} (expected key = value or [section])"
    if isinstance(exc, configparser.DuplicateOptionError):
        return f"{file}:{exc.lineno}: key '{exc.option}' appears twice in section [{exc.section}]"
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"{file}:{exc.lineno}: section [{exc.section}] appears twice"
    return f"{file}: {' '.join(exc.message.split())}"


def load_settings(config_file: str | os.PathLike[str] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Load settings from the file (or ``BROKER_CONFIG``) and ``BROKER_*`` overrides. Raises ConfigError."""
    env = os.environ if environ is None else environ
    path = config_file or env.get(CONFIG_ENV) or None
    known = sections()
    values: dict[str, dict[str, Any]] = {name: {} for name in known}

    if path:
        file = Path(path)
        parser = configparser.ConfigParser(interpolation=None, strict=True)
        parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case sensitive
        try:
            with open(file, encoding="utf-8") as fh:
                parser.read_file(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {file}: {exc.strerror}") from None
        except configparser.Error as exc:
            raise ConfigError(_syntax_error(file, exc)) from None
        if parser.defaults():
            # configparser would copy [DEFAULT] keys into every section (or ignore them when there is none)
            raise ConfigError(f"{file}: unknown section [{parser.default_section}]")
        base = file.resolve().parent
        for section in parser.sections():
            if section not in known:
                raise ConfigError(f"{file}: unknown section [{section}]")
            hints = get_type_hints(known[section])
            for key, raw in parser.items(section):
                if key not in hints:
                    raise ConfigError(f"{file}: unknown key '{key}' in section [{section}]")
                values[section][key] = _convert(raw, hints[key], f"{file}: [{section}] {key}", base, key)

    for name, raw in env.items():
        if not name.startswith("BROKER_") or name == CONFIG_ENV or name.startswith(TEST_ENV_PREFIX):
            continue
        rest = name[len("BROKER_"):]
        section, _, key = rest.partition("_")
        section, key = section.lower(), key.lower()
        if section not in known:
            raise ConfigError(f"unknown configuration variable {name} (no section [{section}])")
        hints = get_type_hints(known[section])
        if key not in hints:
            raise ConfigError(f"unknown configuration variable {name} (no key '{key}' in section [{section}])")
        values[section][key] = _convert(raw, hints[key], name, Path.cwd(), key)

    built = {name: cls(**values[name]) for name, cls in known.items()}
    return Settings(**built, source=str(path) if path else None)
