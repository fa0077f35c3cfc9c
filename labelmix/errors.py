"""The one exception type that reaches the user as a message, never as a traceback."""


class UserError(Exception):
    """Bad input from the user (a file, a flag, a config field).

    The CLI prints ``labelmix: error: <message>`` and exits with status 2. The message
    names what is wrong (the file, the field path) and, where it helps, what is allowed.
    """


def validated(model_cls, data, prefix: str = "", source: str = ""):
    """Build a pydantic model, turning a ValidationError into one UserError naming the field path.

    ``prefix`` is prepended to the field path (a section such as ``fixed``); ``source`` (a file
    name) starts the message.
    """
    from pydantic import ValidationError

    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"]) or "(top level)"
        if prefix:
            path = f"{prefix}.{path}" if first["loc"] else prefix
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(model_cls_fields(model_cls, first["loc"][:-1])))
            message = f"unknown key; allowed here: {allowed}"
        elif "input" in first and first["type"] not in ("missing",):
            message = f"{message} (got {first['input']!r})"
        more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
        raise UserError(f"{source + ': ' if source else ''}{path}: {message}{more}") from None


def model_cls_fields(model_cls, loc) -> list[str]:
    """Field names of the (nested) pydantic model at loc, for 'allowed keys' hints."""
    cls = model_cls
    for part in loc:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        cls = next((c for c in candidates if hasattr(c, "model_fields")), None)
        if cls is None:
            return []
    return [f.alias or name for name, f in getattr(cls, "model_fields", {}).items()]
