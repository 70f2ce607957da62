"""Reading a YAML file a user hands over (`--config`, the YAML beside a checkpoint) without trusting it.

yaml.safe_load never runs code, but it still expands aliases (nine nested levels of `&a [*b, *b, ...]` make
gigabytes from a few hundred bytes), keeps the last of two equal keys without a word, and reports a file that
is not UTF-8 as a multi-line traceback. This loader refuses aliases and duplicate keys, caps the file's size,
and turns every failure into one FeatcacheError line naming the file.
"""

from __future__ import annotations

import os
from typing import Any

from .errors import FeatcacheError

MAX_YAML_BYTES = 1 << 20  # a configuration is a screenful of options; 1 MiB is far above any real one


def _loader() -> type:
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """safe_load's constructors, with aliases and duplicate mapping keys refused."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.MarkedYAMLError("while reading", None, "aliases (*name) are not accepted; write the "
                                           "values out", event.start_mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: construct_mapping names it below
                    duplicate = False
                if duplicate:
                    raise yaml.MarkedYAMLError("while reading a mapping", node.start_mark,
                                               f"key {str(key)[:80]!r} is given twice", key_node.start_mark)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def _first_line(exc: Exception) -> str:
    import yaml

    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return (where + str(exc.problem or exc.context or "invalid YAML"))[:200]
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def load_yaml(path: str | os.PathLike[str], *, what: str = "") -> Any:
    """The content of a YAML file, or a one-line FeatcacheError naming it (`what`: how the user gave it, e.g.
    '--config'): unreadable, over MAX_YAML_BYTES, not UTF-8, not YAML, with an alias or a duplicate key."""
    import yaml

    name = f"{what} {path}" if what else str(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise FeatcacheError(f"{name}: cannot read ({exc.strerror})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise FeatcacheError(f"{name}: over {MAX_YAML_BYTES >> 20} MiB; a configuration file is a few lines of "
                             "options")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FeatcacheError(f"{name}: not UTF-8 text (byte {exc.start} is 0x{raw[exc.start]:02x}); save it as "
                             "UTF-8") from None
    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 -- a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise FeatcacheError(f"{name}: not valid YAML ({_first_line(exc)})") from None
    except RecursionError:
        raise FeatcacheError(f"{name}: nested too deeply to be a configuration") from None
