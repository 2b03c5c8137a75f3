"""The settings of a config's PART 1: `name = setting("name", "小菜鸡")` is the default unless the
environment sets XA_NAME, which `xtuner-assistant train CONFIG --set name=Alice` does for
`xtuner train`. The resolved values are what `xtuner train` dumps into the work dir.

`declared_settings` reads which settings a config (and what it inherits) declares without running
it, so a mistyped `--set nmae=Bob` is refused before training starts instead of being ignored.
"""
from __future__ import annotations

import ast
import difflib
import os
from pathlib import Path

ENV_PREFIX = "XA_"
SETTING_FUNCTIONS = ("setting", "required_setting")


class SettingError(ValueError):
    pass


def setting(name: str, default):
    """`default`, unless the environment sets XA_<NAME>; cast to the default's type. A callable
    default is called only when the environment does not set the value (e.g. fetching a model)."""
    raw = os.environ.get(ENV_PREFIX + name.upper())
    if raw is None:
        return default() if callable(default) else default
    if isinstance(default, bool):
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise SettingError(f"{ENV_PREFIX}{name.upper()}={raw!r}: expected true or false")
        return raw.lower() in ("1", "true", "yes")
    caster = type(default) if isinstance(default, (int, float)) else str
    try:
        return caster(raw)
    except ValueError:
        raise SettingError(f"{ENV_PREFIX}{name.upper()}={raw!r}: expected a {caster.__name__}") from None


def required_setting(name: str, hint: str) -> str:
    """A setting with no sensible default (e.g. a model folder only the user has)."""
    value = os.environ.get(ENV_PREFIX + name.upper(), "")
    if not value:
        raise SettingError(f"this config needs `{name}`: {hint} "
                           f"(xtuner-assistant train CONFIG --set {name}=..., or {ENV_PREFIX}{name.upper()}=... "
                           "xtuner train CONFIG)")
    return value


def settings_env(settings: dict[str, str]) -> dict[str, str]:
    """The environment of a run with `--set lr=1e-4`: XA_LR=1e-4, which the config's setting("lr", ...) reads."""
    env = dict(os.environ)
    for key, value in settings.items():
        env[ENV_PREFIX + key.upper()] = str(value)
    return env


def parse_settings(pairs: list[str] | None) -> dict[str, str]:
    """`--set NAME=VALUE` arguments as {name: value}."""
    settings = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SettingError(f"--set {pair!r}: expected NAME=VALUE, e.g. --set lr=2e-4")
        settings[key.strip()] = value
    return settings


def declared_settings(config: str | os.PathLike) -> list[str]:
    """The names a config file and its `_base_` files pass to setting()/required_setting(), read from
    their source (nothing is run, so nothing is fetched or generated)."""
    from mmengine.config import Config

    names, pending, seen = [], [Path(config)], set()
    while pending:
        path = pending.pop().resolve()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None))
                    in SETTING_FUNCTIONS and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                names.append(node.args[0].value)
        pending += [path.parent / base for base in Config._get_base_files(str(path))]
    return list(dict.fromkeys(names))


def check_settings(config: str | os.PathLike, settings: dict[str, str]) -> None:
    """Refuse a `--set` name the config does not declare, naming the ones it does."""
    known = declared_settings(config)
    for name in settings:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            raise SettingError(f"--set {name}: {config} has no setting `{name}`"
                               + (f" (did you mean `{close[0]}`?)" if close else "")
                               + f"; its settings are: {', '.join(known)}")
