"""A reader for third-party data that only exists as pickles (CIFAR's python batches), without Python's
pickle machinery.

It interprets the pickle opcodes that plain data uses (dicts, lists, tuples, strings, bytes, numbers and
numpy arrays of a plain dtype) and builds those values itself: no class is ever imported or called, and
any other global or opcode (code, objects, extensions) is refused, so a hostile file cannot run code.
Never used for our own caches or checkpoints (those hold no pickle).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from kamim.errors import UserError

_NUMPY = ("numpy.core.multiarray", "numpy._core.multiarray")
_GLOBALS = {
    **{(module, "_reconstruct"): "reconstruct" for module in _NUMPY},
    **{(module, "scalar"): "scalar" for module in _NUMPY},
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("_codecs", "encode"): "encode",  # how Python 3 writes bytes at protocol 2
    ("__builtin__", "bytes"): "bytes",  # ... and an empty bytes
    ("builtins", "bytes"): "bytes",
}


class RefusedPickle(ValueError):
    """Not plain data: a global or an opcode this reader does not build."""


class _Pending:
    """A numpy dtype or array under construction (REDUCE gave its arguments, BUILD gives its state)."""

    def __init__(self, kind: str, args: tuple) -> None:
        self.kind, self.args, self.value = kind, args, None

    def build(self, state: tuple) -> None:
        if self.kind == "dtype":  # state: (version, byte order, subarray, names, fields, ...)
            if state[2] is not None or state[3] is not None:
                raise RefusedPickle("structured dtype")
            dtype = np.dtype(_text(self.args[0]))
            order = _text(state[1])
            self.value = dtype.newbyteorder(order) if order in ("<", ">") else dtype
        else:  # state: (version, shape, dtype, Fortran order, raw bytes)
            _, shape, dtype, fortran, raw = state
            dtype = _resolve(dtype)
            if not isinstance(raw, bytes | bytearray) or dtype.hasobject:
                raise RefusedPickle("array of Python objects")
            order = "F" if fortran else "C"
            self.value = np.frombuffer(raw, dtype=dtype).reshape(tuple(shape), order=order).copy(order="K")


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _resolve(value):  # noqa: ANN001, ANN202 - replaces finished dtypes/arrays by their values, recursively
    if isinstance(value, _Pending):
        if value.value is None:
            raise RefusedPickle(f"{value.kind} without its state")
        return value.value
    if isinstance(value, dict):
        return {_resolve(k): _resolve(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_resolve(v) for v in value)
    return value


def _reduce(func: str, args: tuple):  # noqa: ANN202
    if func in ("reconstruct", "dtype"):
        return _Pending("array" if func == "reconstruct" else "dtype", args)
    if func == "encode" and len(args) == 2 and args[1] in ("latin1", "latin-1") and isinstance(args[0], str):
        return args[0].encode("latin-1")
    if func == "bytes" and args == ():
        return b""
    if func == "scalar" and len(args) == 2:
        return np.frombuffer(args[1], dtype=_resolve(args[0]))[0]
    raise RefusedPickle(f"refused call of {func}")


_SIZED = {  # opcode: (length format, kind) for the length-prefixed strings
    b"X": ("<I", "str"), b"\x8c": ("<B", "str"), b"\x8d": ("<Q", "str"),
    b"T": ("<i", "bytes"), b"U": ("<B", "bytes"), b"B": ("<I", "bytes"), b"C": ("<B", "bytes"),
    b"\x8e": ("<Q", "bytes"), b"\x96": ("<Q", "bytearray"),
}
_INTS = {b"J": "<i", b"K": "<B", b"M": "<H"}
_CONSTANTS = {b"N": None, b"\x88": True, b"\x89": False}
_EMPTY = {b"}": dict, b"]": list, b")": tuple}


def parse_plain_pickle(data: bytes):  # noqa: ANN201 - any plain value
    """The value a pickle of plain data holds (bytes keys and strings stay bytes, as ``encoding="bytes"``)."""
    view, at = memoryview(data), 0
    stack: list = []
    marks: list[list] = []
    memo: dict[int, object] = {}

    def take(n: int) -> bytes:
        nonlocal at
        if at + n > len(view):
            raise EOFError("pickle data was truncated")
        chunk, at = bytes(view[at : at + n]), at + n
        return chunk

    def number(fmt: str) -> int:
        return struct.unpack(fmt, take(struct.calcsize(fmt)))[0]

    def since_mark() -> list:
        nonlocal stack
        items, stack = stack, marks.pop()
        return items

    def line() -> str:
        nonlocal at
        end = data.index(b"\n", at)
        text, at = data[at:end].decode("latin-1"), end + 1
        return text

    def global_(module: str, name: str) -> None:
        if (module, name) not in _GLOBALS:
            raise RefusedPickle(f"refused global {module}.{name}")
        stack.append(_GLOBALS[(module, name)])

    while True:
        op = take(1)
        if op in _SIZED:
            fmt, kind = _SIZED[op]
            raw = take(number(fmt))
            stack.append(raw.decode("utf-8") if kind == "str" else bytearray(raw) if kind == "bytearray" else raw)
        elif op in _INTS:
            stack.append(number(_INTS[op]))
        elif op in _CONSTANTS:
            stack.append(_CONSTANTS[op])
        elif op in _EMPTY:
            stack.append(_EMPTY[op]())
        elif op == b"\x80":  # PROTO
            take(1)
        elif op == b"\x95":  # FRAME: framing only
            take(8)
        elif op == b".":  # STOP
            return _resolve(stack.pop())
        elif op == b"(":  # MARK
            marks.append(stack)
            stack = []
        elif op == b"\x8a":  # LONG1
            stack.append(int.from_bytes(take(number("<B")), "little", signed=True))
        elif op == b"G":  # BINFLOAT
            stack.append(number(">d"))
        elif op in (b"q", b"r", b"\x94"):  # BINPUT, LONG_BINPUT, MEMOIZE
            memo[len(memo) if op == b"\x94" else number("<B" if op == b"q" else "<I")] = stack[-1]
        elif op in (b"h", b"j"):  # BINGET, LONG_BINGET
            stack.append(memo[number("<B" if op == b"h" else "<I")])
        elif op == b"a":  # APPEND
            value = stack.pop()
            stack[-1].append(value)
        elif op == b"e":  # APPENDS
            items = since_mark()
            stack[-1].extend(items)
        elif op in (b"s", b"u"):  # SETITEM, SETITEMS
            items = [stack.pop(), stack.pop()][::-1] if op == b"s" else since_mark()
            target = stack[-1]
            if not isinstance(target, dict):
                raise RefusedPickle("items set on a non-dict")
            target.update(zip(items[::2], items[1::2], strict=True))
        elif op in (b"\x85", b"\x86", b"\x87"):  # TUPLE1..3
            size = {b"\x85": 1, b"\x86": 2, b"\x87": 3}[op]
            items = tuple(stack[-size:])
            del stack[-size:]
            stack.append(items)
        elif op == b"t":  # TUPLE
            items = tuple(since_mark())  # first: since_mark rebinds the stack
            stack.append(items)
        elif op == b"c":  # GLOBAL
            global_(line(), line())
        elif op == b"\x93":  # STACK_GLOBAL
            name = stack.pop()
            global_(stack.pop(), name)
        elif op == b"R":  # REDUCE
            args = stack.pop()
            stack.append(_reduce(stack.pop(), args))
        elif op == b"b":  # BUILD
            state = stack.pop()
            if not isinstance(stack[-1], _Pending):
                raise RefusedPickle("state set on a plain value")
            stack[-1].build(state)
        else:
            raise RefusedPickle(f"unsupported pickle opcode {op!r}")


def load_plain_pickle(path: str | Path) -> dict:
    path = Path(path)
    try:
        return parse_plain_pickle(path.read_bytes())
    except (RefusedPickle, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            struct.error, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not a plain data pickle ({error}); re-extract the dataset archive") from None
