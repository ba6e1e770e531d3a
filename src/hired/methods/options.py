"""Method options given as text (``--option hired:alpha=0.5``, lmms-eval's ``--model_args``): ``[NAME:]KEY=VALUE``
items split, assigned to the chosen methods and parsed by each option's declared type. Every error is a
``ValueError`` whose message names the flag (``where``) and the option.
"""

from __future__ import annotations

from collections.abc import Sequence

from hired.methods.base import Method, get_method, method_class, option_types, parse_option

__all__ = [
    "assign_options",
    "build_method",
    "guess_value",
    "method_class",
    "option_value",
    "parse_method_options",
    "split_option",
]


def option_value(cls, key: str, text: str, where: str = "--option"):
    """The text of option ``key`` of method class ``cls`` parsed by its declared type
    (:func:`hired.methods.base.parse_option`), or a ``ValueError`` naming the option."""
    try:
        return parse_option(cls, key, str(text))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def split_option(item: str, where: str = "--option", targeted: bool = True) -> tuple[str | None, str, str]:
    """``[NAME:]KEY=VALUE`` → ``(NAME or None, key, value text)``; keys take ``-`` or ``_``."""
    target, sep, rest = item.partition(":")
    if not targeted or not sep or "=" in target:
        target, rest = None, item
    key, eq, value = rest.partition("=")
    if not eq or not key.strip() or (target is not None and not target.strip()):
        form = "[NAME:]KEY=VALUE" if targeted else "KEY=VALUE"
        raise ValueError(f"{where} expects {form}, got {item!r}")
    return (target.strip() if target else None), key.strip().replace("-", "_"), value


def assign_options(
    items: Sequence[str] | None, methods: Sequence[str], where: str = "--option", methods_flag: str = "--method"
) -> list[dict]:
    """Typed options for each of ``methods`` (names, repeats allowed) from ``[NAME:]KEY=VALUE`` items.

    ``NAME:KEY=VALUE`` goes to every chosen method called NAME, ``KEY=VALUE`` to every chosen method that
    has the option KEY; each value is parsed by that method's declared type. A NAME that was not chosen,
    or a KEY no chosen method has, is a ``ValueError``.
    """
    classes = [method_class(n) for n in methods]
    out: list[dict] = [{} for _ in methods]
    for item in items or []:
        target, key, text = split_option(item, where)
        if target is not None:
            cls = method_class(target)
            chosen = [i for i, c in enumerate(classes) if c is cls]
            if not chosen:
                raise ValueError(f"{where} {item!r} names {target!r}, which is not in {methods_flag}")
        else:
            chosen = [i for i, c in enumerate(classes) if key in option_types(c)]
            if not chosen:
                raise ValueError(f"no chosen method has the option {key} ({where} {item!r})")
        for i in chosen:
            out[i][key] = option_value(classes[i], key, text, f"{where} {item!r}")
    return out


def parse_method_options(method: str, options: dict) -> dict:
    """``options`` of ``method`` with every string value parsed by the option's declared type (values that
    are not strings are kept); for option strings such as lmms-eval's ``--model_args``. Raises
    ``ValueError`` for an unknown method or option, or text that is not of the option's type."""
    cls = method_class(str(method))
    return {k: parse_option(cls, k, v) if isinstance(v, str) else v for k, v in options.items()}


def guess_value(text: str):
    """Option text whose method is not known here, as ``true``/``false``, ``none``, an int, a float or the
    text; the method config then checks it against the declared type (and refuses what does not fit).
    Prefer :func:`option_value` / :func:`assign_options`, which parse by the declared type."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def build_method(name: str, options: dict) -> Method:
    """:func:`hired.methods.base.get_method` ``(name, **options)``; every error it raises (an unknown option,
    a value out of range or of the wrong type) as a ``ValueError`` with the same message."""
    try:
        return get_method(name, **options)
    except TypeError as err:
        if isinstance(err, ValueError):
            raise
        raise ValueError(str(err)) from None
