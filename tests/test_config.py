"""Settings: the shipped conf/broker.ini documents every key at its default; search order, overrides, strictness.

conf/broker.ini is read as documentation here: each key is a comment block (its doc text, ``Unit: ...``,
``Default: ...``) followed by one ``# key = default`` line, the default rendered as :func:`render` does.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from broker.config import LoggingSettings, Settings, sections
from broker.configload import load_settings
from broker.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf" / "broker.ini"
HELLO = REPO / "conf" / "examples" / "hello.xml"
BROKER = Path(sys.executable).parent / "broker"

#: a documented key: ``# key = default`` (nothing after ``=`` for an empty default)
KEY_LINE = re.compile(r"# (?P<key>[a-z][a-z0-9_]*) =(?: (?P<value>.*))?")
SECTION_LINE = re.compile(r"\[(?P<name>[^\]]*)\]")
SIZES = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


def render(value, unit: str) -> str:
    """A default as conf/broker.ini shows it: sizes in the largest whole binary unit, lists space separated."""
    if isinstance(value, tuple):
        return " ".join(value)
    if isinstance(value, int) and unit == "bytes":
        for suffix, factor in SIZES:
            if value and value % factor == 0:
                return f"{value // factor}{suffix}"
    return str(value)


@dataclasses.dataclass
class Documented:
    section: str
    key: str
    value: str
    #: the comment block right above the ``# key =`` line, whitespace collapsed
    comment: str
    line: int


def documented(path: Path = CONF) -> list[Documented]:
    """Every ``# key = default`` line of the file with its section and the comment block above it."""
    found = []
    section = ""
    block: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if match := SECTION_LINE.fullmatch(line):
            section, block = match["name"], []
        elif match := KEY_LINE.fullmatch(line):
            found.append(Documented(section, match["key"], match["value"] or "",
                                    " ".join(" ".join(block).split()), number))
            block = []
        elif line.startswith("#"):
            block.append(line.lstrip("#"))
        else:
            block = []
    return found


def fields_of_every_section():
    """(section, field) for every setting of broker.config."""
    return [(name, f) for name, cls in sections().items() for f in dataclasses.fields(cls)]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def error_of(config_file=None, environ=None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file, environ or {})
    return str(caught.value)


# ------------------------------------------------------------------------ the shipped file as documentation

def test_the_shipped_file_documents_every_key_exactly_once_at_its_default():
    entries = documented()
    seen = [(e.section, e.key) for e in entries]
    assert len(seen) == len(set(seen)), f"keys documented twice: {sorted(k for k in seen if seen.count(k) > 1)}"
    assert set(seen) == {(section, f.name) for section, f in fields_of_every_section()}
    defaults = Settings()
    shown = {(e.section, e.key): e.value for e in entries}
    for section, f in fields_of_every_section():
        default = getattr(getattr(defaults, section), f.name)
        assert shown[section, f.name] == render(default, f.metadata["unit"]), f"[{section}] {f.name}"


def test_each_documented_key_is_preceded_by_its_doc_text_unit_and_default():
    comments = {(e.section, e.key): e.comment for e in documented()}
    defaults = Settings()
    for section, f in fields_of_every_section():
        comment = comments[section, f.name]
        doc = " ".join(f.metadata["doc"].split())
        assert doc in comment, f"[{section}] {f.name}: doc text missing from {comment!r}"
        if f.metadata["unit"]:
            assert f"Unit: {f.metadata['unit']}" in comment, f"[{section}] {f.name}"
        shown = render(getattr(getattr(defaults, section), f.name), f.metadata["unit"])
        assert f"Default: {shown or '(empty)'}" in comment, f"[{section}] {f.name}"


def test_every_section_is_in_the_shipped_file_with_its_description():
    text = CONF.read_text(encoding="utf-8")
    headers = [m["name"] for line in text.splitlines() if (m := SECTION_LINE.fullmatch(line))]
    assert headers == list(sections())
    for name, cls in sections().items():
        assert f"# [{name}] {cls.__doc__}" in text


def test_uncommenting_every_documented_line_gives_the_built_in_defaults(tmp_path):
    lines = CONF.read_text(encoding="utf-8").splitlines()
    active = [line for line in lines if line and not line.startswith("#") and not SECTION_LINE.fullmatch(line)]
    assert active == ["config = logging.ini"], "only [logging] config is set in the shipped file"
    uncommented = [line[2:] if KEY_LINE.fullmatch(line) else line for line in lines if line not in active]
    copy = tmp_path / "all-defaults.ini"
    copy.write_text("\n".join(uncommented) + "\n", encoding="utf-8")
    assert dataclasses.replace(load_settings(copy, {}), source=None) == Settings()


def test_loading_the_shipped_file_changes_nothing_but_the_logging_config():
    settings = load_settings(CONF, {})
    assert settings.source == str(CONF)
    assert dataclasses.replace(settings, source=None, logging=LoggingSettings()) == Settings()
    assert settings.logging.config == str(CONF.parent / "logging.ini")
    assert Path(settings.logging.config).is_file()


def test_the_shipped_logging_config_is_concise_on_stderr_and_quiets_spyne_and_stomp():
    script = textwrap.dedent(f"""
        import logging
        from broker.cli import _setup_logging
        from broker.configload import load_settings
        _setup_logging(load_settings({str(CONF)!r}, {{}}))
        logging.getLogger("broker.check").info("shown")
        logging.getLogger("broker.check").debug("hidden: broker is at INFO")
        logging.getLogger("spyne.server").info("hidden: spyne is at WARNING")
        logging.getLogger("stomp.py").info("hidden: stomp.py is at WARNING")
        logging.getLogger("stomp.py").warning("shown too")
        logging.getLogger("elsewhere").info("root is at INFO")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    lines = result.stderr.splitlines()
    assert len(lines) == 3, lines
    assert re.fullmatch(rf"{stamp} INFO broker\.check: shown", lines[0])
    assert re.fullmatch(rf"{stamp} WARNING stomp\.py: shown too", lines[1])
    assert re.fullmatch(rf"{stamp} INFO elsewhere: root is at INFO", lines[2])


# ------------------------------------------------------------------------------------------- search order

def test_without_a_file_or_variables_the_built_in_defaults_apply():
    assert load_settings(None, {}) == Settings()


def test_broker_config_names_the_file_when_no_config_option_is_given(tmp_path):
    env_file = write(tmp_path / "env.ini", "[limits]\nmax_nodes = 7\n")
    settings = load_settings(None, {"BROKER_CONFIG": str(env_file)})
    assert settings.limits.max_nodes == 7
    assert settings.source == str(env_file)


def test_the_config_option_beats_broker_config(tmp_path):
    env_file = write(tmp_path / "env.ini", "[limits]\nmax_nodes = 7\nmax_members = 70\n")
    option_file = write(tmp_path / "option.ini", "[limits]\nmax_nodes = 9\n")
    settings = load_settings(option_file, {"BROKER_CONFIG": str(env_file)})
    assert settings.limits.max_nodes == 9
    # the files are not merged: the other file's keys do not apply either
    assert settings.limits.max_members == Settings().limits.max_members
    assert settings.source == str(option_file)


def test_environment_variables_beat_the_file(tmp_path):
    config = write(tmp_path / "c.ini", "[limits]\nmax_nodes = 9\nmax_members = 90\n")
    settings = load_settings(config, {"BROKER_LIMITS_MAX_NODES": "5"})
    assert (settings.limits.max_nodes, settings.limits.max_members) == (5, 90)


# ------------------------------------------------------------------------------------ environment overrides

def test_an_integer_override_is_converted():
    assert load_settings(None, {"BROKER_LIMITS_MAX_NODES": "5"}).limits.max_nodes == 5


def test_the_database_url_can_come_from_the_environment():
    url = "postgresql+psycopg://broker@db.example.org:5433/broker"
    settings = load_settings(None, {"BROKER_DATABASE_URL": url})
    assert settings.database.url == url
    assert settings.database_url() == url


def test_a_list_value_is_space_separated():
    settings = load_settings(None, {"BROKER_DESCRIPTION_ALLOWED_DIRECTIVES": " qos   nice "})
    assert settings.description.allowed_directives == ("qos", "nice")


def test_an_empty_list_value_clears_the_list():
    settings = load_settings(None, {"BROKER_DESCRIPTION_ALLOWED_DIRECTIVES": ""})
    assert settings.description.allowed_directives == ()


@pytest.mark.parametrize(("text", "expected"), [
    ("8MiB", 8 * 1024**2), ("8 MiB", 8 * 1024**2), ("64KiB", 64 * 1024), ("2GiB", 2 * 1024**3),
    ("512B", 512), ("1_000_000", 1_000_000), ("4096", 4096),
])
def test_sizes_accept_binary_units(text, expected, tmp_path):
    assert load_settings(None, {"BROKER_LIMITS_MAX_FILE_BYTES": text}).limits.max_file_bytes == expected
    config = write(tmp_path / "c.ini", f"[staging]\nmax_bytes = {text}\n")
    assert load_settings(config, {}).staging.max_bytes == expected


def test_seconds_are_decimal_numbers():
    assert load_settings(None, {"BROKER_ENGINE_TICK_INTERVAL": "0.05"}).engine.tick_interval == 0.05


def test_relative_paths_in_variables_resolve_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None, {"BROKER_DESCRIPTION_INCLUDE_DIRS": "scripts", "BROKER_ENGINE_WORKDIR": "w"})
    assert settings.description.include_dirs == (str(tmp_path.resolve() / "scripts"),)
    assert settings.engine.workdir == str(tmp_path.resolve() / "w")


# ------------------------------------------------------------------------------------------------ strictness

def test_an_unknown_key_in_the_file_is_an_error_naming_it(tmp_path):
    config = write(tmp_path / "c.ini", "[limits]\nmax_nodez = 5\n")
    assert error_of(config) == f"{config}: unknown key 'max_nodez' in section [limits]"


def test_an_unknown_section_is_an_error_naming_it(tmp_path):
    config = write(tmp_path / "c.ini", "[limit]\nmax_nodes = 5\n")
    assert error_of(config) == f"{config}: unknown section [limit]"


def test_a_default_section_is_an_error_instead_of_leaking_into_every_section(tmp_path):
    config = write(tmp_path / "c.ini", "[DEFAULT]\nmax_nodes = 5\n[limits]\n")
    assert error_of(config) == f"{config}: unknown section [DEFAULT]"


def test_an_unknown_broker_variable_is_an_error_naming_it():
    assert "BROKER_LIMITS_MAX_NODEZ" in error_of(None, {"BROKER_LIMITS_MAX_NODEZ": "5"})
    assert "BROKER_LIMIT_MAX_NODES" in error_of(None, {"BROKER_LIMIT_MAX_NODES": "5"})


def test_a_bad_value_in_a_variable_is_an_error_naming_it_and_its_value():
    message = error_of(None, {"BROKER_LIMITS_MAX_NODES": "lots"})
    assert message.startswith("BROKER_LIMITS_MAX_NODES: invalid value 'lots': expected a whole number")


def test_a_bad_value_in_the_file_is_an_error_naming_the_file_section_and_key(tmp_path):
    config = write(tmp_path / "c.ini", "[database]\nbusy_timeout = soon\n")
    assert error_of(config) == f"{config}: [database] busy_timeout: invalid value 'soon': expected a number"


def test_a_syntax_error_names_the_file_and_line(tmp_path):
    garbage = write(tmp_path / "garbage.ini", "[limits]\nmax_nodes = 5\nnot a setting\n")
    assert error_of(garbage) == (f"{garbage}:3: cannot parse 'not a setting' "
                                 "(expected key = value or [section])")
    headless = write(tmp_path / "headless.ini", "# settings\nmax_nodes = 5\n")
    assert error_of(headless) == f"{headless}:2: 'max_nodes = 5' comes before any [section] header"
    twice = write(tmp_path / "twice.ini", "[limits]\nmax_nodes = 5\nmax_nodes = 6\n")
    assert error_of(twice) == f"{twice}:3: key 'max_nodes' appears twice in section [limits]"


def test_a_missing_file_is_an_error_naming_it(tmp_path):
    assert error_of(tmp_path / "missing.ini").startswith(f"cannot read configuration file {tmp_path}/missing.ini")


def test_test_suite_variables_and_broker_config_are_not_overrides(tmp_path):
    environ = {"BROKER_TEST_POSTGRES_URL": "postgresql://elsewhere/x", "BROKER_TEST_ANYTHING": "1",
               "BROKER_CONFIG": ""}
    assert load_settings(None, environ) == Settings()


# ----------------------------------------------------------------------------------------- relative paths

def test_relative_paths_in_a_file_resolve_against_its_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the file's directory
    config = write(tmp_path / "etc" / "broker.ini", """
        [description]
        include_dirs = scripts ../shared /abs/dir
        [engine]
        workdir = work
        [staging]
        roots = data
        [logging]
        config = logging.ini
    """)
    etc = (tmp_path / "etc").resolve()
    settings = load_settings(config, {})
    assert settings.description.include_dirs == (str(etc / "scripts"), str(tmp_path.resolve() / "shared"),
                                                 "/abs/dir")
    assert settings.engine.workdir == str(etc / "work")
    assert settings.staging.roots == (str(etc / "data"),)
    assert settings.logging.config == str(etc / "logging.ini")


def test_a_home_relative_path_expands_to_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = write(tmp_path / "c.ini", "[staging]\nroots = ~/data\n")
    assert load_settings(config, {}).staging.roots == (str((tmp_path / "home" / "data").resolve()),)


def test_the_path_inside_a_database_url_is_kept_verbatim(tmp_path):
    config = write(tmp_path / "c.ini", "[database]\nurl = sqlite:///relative.db\n")
    assert load_settings(config, {}).database.url == "sqlite:///relative.db"


# ---------------------------------------------------------------------------------------- through the CLI

def broker(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_") or k.startswith("BROKER_TEST_")}
    return subprocess.run([str(BROKER), *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**clean, **(env or {})})


def test_the_cli_reports_an_unknown_key_in_one_line_and_exits_2(tmp_path):
    bad = write(tmp_path / "bad.ini", "[limits]\nmax_nodez = 5\n")
    result = broker("--config", str(bad), "validate", "x.xml")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"broker: {bad}: unknown key 'max_nodez' in section [limits]\n"


def test_the_cli_reports_a_bad_variable_in_one_line_and_exits_2():
    result = broker("validate", str(HELLO), env={"BROKER_LIMITS_MAX_NODES": "many"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "broker: BROKER_LIMITS_MAX_NODES: invalid value 'many': expected a whole number "
        "(sizes may end in B, KiB, MiB or GiB)"]


def test_the_cli_validates_with_the_shipped_configuration():
    result = broker("--config", "conf/broker.ini", "validate", "conf/examples/hello.xml")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "conf/examples/hello.xml: valid (1 node definition, 0 sweeps: 1 node to run)\n"
    assert result.stderr == ""


def test_the_cli_uses_broker_config_when_no_option_is_given(tmp_path):
    bad = write(tmp_path / "bad.ini", "[limits]\nmax_nodez = 5\n")
    result = broker("validate", str(HELLO), env={"BROKER_CONFIG": str(bad)})
    assert result.returncode == 2
    assert "max_nodez" in result.stderr


def test_the_cli_reports_an_unusable_logging_config_in_one_line_and_exits_2(tmp_path):
    write(tmp_path / "logging.ini", "[loggers]\nkeys = root\n")  # no handlers or formatters sections
    config = write(tmp_path / "broker.ini", "[logging]\nconfig = logging.ini\n")
    result = broker("--config", str(config), "validate", str(HELLO))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"broker: [logging] config {tmp_path.resolve()}/logging.ini: "
                                                   "not a usable logging configuration"), lines


def test_the_cli_reports_an_unknown_log_level_in_one_line_and_exits_2():
    result = broker("validate", str(HELLO), env={"BROKER_LOGGING_LEVEL": "LOUD"})
    assert result.returncode == 2
    assert result.stderr == ("broker: [logging] level: invalid value 'LOUD' "
                             "(expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL)\n")
