"""The one exception type that reaches the user as a message, never as a traceback, and the two
boundary helpers that produce it: pydantic validation (``validated``) and YAML reading (``load_yaml``)."""

from __future__ import annotations

from typing import Any

import yaml


class UserError(Exception):
    """Bad input from the user (a file, a flag, a config field).

    The CLI prints ``labelmix: error: <message>`` and exits with status 2. The message
    names what is wrong (the file, the field path) and, where it helps, what is allowed.
    """


def validated(model_cls, data, prefix: str = "", source: str = ""):
    """Build a pydantic model (or pydantic dataclass), turning a ValidationError into one UserError
    naming every field path.

    ``prefix`` is prepended to each field path (a section such as ``fixed``); ``source`` (a file
    name) starts the message. Several problems are joined on one line with "; ".
    """
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(model_cls).validate_python(data)
    except ValidationError as exc:
        problems = []
        for loc, message in _problems(model_cls, data, exc.errors()):
            path = ".".join(str(p) for p in loc) or "(top level)"
            if prefix:
                path = f"{prefix}.{path}" if loc else prefix
            problems.append(f"{path}: {message}")
        raise UserError(f"{source + ': ' if source else ''}{'; '.join(problems)}") from None


def _problems(model_cls, data, errors: list[dict]) -> list[tuple[tuple, str]]:
    """(loc, message) per problem, in pydantic's order. The errors of one value against each
    member of a union (``int | Literal['max']``: locs ``ds_depth.int`` and ``ds_depth.literal['max']``)
    are one problem at the value's own path, their messages joined with " or "."""
    out: list[tuple[tuple, str]] = []
    union_at: dict[tuple, int] = {}
    for error in errors:
        loc = tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):  # a model's, a dataclass's
            allowed = ", ".join(sorted(model_cls_fields(model_cls, loc[:-1])))
            out.append((loc, f"unknown key; allowed here: {allowed}"))
            continue
        shown = "input" in error and error["type"] != "missing"
        if loc and shown and _at(data, loc[:-1]) is error["input"] and _at(data, loc) is _MISSING:
            parent = loc[:-1]  # a union member's tag, not a key of the data
            if parent in union_at:
                i = union_at[parent]
                text = out[i][1]
                if message not in text:
                    text = text.replace(" (got ", f" or {message} (got ", 1) if " (got " in text else f"{text} or {message}"
                out[i] = (parent, text)
                continue
            union_at[parent] = len(out)
            loc = parent
        shown = shown and not message.endswith(f"got {error['input']!r}")  # the message names the value itself
        out.append((loc, f"{message} (got {error['input']!r})" if shown else message))
    return out


_MISSING = object()


def _at(data: Any, loc: tuple) -> Any:
    """The value at loc in plain data (mappings and lists), or _MISSING."""
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and isinstance(part, int) and -len(node) <= part < len(node):
            node = node[part]
        else:
            return _MISSING
    return node


def model_cls_fields(model_cls, loc) -> list[str]:
    """Field names of the (nested) pydantic model or dataclass at loc, for 'allowed keys' hints."""
    cls = model_cls
    for part in loc:
        field = _fields(cls).get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        cls = next((c for c in candidates if _fields(c)), None)
        if cls is None:
            return []
    return [f.alias or name for name, f in _fields(cls).items()]


def _fields(cls) -> dict:
    return getattr(cls, "__pydantic_fields__", None) or {}


# --- YAML ----------------------------------------------------------------------------------------


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice (SafeLoader keeps the last)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # keys merged in with <<: *anchor may be overridden; only written keys count
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader's own error follows
                    continue
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice (lines {first} and {line}); keys of a mapping are unique",
                        key_node.start_mark,
                    )
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML text (duplicate keys refused); errors are one UserError naming source and line."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{source}: bad YAML{where}: {problem}") from None
