"""Tests of the ``@capability`` decorator and :class:`loom.capability.Capability`."""

import __future__

import base64
import dataclasses
import enum
import json
import threading
from typing import Annotated, Any, Literal, Optional, TypedDict

import msgspec
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loom._session import CapabilityInfo
from loom.capability import Capability, capability, collect_capabilities, get_capability
from loom.errors import CapabilityError, ConfigurationError, InvalidArguments

# -- types used in signatures (module level, so annotations resolve) -------------------


class Point(msgspec.Struct):
    x: int
    y: int = 0


@dataclasses.dataclass
class Box:
    width: float
    label: str = "box"


class Movie(TypedDict):
    title: str
    year: int


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class User(pydantic.BaseModel):
    name: str
    age: int = 0


class NotSerializable:
    pass


def _schema(func: Any) -> dict[str, Any]:
    schema: dict[str, Any] = get_capability(func).input_schema
    return schema


# -- the decorator keeps a plain callable ---------------------------------------------


def test_sync_function_stays_a_plain_callable() -> None:
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    decorated = capability("math.add", version="1.0")(add)
    assert decorated is add
    assert add(1, 2) == 3
    assert add.capability.name == "math.add"  # type: ignore[attr-defined]
    assert add.capability.version == "1.0"  # type: ignore[attr-defined]
    assert add.capability.func is add  # type: ignore[attr-defined]
    assert add.capability.is_async is False  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_async_function_stays_a_plain_coroutine_function() -> None:
    @capability("greet")
    async def greet(name: str) -> str:
        return f"hello {name}"

    assert await greet("x") == "hello x"
    cap = get_capability(greet)
    assert cap.version == "1.0"
    assert cap.is_async is True


def test_description_from_docstring_or_argument() -> None:
    @capability("doc")
    def documented() -> None:
        """First line.

        Second paragraph, indented
        over two lines.
        """

    @capability("nodoc")
    def undocumented() -> None:
        pass

    @capability("explicit", description="Given explicitly.")
    def overridden() -> None:
        """Docstring."""

    assert get_capability(documented).description == (
        "First line.\n\nSecond paragraph, indented\nover two lines."
    )
    assert get_capability(documented).input_schema["description"] == (
        get_capability(documented).description
    )
    assert get_capability(undocumented).description == ""
    assert "description" not in get_capability(undocumented).input_schema
    assert get_capability(overridden).description == "Given explicitly."


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("", "1.0"),
        ("has space", "1.0"),
        ("tab\there", "1.0"),
        ("ok", ""),
        ("ok", "  "),
        ("ok", " 1"),
    ],
)
def test_bad_name_or_version_rejected(name: str, version: str) -> None:
    with pytest.raises(ConfigurationError):
        capability(name, version)


def test_bad_name_types_rejected() -> None:
    with pytest.raises(ConfigurationError, match="must be a string"):
        capability(3)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="must be a string"):
        capability("x", version=1)  # type: ignore[arg-type]


def test_decorator_used_without_name_rejected() -> None:
    def f() -> None:
        pass

    with pytest.raises(ConfigurationError, match=r'@capability\("name"\)'):
        capability(f)  # type: ignore[arg-type]


def test_function_cannot_carry_two_capabilities() -> None:
    @capability("one")
    def f() -> None:
        pass

    with pytest.raises(ConfigurationError, match="already capability 'one'"):
        capability("two")(f)


# -- schemas -----------------------------------------------------------------------------


def test_default_without_json_form_is_left_out_of_the_schema() -> None:
    marker = NotSerializable()

    @capability("opaque.default")
    def f(value: Any = marker) -> None:
        pass

    cap = get_capability(f)
    assert cap.input_schema["properties"] == {"value": {}}
    assert cap.input_schema["required"] == []
    assert cap.decode_arguments(b"{}") == {}


def test_basic_type_schemas() -> None:
    @capability("scalars")
    def f(
        s: str,
        i: int,
        fl: float,
        b: bool,
        raw: bytes,
        d: dict,  # type: ignore[type-arg]
        lst: list,  # type: ignore[type-arg]
        untyped,  # type: ignore[no-untyped-def]
        anything: Any,
        n: int = 5,
        text: str = "hi",
        items: list[int] = [],  # noqa: B006
    ) -> str:
        return s

    schema = _schema(f)
    assert schema["type"] == "object"
    assert schema["title"] == "scalars"
    assert schema["additionalProperties"] is False
    assert schema["properties"] == {
        "s": {"type": "string"},
        "i": {"type": "integer"},
        "fl": {"type": "number"},
        "b": {"type": "boolean"},
        "raw": {"type": "string", "contentEncoding": "base64"},
        "d": {"type": "object"},
        "lst": {"type": "array"},
        "untyped": {},
        "anything": {},
        "n": {"type": "integer", "default": 5},
        "text": {"type": "string", "default": "hi"},
        "items": {"type": "array", "items": {"type": "integer"}, "default": []},
    }
    assert schema["required"] == ["s", "i", "fl", "b", "raw", "d", "lst", "untyped", "anything"]
    assert "$defs" not in schema


def test_container_optional_literal_schemas() -> None:
    @capability("containers")
    def f(
        scores: dict[str, float],
        tags: list[str],
        maybe: int | None,
        legacy: Optional[str] = None,  # noqa: UP045
        mode: Literal["fast", "slow"] = "fast",
        small: Annotated[int, msgspec.Meta(ge=0, le=10)] = 1,
    ) -> None:
        pass

    props = _schema(f)["properties"]
    assert props["scores"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["maybe"] == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert props["legacy"] == {
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "default": None,
    }
    assert props["mode"] == {"enum": ["fast", "slow"], "default": "fast"}
    assert props["small"] == {"type": "integer", "minimum": 0, "maximum": 10, "default": 1}
    assert _schema(f)["required"] == ["scores", "tags", "maybe"]


def test_named_types_go_to_defs() -> None:
    @capability("named")
    def f(point: Point, box: Box, movie: Movie, color: Color = Color.RED) -> Point:
        return point

    schema = _schema(f)
    props = schema["properties"]
    assert props["point"] == {"$ref": "#/$defs/Point"}
    assert props["box"] == {"$ref": "#/$defs/Box"}
    assert props["movie"] == {"$ref": "#/$defs/Movie"}
    assert props["color"] == {"$ref": "#/$defs/Color", "default": "red"}
    defs = schema["$defs"]
    assert defs["Point"]["type"] == "object"
    assert defs["Point"]["properties"] == {
        "x": {"type": "integer"},
        "y": {"type": "integer", "default": 0},
    }
    assert defs["Point"]["required"] == ["x"]
    assert defs["Box"]["properties"]["width"] == {"type": "number"}
    assert defs["Box"]["required"] == ["width"]
    assert defs["Movie"]["properties"] == {"title": {"type": "string"}, "year": {"type": "integer"}}
    assert defs["Movie"]["required"] == ["title", "year"]
    assert sorted(defs["Color"]["enum"]) == ["green", "red"]
    # The result schema is a standalone document with its own $defs.
    output = get_capability(f).output_schema
    assert output["$ref"] == "#/$defs/Point"
    assert output["$defs"]["Point"]["required"] == ["x"]


def test_output_schemas() -> None:
    @capability("o1")
    def none_returned() -> None:
        pass

    @capability("o2")
    def unannotated():  # type: ignore[no-untyped-def]
        return 1

    @capability("o3")
    async def listed() -> list[int]:
        return []

    assert get_capability(none_returned).output_schema == {"type": "null"}
    assert get_capability(unannotated).output_schema == {}
    assert get_capability(listed).output_schema == {"type": "array", "items": {"type": "integer"}}


def test_metadata_and_info_carry_json_schema_strings() -> None:
    @capability("math.add", version="2.1")
    def add(a: int, b: int = 1) -> int:
        """Add."""
        return a + b

    cap = get_capability(add)
    metadata = cap.metadata()
    assert set(metadata) == {"input_schema", "output_schema", "description"}
    assert json.loads(metadata["input_schema"]) == cap.input_schema
    assert json.loads(metadata["output_schema"]) == {"type": "integer"}
    assert metadata["description"] == "Add."
    metadata["description"] = "changed"
    assert cap.metadata()["description"] == "Add."
    info = cap.as_info()
    assert isinstance(info, CapabilityInfo)
    assert (info.name, info.version) == ("math.add", "2.1")
    assert info.metadata == cap.metadata()


def test_postponed_annotations_are_resolved() -> None:
    source = (
        "from loom.capability import capability\n"
        "@capability('future')\n"
        "def f(p: Point, n: int | None = None) -> list[Point]:\n"
        "    return [p]\n"
    )
    code = compile(
        source, "<future>", "exec", flags=__future__.annotations.compiler_flag, dont_inherit=True
    )
    namespace: dict[str, Any] = {"Point": Point}
    exec(code, namespace)
    func = namespace["f"]
    assert func.__annotations__["p"] == "Point"  # really postponed
    cap = get_capability(func)
    assert cap.input_schema["properties"]["p"] == {"$ref": "#/$defs/Point"}
    assert cap.input_schema["properties"]["n"]["anyOf"][1] == {"type": "null"}
    assert cap.output_schema["items"] == {"$ref": "#/$defs/Point"}
    assert cap.decode_arguments(b'{"p": {"x": 1}}') == {"p": Point(x=1)}


# -- rejected declarations ----------------------------------------------------------------


def test_unsupported_hint_rejected_at_decoration() -> None:
    with pytest.raises(ConfigurationError, match=r"parameter 'thing'.*NotSerializable"):

        @capability("bad")
        def f(a: int, thing: NotSerializable) -> None:
            pass

    with pytest.raises(ConfigurationError, match="return annotation"):

        @capability("bad.return")
        def g() -> NotSerializable:
            return NotSerializable()

    with pytest.raises(ConfigurationError, match="'nested'"):

        @capability("bad.nested")
        def h(nested: list[NotSerializable]) -> None:
            pass


def test_var_args_rejected_at_decoration() -> None:
    with pytest.raises(ConfigurationError, match=r"\*args"):

        @capability("star")
        def f(*args: int) -> None:
            pass

    with pytest.raises(ConfigurationError, match=r"\*\*kwargs"):

        @capability("kw")
        def g(a: int, **kwargs: int) -> None:
            pass


def test_generators_and_unresolvable_hints_rejected() -> None:
    with pytest.raises(ConfigurationError, match="generator"):

        @capability("gen")
        def f() -> Any:
            yield 1

    with pytest.raises(ConfigurationError, match="cannot resolve the type hints"):

        @capability("unresolved")
        def g(a: "DoesNotExist") -> None:  # type: ignore[name-defined]  # noqa: F821
            pass


# -- argument decoding and validation ----------------------------------------------------


@capability("validate")
def _validated(a: int, point: Point, tags: list[str] = [], note: str | None = None) -> int:  # noqa: B006
    return a


def _invalid(func: Any, payload: bytes) -> str:
    with pytest.raises(InvalidArguments) as info:
        get_capability(func).decode_arguments(payload)
    assert info.value.code == "INVALID_INPUT"
    return info.value.message


def test_decode_converts_and_omits_absent_defaults() -> None:
    cap = get_capability(_validated)
    args = cap.decode_arguments(b'{"a": 1, "point": {"x": 2}}')
    assert args == {"a": 1, "point": Point(x=2, y=0)}
    args = cap.decode_arguments(b'{"a": 1, "point": {"x": 2}, "tags": ["t"], "note": null}')
    assert args == {"a": 1, "point": Point(x=2), "tags": ["t"], "note": None}


def test_decode_named_types() -> None:
    @capability("named.decode")
    def f(box: Box, movie: Movie, color: Color, data: bytes, mode: Literal["a", "b"]) -> None:
        pass

    payload = json.dumps(
        {
            "box": {"width": 2},
            "movie": {"title": "M", "year": 1999},
            "color": "green",
            "data": base64.b64encode(b"\x00\x01").decode(),
            "mode": "b",
        }
    ).encode()
    args = get_capability(f).decode_arguments(payload)
    assert args == {
        "box": Box(width=2.0),
        "movie": {"title": "M", "year": 1999},
        "color": Color.GREEN,
        "data": b"\x00\x01",
        "mode": "b",
    }
    assert isinstance(args["box"], Box)
    assert "mode" in _invalid(f, payload.replace(b'"mode": "b"', b'"mode": "c"'))


def test_wrong_type_names_the_field() -> None:
    message = _invalid(_validated, b'{"a": "one", "point": {"x": 1}}')
    assert "Expected `int`, got `str`" in message
    assert "`$.a`" in message
    assert "'validate'" in message
    nested = _invalid(_validated, b'{"a": 1, "point": {"x": "1"}}')
    assert "`$.point.x`" in nested
    item = _invalid(_validated, b'{"a": 1, "point": {"x": 1}, "tags": ["ok", 2]}')
    assert "`$.tags[1]`" in item
    explicit_null = _invalid(_validated, b'{"a": null, "point": {"x": 1}}')
    assert "got `null`" in explicit_null
    assert "`$.a`" in explicit_null


def test_missing_field_is_named() -> None:
    message = _invalid(_validated, b'{"point": {"x": 1}}')
    assert "missing required argument `a`" in message
    assert "missing required argument `a`" in _invalid(_validated, b"")
    assert "missing required argument `a`" in _invalid(_validated, b"null")


def test_unknown_field_is_named() -> None:
    message = _invalid(_validated, b'{"a": 1, "point": {"x": 1}, "extra": true}')
    assert "unknown argument `extra`" in message
    assert "`a`" in message  # the expected ones are listed


def test_invalid_json_and_non_object() -> None:
    assert "not valid JSON" in _invalid(_validated, b'{"a": ')
    assert "not valid JSON" in _invalid(_validated, b"\xff")
    for payload, got in [(b"[1, 2]", "array"), (b"3", "int"), (b'"a"', "str"), (b"true", "bool")]:
        message = _invalid(_validated, payload)
        assert "must be a JSON object" in message
        assert got in message


def test_no_arguments() -> None:
    @capability("noargs")
    def f(n: int = 3) -> int:
        return n

    cap = get_capability(f)
    for payload in (b"", b"null", b"{}", b"  \n", b" null "):
        assert cap.decode_arguments(payload) == {}
    message = _invalid(f, b'{"m": 1}')
    assert "unknown argument `m`" in message


def test_msgspec_errors_never_escape() -> None:
    cap = get_capability(_validated)
    for payload in [b"{", b"}", b"nul", b'{"a": 1, "a": }', b"\x00", b'{"point": [1]}']:
        with pytest.raises(InvalidArguments):
            cap.decode_arguments(payload)


# -- invoke --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_invoke_sync_function_runs_in_worker_thread() -> None:
    seen: list[int] = []

    @capability("math.add")
    def add(a: int, b: int = 10) -> int:
        seen.append(threading.get_ident())
        return a + b

    cap = get_capability(add)
    assert await cap.invoke(b'{"a": 1, "b": 2}') == b"3"
    assert await cap.invoke(b'{"a": 1}') == b"11"
    assert seen
    assert threading.get_ident() not in seen


@pytest.mark.anyio
async def test_invoke_async_function_runs_on_the_loop() -> None:
    seen: list[int] = []

    @capability("shout")
    async def shout(word: str, times: int = 2) -> dict[str, str]:
        seen.append(threading.get_ident())
        return {"out": word.upper() * times}

    assert await get_capability(shout).invoke(b'{"word": "a"}') == b'{"out":"AA"}'
    assert seen == [threading.get_ident()]


@pytest.mark.anyio
async def test_invoke_encodes_structured_results() -> None:
    @capability("structured")
    def f(point: Point, box: Box) -> dict[str, Any]:
        return {"point": point, "box": box, "color": Color.GREEN, "raw": b"\x01"}

    out = await get_capability(f).invoke(
        b'{"point": {"x": 1}, "box": {"width": 1.5, "label": "b"}}'
    )
    assert json.loads(out) == {
        "point": {"x": 1, "y": 0},
        "box": {"width": 1.5, "label": "b"},
        "color": "green",
        "raw": "AQ==",
    }


@pytest.mark.anyio
async def test_invoke_validation_error_is_invalid_arguments() -> None:
    with pytest.raises(InvalidArguments, match=r"\$\.a"):
        await get_capability(_validated).invoke(b'{"a": "x", "point": {"x": 1}}')


@pytest.mark.anyio
async def test_user_exception_propagates_unchanged() -> None:
    class Boom(Exception):
        pass

    @capability("boom")
    def sync_boom() -> None:
        raise Boom("sync")

    @capability("aboom")
    async def async_boom() -> None:
        raise Boom("async")

    with pytest.raises(Boom, match="sync"):
        await get_capability(sync_boom).invoke(b"")
    with pytest.raises(Boom, match="async"):
        await get_capability(async_boom).invoke(b"")


@pytest.mark.anyio
async def test_unencodable_result_is_capability_error() -> None:
    @capability("unencodable")
    def f() -> Any:
        return NotSerializable()

    with pytest.raises(CapabilityError) as info:
        await get_capability(f).invoke(b"")
    assert info.value.code == "CAPABILITY_ERROR"
    assert "NotSerializable" in info.value.message
    assert "'unencodable'" in info.value.message


@pytest.mark.anyio
async def test_positional_only_and_keyword_only_parameters() -> None:
    @capability("kinds")
    def f(a: int, b: int = 2, /, c: int = 3, *, d: int = 4) -> list[int]:
        return [a, b, c, d]

    cap = get_capability(f)
    assert cap.input_schema["required"] == ["a"]
    assert await cap.invoke(b'{"a": 1}') == b"[1,2,3,4]"
    assert await cap.invoke(b'{"a": 1, "b": 5, "d": 6}') == b"[1,5,3,6]"


# -- methods ---------------------------------------------------------------------------------


class Calculator:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    @capability("calc.scale")
    def scale(self, value: int) -> int:
        """Scale a value."""
        return value * self.factor

    @capability("calc.ascale")
    async def ascale(self, value: int) -> int:
        return value * self.factor

    @capability("calc.static")
    @staticmethod
    def static(value: int) -> int:
        return -value

    @capability("calc.name")
    @classmethod
    def name(cls, suffix: str) -> str:
        return cls.__name__ + suffix


@pytest.mark.anyio
async def test_method_capabilities() -> None:
    calc = Calculator(3)
    assert calc.scale(2) == 6
    assert Calculator.static(2) == -2
    assert Calculator.name("!") == "Calculator!"
    # ``self`` / ``cls`` are not arguments on the wire.
    assert Calculator.scale.capability.input_schema["required"] == ["value"]  # type: ignore[attr-defined]
    assert list(Calculator.name.capability.input_schema["properties"]) == ["suffix"]  # type: ignore[attr-defined]

    caps = collect_capabilities([calc.scale, calc.ascale, Calculator.static, Calculator.name])
    assert [c.name for c in caps] == ["calc.scale", "calc.ascale", "calc.static", "calc.name"]
    assert await caps[0].invoke(b'{"value": 5}') == b"15"
    assert await caps[1].invoke(b'{"value": 5}') == b"15"
    assert await caps[2].invoke(b'{"value": 5}') == b"-5"
    assert await caps[3].invoke(b'{"suffix": "?"}') == b'"Calculator?"'
    assert caps[0].description == "Scale a value."


def test_method_taken_from_class_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="bound to an instance"):
        collect_capabilities([Calculator.scale])
    bound = Calculator.scale.capability.bind(Calculator(1))  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="not an unbound method"):
        bound.bind(Calculator(2))


def test_direct_capability_construction() -> None:
    calc = Calculator(2)
    cap = Capability(calc.scale, "direct.scale", "3")
    assert cap.input_schema["required"] == ["value"]
    assert collect_capabilities([cap]) == [cap]


# -- collect_capabilities -------------------------------------------------------------------


def test_collect_capabilities() -> None:
    @capability("a")
    def a() -> None:
        pass

    @capability("a", version="2.0")
    def a2() -> None:
        pass

    def plain() -> None:
        pass

    caps = collect_capabilities([a, get_capability(a2)])
    assert [(c.name, c.version) for c in caps] == [("a", "1.0"), ("a", "2.0")]
    with pytest.raises(
        ConfigurationError, match="is not a capability; decorate it with @capability"
    ):
        collect_capabilities([a, plain])
    with pytest.raises(ConfigurationError, match="not a capability"):
        collect_capabilities(["a"])

    @capability("a")
    def again() -> None:
        pass

    with pytest.raises(ConfigurationError, match="declared twice"):
        collect_capabilities([a, again])


# -- pydantic ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_pydantic_parameter_and_return() -> None:
    @capability("users.birthday")
    async def birthday(user: User, friends: list[User] | None = None, n: int = 1) -> User:
        return User(name=user.name, age=user.age + n)

    cap = get_capability(birthday)
    schema = cap.input_schema
    assert schema["properties"]["user"] == {"$ref": "#/$defs/User"}
    assert schema["properties"]["friends"]["anyOf"][0] == {
        "type": "array",
        "items": {"$ref": "#/$defs/User"},
    }
    assert schema["properties"]["friends"]["default"] is None
    assert schema["properties"]["n"] == {"type": "integer", "default": 1}
    assert schema["required"] == ["user"]
    assert schema["$defs"]["User"]["properties"]["name"]["type"] == "string"
    assert schema["$defs"]["User"]["required"] == ["name"]
    assert cap.output_schema["title"] == "User"
    assert cap.output_schema["properties"]["age"]["type"] == "integer"

    args = cap.decode_arguments(b'{"user": {"name": "ann", "age": 3}}')
    assert args == {"user": User(name="ann", age=3)}
    assert isinstance(args["user"], User)
    args = cap.decode_arguments(b'{"user": {"name": "ann"}, "friends": [{"name": "bo"}]}')
    assert args["friends"] == [User(name="bo")]

    out = await cap.invoke(b'{"user": {"name": "ann", "age": 3}, "n": 2}')
    assert json.loads(out) == {"name": "ann", "age": 5}

    message = _invalid(birthday, b'{"user": {"name": "ann", "age": "old"}}')
    assert "`$.user.age`" in message
    message = _invalid(birthday, b'{"user": {"name": "ann"}, "friends": [{"age": 1}]}')
    assert "`$.friends[0].name`" in message
    assert "missing required argument `user`" in _invalid(birthday, b"{}")
    assert "`$.n`" in _invalid(birthday, b'{"user": {"name": "a"}, "n": "x"}')


@pytest.mark.anyio
async def test_pydantic_models_nested_in_results_are_encoded() -> None:
    @capability("users.list")
    def users() -> list[User]:
        return [User(name="a"), User(name="b", age=2)]

    out = await get_capability(users).invoke(b"")
    assert json.loads(out) == [{"name": "a", "age": 0}, {"name": "b", "age": 2}]


# -- property tests ----------------------------------------------------------------------------


@capability("prop.scalars")
def _prop_scalars(i: int, s: str, f: float, flag: bool) -> None:
    pass


@capability("prop.containers")
def _prop_containers(
    ints: list[int], names: dict[str, str], maybe: int | None, opt: str | None = None
) -> None:
    pass


_finite = st.floats(allow_nan=False, allow_infinity=False)
_scalar_args = st.fixed_dictionaries(
    {"i": st.integers(), "s": st.text(), "f": _finite, "flag": st.booleans()}
)
_container_args = st.fixed_dictionaries(
    {
        "ints": st.lists(st.integers(min_value=-(2**63), max_value=2**64 - 1)),
        "names": st.dictionaries(st.text(), st.text()),
        "maybe": st.none() | st.integers(),
    },
    optional={"opt": st.none() | st.text()},
)

# JSON values of a type each parameter refuses.
_json_scalars = {
    "int": st.integers(),
    "str": st.text(),
    "float": _finite,
    "bool": st.booleans(),
    "null": st.none(),
    "list": st.lists(st.integers(), max_size=2),
    "dict": st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
}
_wrong_types = {
    "i": ["str", "float", "bool", "null", "list", "dict"],
    "s": ["int", "float", "bool", "null", "list", "dict"],
    "f": ["str", "bool", "null", "list", "dict"],
    "flag": ["int", "str", "float", "null", "list", "dict"],
    "ints": ["int", "str", "bool", "null", "dict"],
    "names": ["int", "str", "bool", "null", "list"],
    "maybe": ["str", "float", "bool", "list", "dict"],
    "opt": ["int", "float", "bool", "list", "dict"],
}


@st.composite
def _wrong_value(draw: st.DrawFn, field: str) -> Any:
    kind = draw(st.sampled_from(_wrong_types[field]))
    return draw(_json_scalars[kind])


@settings(max_examples=60, deadline=None)
@given(args=_scalar_args)
def test_property_scalars_round_trip(args: dict[str, Any]) -> None:
    decoded = get_capability(_prop_scalars).decode_arguments(json.dumps(args).encode())
    assert decoded == args
    assert {k: type(v) for k, v in decoded.items()} == {k: type(v) for k, v in args.items()}


@settings(max_examples=60, deadline=None)
@given(args=_container_args)
def test_property_containers_round_trip(args: dict[str, Any]) -> None:
    payload = msgspec.json.encode(args)
    assert get_capability(_prop_containers).decode_arguments(payload) == args


@settings(max_examples=60, deadline=None)
@given(data=st.data(), func=st.sampled_from([_prop_scalars, _prop_containers]))
def test_property_wrong_json_type_rejected(data: st.DataObject, func: Any) -> None:
    cap = get_capability(func)
    base = {
        "i": 1,
        "s": "s",
        "f": 1.5,
        "flag": True,
        "ints": [1],
        "names": {},
        "maybe": None,
        "opt": "o",
    }
    args = {name: base[name] for name in cap.input_schema["properties"]}
    field = data.draw(st.sampled_from(sorted(args)))
    args[field] = data.draw(_wrong_value(field))
    with pytest.raises(InvalidArguments) as info:
        cap.decode_arguments(json.dumps(args).encode())
    assert f"`$.{field}`" in info.value.message


def test_object_inside_hints_means_any_json_value() -> None:
    @capability("obj.echo")
    def echo(data: dict[str, object], items: list[object] | None = None) -> dict[str, object]:
        return {"data": data, "items": items}

    cap = echo.capability
    assert cap.input_schema["properties"]["data"] == {"type": "object"}
    assert cap.output_schema == {"type": "object"}
    args = cap.decode_arguments(b'{"data": {"a": [1, "x", null]}, "items": [1, {"b": 2}]}')
    assert args == {"data": {"a": [1, "x", None]}, "items": [1, {"b": 2}]}
