"""Method options are strictly typed: a wrong type gets one clear error naming the option, and the command
line parses option text by the option's declared type."""

from __future__ import annotations

import typing

import pytest

import hired
from hired.methods.base import OptionTypeError, method_class, option_types, parse_option

ALL = sorted(hired.list_methods())


def _wrong_values(tp) -> list:
    """Values of other types than ``tp`` accepts (bools are not numbers, ints not bools, strings nothing)."""
    accepted = set(typing.get_args(tp)) if typing.get_args(tp) else {tp}
    if typing.get_origin(tp) is typing.Literal:
        return [1, None, True, ["2d"]]
    out = ["0.5", [1], {"a": 1}]
    if bool in accepted:
        out += [1, 0.0, "true", None]
    else:
        out += [True, False]
    if int in accepted and float not in accepted:
        out += [1.0, 2.5]
    if type(None) not in accepted and bool not in accepted:
        out.append(None)
    return out


CASES = [
    (name, option, value)
    for name in ALL
    for option, tp in option_types(method_class(name)).items()
    for value in _wrong_values(tp)
]


@pytest.mark.parametrize("name, option, value", CASES, ids=[f"{n}-{o}-{v!r}" for n, o, v in CASES])
def test_every_option_rejects_a_wrong_type(name, option, value):
    with pytest.raises(OptionTypeError, match=rf"option {option} must be .*got {value!r}".replace("[", r"\[")):
        hired.get_method(name, **{option: value})


def test_the_error_is_a_type_and_a_value_error():
    with pytest.raises(TypeError):
        hired.HiRED(alpha="0.5")
    with pytest.raises(ValueError, match="alpha"):
        hired.HiRED(alpha="0.5")


def test_an_int_for_a_float_option_becomes_a_float():
    method = hired.HiRED(budget=1, alpha=0)
    assert type(method.budget) is float and type(method.alpha) is float
    assert method == hired.HiRED(budget=1.0, alpha=0.0)
    assert hired.PruMerge().budget is None and hired.Random(seed=3).seed == 3


@pytest.mark.parametrize(
    "cls, option, text, expected",
    [
        (hired.HiRED, "keep_newline", "true", True),
        (hired.HiRED, "keep_newline", "No", False),
        (hired.HiRED, "keep_newline", "1", True),
        (hired.HiRED, "alpha", "0.25", 0.25),
        (hired.HiRED, "budget", "1", 1.0),
        (hired.HiRED, "selection_layer", "none", None),
        (hired.HiRED, "selection_layer", "3", 3),
        (hired.HiRED, "mapping", "reference", "reference"),
        (hired.PruMerge, "budget", "None", None),
        (hired.PruMerge, "budget", "0.3", 0.3),
        (hired.Random, "seed", "7", 7),
    ],
)
def test_parse_option_by_declared_type(cls, option, text, expected):
    value = parse_option(cls, option, text)
    assert value == expected and type(value) is type(expected)
    cls(**{option: value})


@pytest.mark.parametrize(
    "cls, option, text",
    [
        (hired.HiRED, "keep_newline", "maybe"),
        (hired.HiRED, "alpha", "half"),
        (hired.HiRED, "alpha", "none"),
        (hired.HiRED, "selection_layer", "2.5"),
        (hired.HiRED, "mapping", "3d"),
        (hired.Random, "seed", "1e3"),
    ],
)
def test_parse_option_refuses_text_of_another_type(cls, option, text):
    with pytest.raises(ValueError, match=rf"{cls.__name__} option {option} must be .*{text!r}"):
        parse_option(cls, option, text)


def test_parse_option_names_unknown_options():
    with pytest.raises(ValueError, match="HiRED has no option bogus; options: adapt, alpha"):
        parse_option(hired.HiRED, "bogus", "1")
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        method_class("nope")
    assert method_class("CLS-topk") is hired.ClsTopK
