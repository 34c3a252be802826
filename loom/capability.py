"""Capabilities: plain Python functions that an agent offers to other agents.

Decorate a function with :func:`capability` to give it a name and a version::

    from loom import capability

    @capability("math.add", version="1.0")
    def add(a: int, b: int) -> int:
        \"\"\"Add two numbers.\"\"\"
        return a + b

    add(1, 2)                    # still a plain function: 3
    add.capability.name          # "math.add"
    add.capability.input_schema  # JSON Schema of the arguments

The decorator does not wrap the function: it attaches a :class:`Capability` as the
attribute ``.capability`` and returns the very same object, so calling it directly
behaves exactly as before (sync, ``async def`` and methods alike).

A :class:`Capability` knows how to serve a call coming off the wire. Arguments arrive
as a JSON object of keyword arguments; they are validated against the function's type
hints (with msgspec, or pydantic for pydantic models), the function runs (sync
functions in a worker thread, so they never block the event loop) and its return value
is encoded back to JSON. The JSON Schemas of the arguments and of the result are
published in the capability's registration metadata.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Final, TypeVar, cast

import anyio.to_thread
import msgspec

from loom._session import CapabilityInfo
from loom.errors import CapabilityError, ConfigurationError, InvalidArguments

__all__ = ["Capability", "capability", "collect_capabilities", "get_capability"]

F = TypeVar("F", bound=Callable[..., Any])

_INVALID_INPUT: Final = "INVALID_INPUT"
_CAPABILITY_ERROR: Final = "CAPABILITY_ERROR"
_REF_PREFIX: Final = "#/$defs/"
_EMPTY_RAW: Final = msgspec.Raw()
_NO_ARGUMENTS: Final = b"{}"


def _enc_hook(obj: object) -> Any:
    """Encode the types msgspec does not know natively (pydantic models)."""
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(obj, pydantic.BaseModel):
        return obj.model_dump(mode="json")
    raise TypeError(f"objects of type {type(obj).__qualname__!r} cannot be encoded as JSON")


_ENCODER: Final = msgspec.json.Encoder(enc_hook=_enc_hook)


class Capability:
    """A function offered to other agents under a ``name`` and a ``version``.

    Usually created by the :func:`capability` decorator and read back from the
    decorated function's ``.capability`` attribute; it can also be built directly,
    e.g. for a callable that cannot carry attributes::

        Capability(obj.method, "text.summarize", "2.0")

    Everything is derived once, when the capability is created: the JSON Schemas,
    the argument decoder and the registration metadata. A badly declared function
    (``*args``/``**kwargs``, a type hint that cannot be mapped to JSON, a hint that
    cannot be resolved) raises :class:`~loom.errors.ConfigurationError` right there.

    Attributes (read-only):

    * ``name``, ``version`` -- how other agents address the capability.
    * ``description`` -- the ``description`` given, else the function's cleaned
      docstring, else ``""``.
    * ``func`` -- the function itself.
    * ``is_async`` -- ``True`` for ``async def`` functions.
    * ``input_schema`` -- JSON Schema (an ``object``) of the keyword arguments:
      one property per parameter, parameters without a default listed in
      ``required``, JSON-serializable defaults given as ``default``, unknown
      properties refused, named types (structs, dataclasses, TypedDicts, enums,
      pydantic models) in a top-level ``$defs`` referenced as ``#/$defs/<name>``.
    * ``output_schema`` -- JSON Schema of the return annotation (``{}`` when the
      function has none).

    Supported type hints: ``str``, ``int``, ``float``, ``bool``, ``bytes`` (base64
    in JSON), ``dict``, ``list``, ``dict[str, X]``, ``list[X]``, ``X | None``,
    ``Literal[...]``, ``Annotated[X, msgspec.Meta(...)]``, msgspec Structs,
    dataclasses, TypedDicts, enums, ``Any`` and whatever else msgspec can decode
    from JSON (``datetime``, ``UUID``, ``tuple``, ...), as well as pydantic v2
    models (also inside ``list[...]``, ``X | None``, ...) when pydantic is installed.
    A parameter without annotation accepts any JSON value.

    Methods: a function defined in a class body whose first parameter is ``self``
    (or ``cls``) is recognised as a method; ``self`` is left out of the schema and
    the capability must be bound to an instance before it can be invoked, which
    :func:`collect_capabilities` does when given ``obj.method`` (see :meth:`bind`).
    """

    __slots__ = (
        "_decoder",
        "_fields",
        "_has_optional",
        "_metadata",
        "_posonly",
        "_pydantic_fields",
        "_unbound",
        "description",
        "func",
        "input_schema",
        "is_async",
        "name",
        "output_schema",
        "version",
    )

    name: str
    version: str
    description: str
    func: Callable[..., Any]
    is_async: bool
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    _decoder: msgspec.json.Decoder[Any]
    _fields: tuple[str, ...]
    _has_optional: bool
    _pydantic_fields: tuple[tuple[str, Any], ...]
    _posonly: tuple[tuple[str, Any], ...]
    _unbound: bool
    _metadata: dict[str, str]

    def __init__(
        self,
        func: Callable[..., Any],
        name: str,
        version: str = "1.0",
        *,
        description: str | None = None,
    ) -> None:
        """Describe ``func`` as capability ``name``/``version``.

        Raises :class:`~loom.errors.ConfigurationError` when the name is empty or
        contains whitespace, the version is empty, or the function's signature
        cannot be served (see the class documentation).
        """
        _check_name(name)
        _check_version(version)
        if description is not None and not isinstance(description, str):
            raise ConfigurationError(
                f"capability {name!r}: description must be a string, "
                f"got {type(description).__name__}"
            )
        if not callable(func):
            raise ConfigurationError(f"capability {name!r}: {func!r} is not callable")
        if inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func):
            raise ConfigurationError(
                f"capability {name!r}: {_qualname(func)} is a generator; "
                "a capability must return a single value"
            )
        self.name = name
        self.version = version
        self.func = func
        self.is_async = _is_async(func)
        self.description = description if description is not None else _docstring(func)
        self._build(func)

    # -- construction -------------------------------------------------------------

    def _build(self, func: Callable[..., Any]) -> None:
        label = f"capability {self.name!r} ({_qualname(func)})"
        signature, hints = _signature_and_hints(func, label)
        params = list(signature.parameters.values())
        self._unbound = _looks_like_method(func, params)
        if self._unbound:
            params = params[1:]

        struct_fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        msgspec_hints: list[tuple[str, Any]] = []
        pydantic_fields: list[tuple[str, Any]] = []
        posonly: list[tuple[str, Any]] = []
        required: list[str] = []
        defaults: dict[str, Any] = {}
        for param in params:
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                raise ConfigurationError(
                    f"{label}: *{param.name} is not supported; "
                    "declare every argument as a named parameter"
                )
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                raise ConfigurationError(
                    f"{label}: **{param.name} is not supported; "
                    "declare every argument as a named parameter"
                )
            hint = _object_as_any(hints.get(param.name, Any))
            has_default = param.default is not inspect.Parameter.empty
            if param.kind is inspect.Parameter.POSITIONAL_ONLY:
                posonly.append((param.name, param.default))
            if has_default:
                ok, json_default = _json_value(param.default)
                if ok:
                    defaults[param.name] = json_default
            else:
                required.append(param.name)
            if _uses_pydantic(hint):
                adapter = _type_adapter(hint, f"{label}: parameter {param.name!r}")
                pydantic_fields.append((param.name, adapter))
                if has_default:
                    struct_fields.append((param.name, msgspec.Raw, _EMPTY_RAW))
                else:
                    struct_fields.append((param.name, msgspec.Raw))
            else:
                msgspec_hints.append((param.name, hint))
                if has_default:
                    struct_fields.append((param.name, hint | msgspec.UnsetType, msgspec.UNSET))
                else:
                    struct_fields.append((param.name, hint))

        properties, defs = _parameter_schemas(
            [field[0] for field in struct_fields], msgspec_hints, pydantic_fields, label
        )
        for pname, value in defaults.items():
            properties[pname] = {**properties[pname], "default": value}
        input_schema: dict[str, Any] = {"title": self.name}
        if self.description:
            input_schema["description"] = self.description
        input_schema["type"] = "object"
        input_schema["properties"] = properties
        input_schema["required"] = required
        input_schema["additionalProperties"] = False
        if defs:
            input_schema["$defs"] = defs

        try:
            args_type = msgspec.defstruct(
                "Arguments",
                struct_fields,
                kw_only=True,
                forbid_unknown_fields=True,
                module=__name__,
            )
            decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(args_type | None)
        except Exception as exc:  # pragma: no cover - schema generation catches these first
            raise ConfigurationError(f"{label}: cannot build the argument decoder: {exc}") from exc

        self.input_schema = input_schema
        self.output_schema = _output_schema(hints.get("return", inspect.Parameter.empty), label)
        self._decoder = decoder
        self._fields = tuple(field[0] for field in struct_fields)
        self._has_optional = len(required) != len(struct_fields)
        self._pydantic_fields = tuple(pydantic_fields)
        self._posonly = tuple(posonly)
        self._metadata = {
            "input_schema": _ENCODER.encode(self.input_schema).decode(),
            "output_schema": _ENCODER.encode(self.output_schema).decode(),
            "description": self.description,
        }

    # -- public API ---------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"Capability(name={self.name!r}, version={self.version!r}, func={_qualname(self.func)})"
        )

    def metadata(self) -> dict[str, str]:
        """The registration metadata of the capability (a fresh dict).

        ``{"input_schema": ..., "output_schema": ..., "description": ...}`` where the
        two schemas are JSON Schema documents serialized as JSON strings, as the
        wire contract of the capability descriptor requires.
        """
        return dict(self._metadata)

    def as_info(self) -> CapabilityInfo:
        """The capability as announced to the bridge at registration."""
        return CapabilityInfo(name=self.name, version=self.version, metadata=self.metadata())

    def bind(self, instance: object) -> Capability:
        """Return a copy of this method capability bound to ``instance``.

        Only needed for capabilities declared on methods; :func:`get_capability` and
        :func:`collect_capabilities` bind automatically when given ``obj.method``.
        Raises :class:`~loom.errors.ConfigurationError` when the capability is not an
        unbound method.
        """
        if not self._unbound:
            raise ConfigurationError(f"capability {self.name!r} is not an unbound method")
        bound = object.__new__(Capability)
        for slot in Capability.__slots__:
            object.__setattr__(bound, slot, getattr(self, slot))
        bound.func = types.MethodType(self.func, instance)
        bound._unbound = False
        return bound

    def decode_arguments(self, payload: bytes) -> dict[str, Any]:
        """Decode and validate the JSON arguments of a call.

        ``payload`` is a JSON object of keyword arguments; an empty payload or
        ``null`` means "no arguments". Values are converted to the annotated Python
        types (a dataclass parameter arrives as a dataclass instance, and so on).
        Parameters that are absent and have a default are left out of the result, so
        the function's own default applies.

        Raises :class:`~loom.errors.InvalidArguments` (code ``INVALID_INPUT``) for
        invalid JSON, a payload that is not a JSON object, a missing required
        argument, an unknown argument or a value of the wrong type; the message
        names the offending argument (e.g. ``Expected `int`, got `str` - at `$.a```).
        """
        if not payload or payload.isspace():
            payload = _NO_ARGUMENTS
        try:
            args = self._decoder.decode(payload)
            if args is None:
                args = self._decoder.decode(_NO_ARGUMENTS)
        except msgspec.ValidationError as exc:
            raise InvalidArguments(_INVALID_INPUT, self._invalid(str(exc))) from None
        except msgspec.DecodeError as exc:
            raise InvalidArguments(
                _INVALID_INPUT, self._invalid(f"the arguments are not valid JSON ({exc})")
            ) from None
        values = msgspec.structs.astuple(args)
        if self._has_optional:
            arguments = {
                name: value
                for name, value in zip(self._fields, values, strict=True)
                if value is not msgspec.UNSET
            }
        else:
            arguments = dict(zip(self._fields, values, strict=True))
        if self._pydantic_fields:
            self._validate_pydantic(arguments)
        return arguments

    async def invoke(self, payload: bytes) -> bytes:
        """Serve one call: decode ``payload``, run the function, encode its result.

        ``async def`` functions are awaited; plain functions run in a worker thread
        (``anyio.to_thread.run_sync``) so they cannot block the event loop. Returns
        the JSON encoding of the return value.

        Raises :class:`~loom.errors.InvalidArguments` when the arguments are invalid
        (see :meth:`decode_arguments`) and :class:`~loom.errors.CapabilityError` when
        the return value cannot be encoded as JSON. Exceptions raised by the function
        itself propagate unchanged.
        """
        arguments = self.decode_arguments(payload)
        if self._unbound:
            raise ConfigurationError(
                f"capability {self.name!r} is a method; bind it to an instance first "
                "(collect it as obj.method)"
            )
        args: tuple[Any, ...] = ()
        if self._posonly:
            args = tuple(arguments.pop(name, default) for name, default in self._posonly)
        if self.is_async:
            result = await self.func(*args, **arguments)
        else:
            result = await anyio.to_thread.run_sync(partial(self.func, *args, **arguments))
        return self.encode_result(result)

    def encode_result(self, value: object) -> bytes:
        """JSON-encode a return value of the function.

        Raises :class:`~loom.errors.CapabilityError` (code ``CAPABILITY_ERROR``) when
        the value cannot be encoded.
        """
        try:
            return _ENCODER.encode(value)
        except (TypeError, ValueError, OverflowError, RecursionError, msgspec.MsgspecError) as exc:
            raise CapabilityError(
                _CAPABILITY_ERROR,
                f"capability {self.name!r} returned a value that cannot be encoded as JSON: {exc}",
            ) from exc

    # -- helpers --------------------------------------------------------------------

    def _invalid(self, message: str) -> str:
        """Turn a msgspec validation message into one naming the argument."""
        if " - at `" not in message:
            # An error about the arguments object itself (no path in the message).
            for prefix, text in (
                ("Object missing required field ", "missing required argument "),
                ("Object contains unknown field ", "unknown argument "),
            ):
                if message.startswith(prefix):
                    message = text + message[len(prefix) :]
                    if text.startswith("unknown") and self._fields:
                        known = ", ".join(f"`{name}`" for name in self._fields)
                        message += f" (expected: {known})"
                    elif text.startswith("unknown"):
                        message += " (the capability takes no arguments)"
                    break
            else:
                if message.startswith("Expected `object | null`, got "):
                    got = message[len("Expected `object | null`, got ") :]
                    message = f"the arguments must be a JSON object of keyword arguments, got {got}"
        return f"invalid arguments for capability {self.name!r}: {message}"

    def _validate_pydantic(self, arguments: dict[str, Any]) -> None:
        import pydantic

        for name, adapter in self._pydantic_fields:
            raw = arguments.get(name)
            if raw is None:
                continue
            if not raw:  # the empty Raw placeholder of an absent optional argument
                del arguments[name]
                continue
            try:
                arguments[name] = adapter.validate_json(bytes(raw))
            except pydantic.ValidationError as exc:
                errors = exc.errors(include_url=False)
                first = errors[0]
                path = (
                    "$."
                    + name
                    + "".join(
                        f"[{part}]" if isinstance(part, int) else f".{part}"
                        for part in first["loc"]
                    )
                )
                message = f"{first['msg']} - at `{path}`"
                if len(errors) > 1:
                    message += f" (and {len(errors) - 1} more error(s))"
                raise InvalidArguments(_INVALID_INPUT, self._invalid(message)) from None


def capability(
    name: str, version: str = "1.0", *, description: str | None = None
) -> Callable[[F], F]:
    """Declare a function as capability ``name`` at ``version``.

    ::

        @capability("math.add", version="1.0")
        def add(a: int, b: int) -> int:
            \"\"\"Add two numbers.\"\"\"
            return a + b

    The function is returned unchanged (not wrapped): it gains one attribute,
    ``.capability``, holding its :class:`Capability` (schemas, validation,
    invocation). ``async def`` functions, methods, ``staticmethod`` and
    ``classmethod`` objects are supported.

    :param name: how other agents call it; non-empty, without whitespace.
    :param version: the version of its contract; a non-empty string, ``"1.0"`` by
        default.
    :param description: shown to other agents; defaults to the function's docstring.
    :raises ~loom.errors.ConfigurationError: for an invalid name or version, or when
        the function cannot be a capability (``*args``/``**kwargs``, a type hint that
        has no JSON form, an unresolvable annotation, ...). Raised when the decorator
        runs, not at call time.
    """
    if callable(name):
        raise ConfigurationError(
            'capability() takes the capability name first: use @capability("name")'
        )
    _check_name(name)
    _check_version(version)

    def decorate(func: F) -> F:
        target: Any = func
        if isinstance(func, (staticmethod, classmethod)):
            target = func.__func__
        if isinstance(getattr(target, "capability", None), Capability):
            existing: Capability = target.capability
            raise ConfigurationError(
                f"{_qualname(target)} is already capability {existing.name!r} "
                f"(version {existing.version!r}); a function can carry only one"
            )
        cap = Capability(target, name, version, description=description)
        try:
            target.capability = cap
        except (AttributeError, TypeError):
            raise ConfigurationError(
                f"cannot attach a capability to {target!r}; "
                f"create Capability({_qualname(target)}, {name!r}, {version!r}) directly"
            ) from None
        return func

    return decorate


def get_capability(obj: object) -> Capability:
    """Return the :class:`Capability` of a decorated function, ready to be served.

    ``obj`` is a function decorated with :func:`capability`, a bound method
    ``instance.method`` whose function is decorated (the capability is bound to
    ``instance``), or a :class:`Capability`. Unlike reading ``.capability``, this is
    fully typed.

    :raises ~loom.errors.ConfigurationError: when ``obj`` is not a capability, or is a
        method taken from the class rather than from an instance.
    """
    if isinstance(obj, Capability):
        cap = obj
    else:
        found = getattr(obj, "capability", None)
        if not isinstance(found, Capability):
            raise ConfigurationError(f"{obj!r} is not a capability; decorate it with @capability")
        cap = found
        if cap._unbound and inspect.ismethod(obj) and obj.__func__ is cap.func:
            cap = cap.bind(obj.__self__)
    if cap._unbound:
        raise ConfigurationError(
            f"capability {cap.name!r} is declared on a method; "
            "pass it bound to an instance (obj.method), not from the class"
        )
    return cap


def collect_capabilities(items: Iterable[object]) -> list[Capability]:
    """Turn decorated functions (or :class:`Capability` objects) into a list of
    capabilities, in order (see :func:`get_capability` for what an item may be).

    :raises ~loom.errors.ConfigurationError: when an item is not a capability, or when
        two items declare the same name and version.
    """
    seen: dict[tuple[str, str], Capability] = {}
    for item in items:
        cap = get_capability(item)
        key = (cap.name, cap.version)
        if key in seen:
            raise ConfigurationError(
                f"capability {cap.name!r} version {cap.version!r} is declared twice "
                f"({_qualname(seen[key].func)} and {_qualname(cap.func)})"
            )
        seen[key] = cap
    return list(seen.values())


# -- declaration helpers ----------------------------------------------------------------


def _check_name(name: object) -> None:
    if not isinstance(name, str):
        raise ConfigurationError(f"capability name must be a string, got {type(name).__name__}")
    if not name:
        raise ConfigurationError("capability name must not be empty")
    if any(char.isspace() for char in name):
        raise ConfigurationError(f"capability name {name!r} must not contain whitespace")


def _check_version(version: object) -> None:
    if not isinstance(version, str):
        raise ConfigurationError(
            f"capability version must be a string, got {type(version).__name__}"
        )
    if not version.strip():
        raise ConfigurationError("capability version must not be empty")
    if version != version.strip():
        raise ConfigurationError(
            f"capability version {version!r} must not start or end with whitespace"
        )


def _qualname(func: object) -> str:
    return str(getattr(func, "__qualname__", None) or repr(func))


def _is_async(func: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    if inspect.isfunction(func) or inspect.ismethod(func) or isinstance(func, partial):
        return False
    return inspect.iscoroutinefunction(getattr(func, "__call__", None))  # noqa: B004


def _docstring(func: Callable[..., Any]) -> str:
    target: object = func
    if isinstance(func, partial):
        target = func.func
    elif not (inspect.isfunction(target) or inspect.ismethod(target)):
        target = getattr(type(func), "__call__", func)  # noqa: B004
    return inspect.getdoc(target) or ""


def _signature_and_hints(
    func: Callable[..., Any], label: str
) -> tuple[inspect.Signature, dict[str, Any]]:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{label}: cannot read the signature: {exc}") from None
    try:
        if inspect.isfunction(func) or inspect.ismethod(func):
            hints = typing.get_type_hints(func, include_extras=True)
        else:
            evaluated = inspect.signature(func, eval_str=True)
            hints = {
                pname: param.annotation
                for pname, param in evaluated.parameters.items()
                if param.annotation is not inspect.Parameter.empty
            }
            if evaluated.return_annotation is not inspect.Signature.empty:
                hints["return"] = evaluated.return_annotation
    except Exception as exc:
        raise ConfigurationError(
            f"{label}: cannot resolve the type hints ({type(exc).__name__}: {exc}); "
            "every annotation must be resolvable when @capability runs"
        ) from exc
    return signature, hints


def _looks_like_method(func: Callable[..., Any], params: list[inspect.Parameter]) -> bool:
    """A function defined in a class body taking ``self``/``cls`` first."""
    if not inspect.isfunction(func) or not params:
        return False
    parts = func.__qualname__.split(".")
    if len(parts) < 2 or parts[-2] == "<locals>":
        return False
    first = params[0]
    return first.name in ("self", "cls") and first.kind in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )


def _json_value(value: object) -> tuple[bool, Any]:
    """``(True, json_form)`` when ``value`` can be encoded as JSON, else ``(False, None)``."""
    try:
        return True, msgspec.json.decode(_ENCODER.encode(value))
    except Exception:
        return False, None


# -- pydantic support (imported lazily) -------------------------------------------------


def _uses_pydantic(hint: object) -> bool:
    """Whether ``hint`` mentions a pydantic model (so pydantic must validate it)."""
    pydantic = sys.modules.get("pydantic")
    if pydantic is None:
        return False
    base = pydantic.BaseModel

    def walk(tp: object) -> bool:
        if isinstance(tp, type) and not isinstance(tp, types.GenericAlias):
            if issubclass(tp, base):
                return True
        return any(walk(arg) for arg in typing.get_args(tp))

    return walk(hint)


def _type_adapter(hint: object, label: str) -> Any:
    import pydantic

    try:
        return pydantic.TypeAdapter(cast(Any, hint))
    except Exception as exc:
        raise ConfigurationError(
            f"{label}: type hint {_hint_name(hint)} is not supported ({exc})"
        ) from exc


# -- schemas ------------------------------------------------------------------------------


def _hint_name(hint: object) -> str:
    if isinstance(hint, type) and not isinstance(hint, types.GenericAlias):
        return hint.__qualname__
    return repr(hint)


def _unsupported(label: str, what: str, hint: object, exc: Exception) -> ConfigurationError:
    reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return ConfigurationError(
        f"{label}: {what} has unsupported type hint {_hint_name(hint)} ({reason}); "
        "use str, int, float, bool, bytes, dict, list, Literal, Optional, msgspec "
        "Structs, dataclasses, TypedDicts, enums or pydantic models"
    )


def _parameter_schemas(
    order: list[str],
    msgspec_hints: list[tuple[str, Any]],
    pydantic_hints: list[tuple[str, Any]],
    label: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Property schemas (in parameter order) and the shared ``$defs``."""
    try:
        schemas, components = msgspec.json.schema_components(
            [hint for _, hint in msgspec_hints], ref_template=_REF_PREFIX + "{name}"
        )
    except Exception:
        # Find the culprit to name it in the error.
        for pname, hint in msgspec_hints:
            try:
                msgspec.json.schema(hint)
            except Exception as exc:
                raise _unsupported(label, f"parameter {pname!r}", hint, exc) from exc
        raise  # pragma: no cover - the loop above always finds it
    by_name: dict[str, Any] = {
        pname: schema for (pname, _), schema in zip(msgspec_hints, schemas, strict=True)
    }
    defs: dict[str, Any] = dict(components)

    if pydantic_hints:
        import pydantic

        try:
            pyd_schemas, pyd_defs = pydantic.TypeAdapter.json_schemas(
                [(pname, "validation", adapter) for pname, adapter in pydantic_hints],
                ref_template=_REF_PREFIX + "{model}",
            )
        except Exception as exc:
            raise ConfigurationError(
                f"{label}: cannot generate the JSON Schema of the pydantic parameters: {exc}"
            ) from exc
        renames = _merge_defs(defs, pyd_defs.get("$defs", {}))
        for (pname, _mode), schema in pyd_schemas.items():
            by_name[pname] = _rename_refs(schema, renames)

    # Keep the parameter order of the signature (msgspec and pydantic ones interleave).
    return {pname: by_name[pname] for pname in order}, defs


def _merge_defs(defs: dict[str, Any], extra: dict[str, Any]) -> dict[str, str]:
    """Add ``extra`` to ``defs``, renaming clashing names; returns the renames."""
    renames: dict[str, str] = {}
    for name in extra:
        if name in defs:
            index = 2
            while f"{name}{index}" in defs or f"{name}{index}" in extra:
                index += 1
            renames[name] = f"{name}{index}"
    for name, schema in extra.items():
        defs[renames.get(name, name)] = _rename_refs(schema, renames)
    return renames


def _rename_refs(schema: Any, renames: dict[str, str]) -> Any:
    if not renames:
        return schema
    if isinstance(schema, dict):
        out = {key: _rename_refs(value, renames) for key, value in schema.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith(_REF_PREFIX):
            target = ref[len(_REF_PREFIX) :]
            if target in renames:
                out["$ref"] = _REF_PREFIX + renames[target]
        return out
    if isinstance(schema, list):
        return [_rename_refs(item, renames) for item in schema]
    return schema


def _object_as_any(hint: Any) -> Any:
    """``object`` anywhere in a hint (``dict[str, object]``) means any JSON value."""
    if hint is object:
        return Any
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is None or not args or origin is typing.Literal or origin is typing.Annotated:
        return hint
    new_args = tuple(_object_as_any(a) for a in args)
    if new_args == args:
        return hint
    if origin is typing.Union or origin is types.UnionType:
        return typing.Union[new_args]  # noqa: UP007
    try:
        return origin[new_args]
    except TypeError:
        return hint


def _output_schema(hint: object, label: str) -> dict[str, Any]:
    hint = _object_as_any(hint)
    if hint is inspect.Parameter.empty or hint is Any:
        return {}
    if _uses_pydantic(hint):
        adapter = _type_adapter(hint, f"{label}: return annotation")
        try:
            schema: dict[str, Any] = adapter.json_schema(mode="serialization")
        except Exception as exc:
            raise ConfigurationError(
                f"{label}: cannot generate the JSON Schema of the return annotation: {exc}"
            ) from exc
        return schema
    try:
        return msgspec.json.schema(hint, ref_template=_REF_PREFIX + "{name}")
    except Exception as exc:
        raise _unsupported(label, "the return annotation", hint, exc) from exc
