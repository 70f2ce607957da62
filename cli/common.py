"""What every command shares: --config FILE.yaml, --quiet, one-line errors for user mistakes, and the old
spellings of renamed options (accepted for one release, with a one-line notice)."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from featcache.common.errors import FeatcacheError

MAX_MESSAGE = 1000  # characters of an error line: the start (what and where) and the end (the remedy) are kept


def one_line(message: str, limit: int = MAX_MESSAGE) -> str:
    """A message as one line of bounded length: line breaks (a file name may hold one) shown as \\n, control
    characters escaped, and the middle of an over-long message cut."""
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(message))
    if len(text) > limit:
        cut = len(text) - limit + 40
        text = f"{text[:limit * 3 // 4]} ... ({cut} characters cut) ... {text[-(limit // 4 - 40):]}"
    return text


class UserError(click.ClickException):
    """Printed as 'Error: <message>' on one line of bounded length; exit status 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


# (old option, old value or None) -> (new option, new value or None): renamed in 0.2, accepted until 0.3
Renames = dict[tuple[str, str | None], tuple[str, str | None]]


def os_error_message(exc: OSError, output: Any = None) -> str:
    """A read-only or full folder, a name too long, a file where a folder was expected: one line naming it
    (the file the system names, else the command's --out, `output`)."""
    import errno

    where = exc.filename if exc.filename is not None else (f"--out {output}" if output is not None
                                                            else "an output file")
    why = exc.strerror or errno.errorcode.get(exc.errno or 0, "I/O error")
    hint = {errno.ENOSPC: "; free some space or write elsewhere", errno.EDQUOT: "; free some space or write elsewhere",
            errno.EACCES: "; choose a folder you can write to", errno.EROFS: "; choose a folder you can write to",
            errno.EPERM: "; choose a folder you can write to",
            errno.ENAMETOOLONG: "; use a shorter name"}.get(exc.errno or 0, "")
    return f"{where}: {why}{hint}"


def deprecation_notice(old: str, new: str) -> None:
    click.echo(f"featcache: {old} is deprecated and will be removed in 0.3; use {new}", err=True)


class FeatcacheCommand(click.Command):
    """A click command that rewrites renamed option spellings (and renamed values) before parsing."""

    def __init__(self, *args: Any, renames: Renames | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.renames: Renames = dict(renames or {})

    def rename(self, option: str, value: Any) -> tuple[str, Any] | None:
        """The new (option, value) of a deprecated spelling, or None."""
        if isinstance(value, str) and (option, value) in self.renames:
            return self.renames[(option, value)]
        if (option, None) in self.renames:
            new, _ = self.renames[(option, None)]
            return new, value
        return None

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            option, eq, inline = arg.partition("=")
            value = inline if eq else (args[i + 1] if i + 1 < len(args) else None)
            found = self.rename(option, value) if option.startswith("--") else None
            if found is None:
                out.append(arg)
                i += 1
                continue
            new, new_value = found
            shown = f"{option} {value}" if (option, value) in self.renames else option
            deprecation_notice(shown, f"{new} {new_value}" if (option, value) in self.renames else new)
            if eq:
                out.append(f"{new}={new_value}")
                i += 1
            else:
                out.append(new)
                if value is not None:
                    out.append(str(new_value))
                i += 2
        return super().parse_args(ctx, out)


SCALARS = (str, int, float, bool, type(None))


def _normalise_config_value(param: click.Parameter, value: Any, key: str, path: str) -> Any:
    """A config value in the shape the option takes: one scalar, or (repeatable options) a list of scalars
    or, for --data, a mapping of split names to files."""
    if param.multiple or getattr(param, "nargs", 1) != 1:
        if isinstance(value, dict) and param.name == "data":  # data: {train: a.h5} -> ["train=a.h5"]
            value = [f"{k}={v}" for k, v in value.items()]
        elif isinstance(value, dict):
            raise UserError(f"--config {path}: key '{key}' takes a list of values, got a mapping ({value!r})")
        elif not isinstance(value, list | tuple):
            value = [value]
        bad = [v for v in value if not isinstance(v, SCALARS)]
        if bad:
            raise UserError(f"--config {path}: key '{key}' takes a list of values, got a nested "
                            f"{type(bad[0]).__name__} ({bad[0]!r})")
        return value
    if not isinstance(value, SCALARS):
        raise UserError(f"--config {path}: key '{key}' takes a single value, got a {type(value).__name__} ({value!r})")
    return value


def _load_config(ctx: click.Context, param: click.Parameter, path: str | None) -> None:
    """Read a YAML of option names into the context's default_map, so the command line still wins."""
    if path is None:
        return
    from featcache.common.yamlfile import load_yaml

    try:
        loaded = load_yaml(path, what="--config") or {}
    except FeatcacheError as exc:
        raise UserError(str(exc)) from None
    if not isinstance(loaded, dict):
        raise UserError(f"--config {path}: expected a mapping of option names to values")
    by_key: dict[str, click.Parameter] = {}
    for p in ctx.command.params:
        if not p.name or p.name in ("config", "help"):
            continue
        by_key[p.name] = p
        for opt in p.opts:
            if opt.startswith("--"):
                by_key.setdefault(opt[2:].replace("-", "_"), p)
    defaults: dict[str, Any] = {}
    renames = getattr(ctx.command, "renames", {})
    for key, value in loaded.items():
        option = "--" + str(key).replace("_", "-")
        found = ctx.command.rename(option, value) if isinstance(ctx.command, FeatcacheCommand) else None
        if found is not None:
            by_value = isinstance(value, str) and (option, value) in renames
            new, new_value = found
            deprecation_notice(f"--config key '{key}'" + (f": {value}" if by_value else ""),
                               f"'{new[2:]}'" + (f": {new_value}" if by_value else ""))
            key, value = new[2:], (new_value if by_value else value)
        param = by_key.get(str(key).replace("-", "_"))
        if param is None or param.name is None:
            names = sorted({(p.opts[0].lstrip("-") if isinstance(p, click.Option) else str(p.name))
                            for p in by_key.values()})
            raise UserError(f"--config {path}: unknown key '{key}'; choose from: " + ", ".join(names))
        defaults[param.name] = _normalise_config_value(param, value, str(key), path)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


def _set_quiet(ctx: click.Context, param: click.Parameter, quiet: bool) -> bool:
    from featcache.common.progress import set_quiet

    if quiet:
        set_quiet(True)
    return quiet


def command(name: str, renames: Renames | None = None, **settings: Any
            ) -> Callable[[Callable[..., Any]], click.Command]:
    """A featcache command: adds --config and --quiet, accepts the old spellings in `renames` with a
    notice, and turns FeatcacheError into a one-line exit 2."""

    def decorate(func: Callable[..., Any]) -> click.Command:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _STARTED[:] = [time.perf_counter()]
            try:
                return func(*args, **kwargs)
            except FeatcacheError as exc:
                raise UserError(str(exc)) from None
            except OSError as exc:
                if exc.errno is None:
                    raise
                raise UserError(os_error_message(exc, kwargs.get("out"))) from None

        wrapped = click.option("--quiet", "-q", is_flag=True, expose_value=False, callback=_set_quiet,
                               is_eager=True, help="No progress bars or status lines on stderr.")(wrapper)
        wrapped = click.option("--config", type=click.Path(dir_okay=False), is_eager=True,
                               expose_value=False, callback=_load_config,
                               help="YAML file whose keys are this command's option names "
                                    "(the command line wins).")(wrapped)
        return click.command(name, cls=FeatcacheCommand, renames=renames, **settings)(wrapped)

    return decorate


_STARTED: list[float] = []  # when the running command started (its summaries time the whole command)


def elapsed() -> str:
    """Wall time since the running command started: imports aside, everything its summary line covers
    (reading, fitting, scoring, writing), as '12.3 s' or '4 min 05 s'."""
    seconds = time.perf_counter() - (_STARTED[0] if _STARTED else time.perf_counter())
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"


def resolved_options(ctx: click.Context) -> dict[str, Any]:
    """The command's options as resolved (command line, config, defaults): written to config.yaml for replay."""
    names = {p.name: (p.opts[0].lstrip("-") if isinstance(p, click.Option) else str(p.name))
             for p in ctx.command.params}
    out: dict[str, Any] = {}
    for key, value in ctx.params.items():
        if isinstance(value, tuple):
            value = [str(v) if isinstance(v, Path) else v for v in value]
        if isinstance(value, Path):
            value = str(value)
        out[names.get(key, key)] = value
    return out


def command_line() -> str:
    """The command as typed, for cache and run metadata."""
    import shlex

    return " ".join(shlex.quote(a) for a in ["featcache", *sys.argv[1:]])


def echo_result(text: str) -> None:
    """Results go to stdout (progress and status go to stderr)."""
    click.echo(text)


def given_options(ctx: click.Context, fields: dict[str, str] | None = None) -> set[str]:
    """The options given on the command line or in --config (not left at their defaults), by the library's
    field names: on --resume the others are taken from the checkpoint (featcache.common.resume)."""
    from click.core import ParameterSource

    fields = fields or {}
    return {fields.get(name, name) for name in ctx.params
            if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)}
