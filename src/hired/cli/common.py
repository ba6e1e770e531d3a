"""What the ``hired`` subcommands share: the user error, the parser whose errors read ``hired: error:``,
number lists, the one-method flags and the printed selection.

Only the modules of :mod:`hired.cli` import this one; the library they call raises ``ValueError``,
``TypeError``, ``ImportError`` or ``OSError``, which :func:`hired.cli.main` prints the same way.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from hired.families import FAMILIES
from hired.methods.base import option_types
from hired.methods.options import assign_options, build_method, method_class

# ------------------------------------------------------------------------------------------ errors


class CommandError(SystemExit):
    """A user error of a command: ``hired`` prints ``hired: error: <message>`` on stderr and exits with 2,
    as argparse does for a bad argument.

    It is a ``SystemExit`` (code 2) so that a command stops the same way wherever it is raised; ``str()``
    of it is the message.
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
        self.code = 2


@contextmanager
def command_errors(prefix: str = "") -> Iterator[None]:
    """Turn a ``ValueError`` or ``TypeError`` of the library inside the block into a :class:`CommandError`
    with the same message (after ``prefix``)."""
    try:
        yield
    except (ValueError, TypeError) as err:
        raise CommandError(f"{prefix}{err}") from None


_PREFIX = re.compile(r"^hired(?: [\w-]+)?: (?:error: )?")


def error_message(err: BaseException) -> str:
    """The message of a user error, without a ``hired:`` / ``hired bench:`` prefix it may carry."""
    text = err.message if isinstance(err, CommandError) else str(err.code if isinstance(err, SystemExit) else err)
    return _PREFIX.sub("", text.strip(), count=1)


def plain(text: str) -> str:
    """``text`` without reStructuredText backticks, for ``--help`` (``"``hired show``"`` → ``"hired show"``)."""
    return re.sub(r"`+([^`]*)`+", r"\1", text)


def _user_error(message: str) -> None:
    print(f"hired: error: {message}", file=sys.stderr)


def run_command(func: Callable[[Any], int], args) -> int:
    """``func(args)`` with the user errors of a command printed as ``hired: error: <message>`` (exit 2):
    argparse errors and :class:`CommandError` raise ``SystemExit(2)``, other bad input (a ``ValueError``,
    ``TypeError``, ``OSError`` or ``ImportError``: a missing image, a budget out of range, a missing
    optional dependency) returns 2."""
    try:
        return func(args)
    except CommandError as err:
        _user_error(error_message(err))
        raise
    except SystemExit as err:
        if err.code is None or isinstance(err.code, int):
            raise
        message = error_message(err)  # a message-carrying SystemExit: the same style, exit 2
        _user_error(message)
        raise CommandError(message) from None
    except (ValueError, TypeError, OSError, ImportError) as err:
        _user_error(error_message(err))
        return 2


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors read ``hired: error: <message>`` (exit 2) in every subcommand."""

    def error(self, message: str):  # noqa: D102 (argparse API)
        self.print_usage(sys.stderr)
        self.exit(2, f"hired: error: {message}\n")


# ------------------------------------------------------------------------------------------ lists


def number_list(cast: Callable[[str], Any] = float, what: str = "numbers") -> Callable[[str], tuple]:
    """An argparse ``type``: numbers separated by commas and/or spaces (``"0.2,0.4"``, ``"0.2 0.4"``)."""

    def parse(text: str) -> tuple:
        parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
        try:
            return tuple(cast(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} separated by commas or spaces, got {text!r}") from None

    return parse


floats = number_list(float, "numbers")
ints = number_list(int, "integers")


class _ListAction(argparse.Action):
    """``nargs="+"`` of :func:`number_list` values flattened into one tuple."""

    def __call__(self, parser, namespace, values, option_string=None):
        flat = tuple(x for part in values for x in part)
        if not flat:
            parser.error(f"{option_string} expects at least one value")
        setattr(namespace, self.dest, flat)


def add_list_argument(p: argparse.ArgumentParser, flag: str, cast: Callable[[str], Any] = float, **kwargs):
    """``flag`` taking numbers separated by commas and/or spaces (``--budgets 0.2,0.4`` = ``--budgets 0.2 0.4``)."""
    what = "integers" if cast is int else "numbers"
    kwargs.setdefault("metavar", "N")
    return p.add_argument(flag, nargs="+", type=number_list(cast, what), action=_ListAction, **kwargs)


# ------------------------------------------------------------------------------------------ --model


def model_help(merged_grid: bool = True) -> str:
    """``--model``'s help: the supported families, from the family registry (without ``merged_grid``: only
    the families whose images are partitions)."""
    titles = [f.title for f in FAMILIES.values() if merged_grid or not f.merged_grid]
    return f"local model folder or hub id org/name ({', '.join(titles[:-1])} or {titles[-1]})"


# ------------------------------------------------------------------------------------------ one method


def add_method_args(p: argparse.ArgumentParser) -> None:
    """``--method``, ``--budget``, ``--alpha`` and ``--option`` for a command that runs one method."""
    p.add_argument("--method", default="hired", help="method name (see 'hired methods'), default: hired")
    p.add_argument("--budget", type=float, default=None, help="token budget rate in (0, 1] (default 0.2)")
    p.add_argument("--alpha", type=float, default=None, help="full-image share of the budget (HiRED, default 0.5)")
    p.add_argument(
        "--option",
        action="append",
        metavar="[NAME:]KEY=VALUE",
        help="any other method option, parsed by its type; repeatable",
    )


def method_from_args(args):
    """The one method of ``--method``/``--budget``/``--alpha``/``--option`` (see :func:`add_method_args`);
    a :class:`CommandError` for an unknown method or option, or a value it refuses."""
    with command_errors():
        cls = method_class(args.method)
        options = assign_options(args.option, [args.method])[0]
    for name in ("budget", "alpha"):
        value = getattr(args, name, None)
        if value is not None:
            if name not in option_types(cls):
                raise CommandError(f"method {cls.name!r} has no option {name!r}")
            options[name] = value
    with command_errors():
        return build_method(args.method, options)


def print_selection(model) -> None:
    """One line per image of the last forward: kept/valid patches per partition."""
    import hired

    for sel in hired.last_selection(model):
        parts = ", ".join(f"{len(p.kept)}/{p.valid}" for p in sel.partitions)
        grid = f"{sel.grid[0]}x{sel.grid[1]} grid, " if sel.partitions[1:] else ""
        print(f"  kept per partition (full image first; kept/valid): {grid}{parts}")
