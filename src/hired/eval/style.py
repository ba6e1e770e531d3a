"""Line styles of the accuracy plots (``hired eval --plot``): one colour and marker per method.

A label is a method name with optional notes in parentheses, as ``hired eval`` writes them:
``"cls_topk"``, ``"hired (reference mapping)"``, ``"hired (reference mapping, score=received)"``.

- **HiRED** is red, drawn with a thicker line and markers, on top of every other line.
- **HiRED's variants** (labels that start with ``hired`` and carry notes) stay in HiRED's colour family
  (other shades of red), each with its own marker; the note picks the line style (``--`` the reference
  mapping, ``:`` the received score, ``-.`` a budget split such as ``alpha=1.0``, ...).
- **Other methods** get a colour of their own from matplotlib's 10-colour cycle without its red, and a
  marker of their own; their variants keep the method's colour, with the note's line style and another
  marker.

:func:`styles` gives every label of one figure its keyword arguments for ``Axes.plot`` and guarantees
that no two labels share a colour and a marker; :func:`style` is the same for one label. Nothing here
imports matplotlib.
"""

from __future__ import annotations

HIRED = "hired"
HIRED_COLOUR = "#d62728"  # matplotlib's C3
# shades of red for HiRED's variants, darkest first
HIRED_FAMILY = ("#a50f15", "#fb6a4a", "#67000d", "#ef3b2c", "#cb181d", "#fc9272", "#7f2704", "#e7298a")
HIRED_VARIANT_MARKERS = ("s", "^", "D", "v", "P", "X", "<", ">")

# the other registered methods: (colour, marker); matplotlib's tab10 without red (HiRED's)
METHODS = {
    "cls_topk": ("#1f77b4", "s"),
    "spatial": ("#2ca02c", "^"),
    "random": ("#7f7f7f", "v"),
    "prumerge": ("#8c564b", "D"),
    "prumerge_plus": ("#e377c2", "P"),
    "visionzip": ("#ff7f0e", "X"),
    "divprune": ("#9467bd", "<"),
    "dart": ("#bcbd22", ">"),
    "cdpruner": ("#17becf", "*"),
    "pool": ("#637939", "h"),  # tab20b's dark olive: tab10 is used up
}
# colours for methods not listed above (registered later): tab20's light shades, none of them red
SPARE_COLOURS = ("#aec7e8", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5", "#ffbb78")
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "*", "h", "p", "d", "8", "H")

# line style of a note (the first one a label carries that is listed here), for every method's variants
NOTE_STYLES = (
    ("reference mapping", "--"),
    ("score=", ":"),
    ("alpha=", "-."),
    ("keep_positions", (0, (5, 1))),
    ("adapt=", (0, (1, 1))),
)
VARIANT_STYLE = (0, (3, 1, 1, 1))  # any other note
# markers of other methods' variants, by note (their colour is the method's)
NOTE_MARKERS = {"reference mapping": "+", "score=": "x", "alpha=": "1", "keep_positions": "2", "adapt=": "3"}

LINEWIDTH = {"hired": 2.8, "hired variant": 1.9, "other": 1.3}
ZORDER = {"hired": 10, "hired variant": 6, "other": 3}
MARKERSIZE = {"hired": 6.5, "hired variant": 5.0, "other": 4.5}


def parse(label: str) -> tuple[str, tuple[str, ...]]:
    """``"hired (reference mapping, score=received)"`` -> ``("hired", ("reference mapping", "score=received"))``."""
    name, _, rest = label.partition(" (")
    notes = tuple(n.strip() for n in rest.rstrip(")").split(",") if n.strip()) if rest else ()
    return name.strip(), notes


def is_hired(label: str) -> bool:
    """HiRED or one of its variants: the method name is ``hired`` (any case)."""
    return parse(label)[0].lower() == HIRED


def _note_style(notes: tuple[str, ...]):
    for note in notes:
        for key, linestyle in NOTE_STYLES:
            if note.startswith(key):
                return key, linestyle
    return None, VARIANT_STYLE


def _kwargs(colour: str, marker: str, linestyle, rank: str) -> dict:
    return {
        "color": colour,
        "marker": marker,
        "linestyle": linestyle,
        "linewidth": LINEWIDTH[rank],
        "markersize": MARKERSIZE[rank],
        "zorder": ZORDER[rank],
    }


def styles(labels) -> dict[str, dict]:
    """``{label: Axes.plot keyword arguments}`` for the lines of one figure, every (colour, marker) pair
    used once. Known methods and notes always get the same style, whatever else the figure shows."""
    labels = list(dict.fromkeys(labels))
    out: dict[str, dict] = {}
    used: set[tuple[str, str]] = set()
    spare = iter(SPARE_COLOURS)
    colour_of: dict[str, str] = {}
    # HiRED's variants in a fixed order (by their notes), so that a figure's variants get the same shades
    hired_variants = sorted((lb for lb in labels if is_hired(lb) and parse(lb)[1]), key=lambda lb: parse(lb)[1])
    for label in [*(lb for lb in labels if not is_hired(lb) or not parse(lb)[1]), *hired_variants]:
        name, notes = parse(label)
        if is_hired(label) and not notes:
            kwargs = _kwargs(HIRED_COLOUR, "o", "-", "hired")
        elif is_hired(label):
            _, linestyle = _note_style(notes)
            pairs = [(c, m) for c, m in zip(HIRED_FAMILY, HIRED_VARIANT_MARKERS)]
            pairs += [(c, m) for c in HIRED_FAMILY for m in MARKERS]
            colour, marker = next(p for p in pairs if p not in used)
            kwargs = _kwargs(colour, marker, linestyle, "hired variant")
        else:
            if name not in colour_of:
                known = METHODS.get(name.lower())
                colour_of[name] = known[0] if known else next(spare, "#555555")
            colour = colour_of[name]
            base_marker = METHODS.get(name.lower(), (None, MARKERS[len(colour_of) % len(MARKERS)]))[1]
            if notes:
                key, linestyle = _note_style(notes)
                first = NOTE_MARKERS.get(key, "3")
            else:
                linestyle, first = "-", base_marker
            marker = next(m for m in (first, *MARKERS, "1", "2", "3", "4", "+", "x") if (colour, m) not in used)
            kwargs = _kwargs(colour, marker, linestyle, "other")
        used.add((kwargs["color"], kwargs["marker"]))
        out[label] = kwargs
    return {label: out[label] for label in labels}


def style(label: str) -> dict:
    """The ``Axes.plot`` keyword arguments of one label (as :func:`styles` gives it on its own)."""
    return styles([label])[label]
