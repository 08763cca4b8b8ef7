"""Vectorised parsing of delimited text: field spans of whole lines, numbers, hex and hashed tokens.

A `Chunk` holds whole lines. Everything here works on arrays of byte positions, so a 16 MB chunk costs
a few dozen numpy passes instead of a Python loop per field: that is what lets one core prepare tens
of MB/s. The common tokens (decimals of up to 8 digits, 8-digit hex hashes: all of Criteo) take a
fast path: one unaligned 8-byte load per token and a few integer operations on the word
("SWAR", SIMD within a register); other tokens go through a general per-character path.

Tokens become int64 *keys* (vocab.py turns keys into ids):
- int:  a decimal integer is its own key;
- hex:  up to 14 hex digits -> (digits << 56) | value: keys sort by width, then like the text
        (Criteo's hashes are all 8 digits), and the text can be rebuilt from the key;
- str:  any bytes -> 64-bit FNV-1a hash (the text is recovered from the file for the vocabulary).
An empty token is a missing value with a key of its own (MISSING for int and numeric columns).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Optional

import numpy as np

MISSING = np.int64(np.iinfo(np.int64).min)   # key of an empty int/numeric token; sorts first
# key of a junk token in a codec int column with on_bad_value: oov; never in a vocabulary (so it encodes
# as OOV), and no parsed integer (at most MAX_INT_DIGITS digits) can have it
BAD_VALUE = np.int64(np.iinfo(np.int64).min + 1)
MAX_NUMBER_WIDTH = 40                         # longer numeric tokens are rejected, not parsed
MAX_INT_DIGITS = 18                           # always fits int64
MAX_HEX_DIGITS = 14                           # the top byte of a hex key keeps the width
FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
PAD = 8                                       # zero bytes around a chunk, for 8-byte loads
_BLOCK = 16384                                # tokens per step of the SWAR paths: their dozen-odd
#                                               temporaries stay in L2 cache (measured 2x faster)

_NL, _CR = 10, 13
_U64 = np.uint64
_BYTES_0X30, _BYTES_0X0F, _BYTES_0XF0 = _U64(0x3030303030303030), _U64(0x0F0F0F0F0F0F0F0F), _U64(0xF0F0F0F0F0F0F0F0)
# HIGH_BYTES[n]: a word mask selecting its top n bytes (a right-aligned token of n bytes)
_HIGH_BYTES = np.array([0] + [(~0 << (8 * (8 - n))) & 0xFFFFFFFFFFFFFFFF for n in range(1, 9)], dtype=np.uint64)
_HEX_VALUE = np.full(256, -1, dtype=np.int64)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_VALUE[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX_VALUE[_c] = 10 + _i
_POW10 = 10.0 ** np.arange(-MAX_NUMBER_WIDTH, MAX_NUMBER_WIDTH + 1)


class Chunk:
    """Whole lines of text, with PAD zero bytes on both sides so 8-byte loads never leave the array."""

    def __init__(self, size: int):
        self._padded = np.zeros(size + 2 * PAD, dtype=np.uint8)
        self.buf = self._padded[PAD:PAD + size]
        # words[i] = the 8 bytes buf[i - 8 : i] as a little-endian uint64: the word *ending* at i
        self._words = np.ndarray((size + PAD + 1,), dtype="<u8", buffer=self._padded, strides=(1,))
        self._has_point: Optional[bool] = None
        self._data: Optional[bytes] = None

    @classmethod
    def from_bytes(cls, data: bytes) -> Chunk:
        chunk = cls(len(data))
        chunk.buf[:] = np.frombuffer(data, dtype=np.uint8)
        chunk._data = data
        return chunk

    @classmethod
    def read(cls, f: BinaryIO, start: int, size: int) -> Chunk:
        f.seek(start)
        data = f.read(size)
        if len(data) != size:
            raise OSError(f"short read at byte {start}")
        return cls.from_bytes(data)

    @property
    def has_point(self) -> bool:
        """Whether the chunk contains a '.' (decimal points need the slower number parsing)."""
        if self._has_point is None:  # bytes.find is a memchr: far faster than a numpy comparison
            self._has_point = (self._data if self._data is not None else bytes(self.buf)).find(b".") >= 0
        return self._has_point

    def byte_at(self, pos: np.ndarray) -> np.ndarray:
        """uint8: the byte at each position (0 just outside the chunk)."""
        return self._padded[pos + PAD]

    def words_ending_at(self, end: np.ndarray) -> np.ndarray:
        """uint64: the 8 bytes before each position (byte end-1 in the top byte)."""
        return self._words[end]

    def text(self, start: int, length: int, limit: int = 40) -> str:
        """A token as text, for messages; shortened past `limit` characters."""
        text = bytes(self.buf[start:start + min(length, limit)]).decode("utf-8", errors="replace")
        return text + ("..." if length > limit else "")


@dataclass(frozen=True)
class Lines:
    """The fields of the non-blank lines of a chunk, as (start, length) spans.

    Line j's fields are start[first[j]:first[j] + count[j]]; number[j] is its 0-based index among all
    lines of the chunk (blank lines included), for error messages.
    """

    start: np.ndarray    # int64 [T]
    length: np.ndarray   # int64 [T]; a line's trailing '\r' belongs to no field
    first: np.ndarray    # int64 [L]
    count: np.ndarray    # int64 [L]
    number: np.ndarray   # int64 [L]
    total_lines: int     # lines in the chunk, blank ones included

    def columns(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start, length) [len(positions), L]: the spans of the given field positions, column-major.

        Column-major so that one column, or a group of columns, is contiguous for the parsers. A line
        too short for a position gives an empty span there; the caller decides whether that is bad.
        """
        positions = np.asarray(positions, dtype=np.int64)
        n = len(self.first)
        width = int(self.count[0]) if n else 0
        if n and len(self.start) == n * width and (self.count == width).all() and positions.max() < width:
            # every line has the same number of fields and there are no blank lines: a reshape
            return (np.take(self.start.reshape(n, width).T, positions, axis=0),
                    np.take(self.length.reshape(n, width).T, positions, axis=0))
        present = positions[:, None] < self.count[None, :]
        idx = np.where(present, self.first[None, :] + positions[:, None], 0)
        return np.where(present, self.start[idx], 0), np.where(present, self.length[idx], 0)

    def fields(self) -> tuple[np.ndarray, np.ndarray]:
        """(index into start/length, line) of every field of the non-blank lines, in order."""
        line = np.repeat(np.arange(len(self.first)), self.count)
        within = np.arange(len(line)) - np.repeat(np.cumsum(self.count) - self.count, self.count)
        return self.first[line] + within, line


def split_lines(chunk: Chunk, delimiter: int) -> Lines:
    """Cut a chunk into fields at `delimiter` (a byte value) and newlines; blank lines are dropped."""
    buf = chunk.buf
    if delimiter == 9:  # tab and newline are the bytes 9 and 10: one comparison finds both
        terms = np.flatnonzero(buf <= _NL)
        if (buf[terms] < delimiter).any():  # control bytes below 9 in the text: do it exactly
            terms = np.flatnonzero((buf == _NL) | (buf == delimiter))
    else:
        terms = np.flatnonzero((buf == _NL) | (buf == delimiter))
    ends_line = buf[terms] == _NL
    if len(buf) and buf[-1] != _NL:  # the file's last line has no newline
        terms = np.append(terms, len(buf))
        ends_line = np.append(ends_line, True)
    start = np.empty(len(terms), dtype=np.int64)
    start[:1] = 0
    np.add(terms[:-1], 1, out=start[1:])
    length = terms - start
    last = np.flatnonzero(ends_line)
    count = np.diff(last, prepend=-1)
    first = last - count + 1
    cr = length[last] > 0
    cr[cr] = buf[terms[last[cr]] - 1] == _CR
    length[last[cr]] -= 1
    blank = (count == 1) & (length[first] == 0)
    keep = np.flatnonzero(~blank)
    return Lines(start=start, length=length, first=first[keep], count=count[keep], number=keep,
                 total_lines=len(last))


def count_lines(chunk: Chunk) -> tuple[int, int]:
    """(all lines, non-blank lines) by the rules of split_lines, without splitting."""
    buf = chunk.buf
    nl = np.flatnonzero(buf == _NL)
    ends = nl if not len(buf) or buf[-1] == _NL else np.append(nl, len(buf))
    length = np.diff(ends, prepend=-1) - 1
    blank = (length == 0) | ((length == 1) & (buf[np.maximum(ends - 1, 0)] == _CR))
    return len(ends), int(len(ends) - np.count_nonzero(blank))


def char_matrix(chunk: Chunk, start: np.ndarray, length: np.ndarray, width: int) -> np.ndarray:
    """uint8 [N, width]: the first `width` bytes of each span, zero past its end."""
    pos = np.arange(width)
    idx = np.minimum(start.reshape(-1, 1) + pos, len(chunk.buf) + PAD - 1) + PAD
    chars = chunk._padded[idx]
    chars[pos >= length.reshape(-1, 1)] = 0
    return chars


def _row_blocks(shape: tuple[int, ...]) -> list[slice]:
    """Slices of the last (row) axis holding about _BLOCK tokens each, over all columns at once.

    Blocking over rows, not over the flattened column-major tokens, keeps each step's text (a few
    hundred lines) and its temporaries in L2 cache: measured 2-4x faster than whole-array passes.
    """
    rows = shape[-1]
    step = max(1, _BLOCK // max(1, int(np.prod(shape[:-1]))))
    return [slice(lo, lo + step) for lo in range(0, rows, step)]


def _digits8(chunk: Chunk, end: np.ndarray, n: np.ndarray, value: np.ndarray, ok: np.ndarray) -> None:
    """Tokens of 1..8 decimal digits ending at `end` -> value (uint64) and the all-digits flag, in place.

    The token is right-aligned in the word ending at `end`; the bytes before it become '0' so they add
    leading zeros. Then pairs, quads and octets of digits are combined with three multiplies (the
    well-known 8-digit SWAR parse, as in simdjson). Arrays are [columns, rows].
    """
    for rows in _row_blocks(end.shape):
        mask = _HIGH_BYTES[n[:, rows]]
        w = chunk.words_ending_at(end[:, rows])
        w &= mask
        w |= _BYTES_0X30 & ~mask
        t = w & _BYTES_0XF0
        good = t == _BYTES_0X30
        np.add(w, _U64(0x0606060606060606), out=t)
        t &= _BYTES_0XF0
        good &= t == _BYTES_0X30
        ok[:, rows] = good
        w &= _BYTES_0X0F
        w *= _U64(10 * 256 + 1)
        w >>= _U64(8)
        w &= _U64(0x00FF00FF00FF00FF)
        w *= _U64(100 * 65536 + 1)
        w >>= _U64(16)
        w &= _U64(0x0000FFFF0000FFFF)
        w *= _U64(10000 * (1 << 32) + 1)
        w >>= _U64(32)
        w &= _U64(0xFFFFFFFF)
        value[:, rows] = w


def _as_2d(a: np.ndarray) -> np.ndarray:
    """[columns, rows]: a 1-d array is one column."""
    return a.reshape(int(np.prod(a.shape[:-1])), a.shape[-1]) if a.ndim else a.reshape(1, 1)


def _signed_digits(chunk: Chunk, start: np.ndarray, length: np.ndarray, strip_point_zero: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Fast path of parse_ints / parse_numbers: [-+]?d{1,8}(.0)? -> (int64 value, fast-path ok).

    [columns, rows] in and out.
    """
    first = chunk.byte_at(start)
    negative = first == ord("-")
    sign = (negative | (first == ord("+"))) & (length > 1)
    n = length - sign
    end = start + length
    if strip_point_zero and chunk.has_point:  # pandas writes integral floats as "1382.0"
        tail = chunk.words_ending_at(end) >> _U64(48)
        point_zero = (n >= 3) & (tail == _U64(ord(".") | ord("0") << 8))
        n = n - 2 * point_zero
        end = end - 2 * point_zero
    fits = (n >= 1) & (n <= 8)
    value = np.empty(start.shape, dtype=np.uint64)
    ok = np.empty(start.shape, dtype=bool)
    _digits8(chunk, end, np.where(fits, n, 0), value, ok)
    value = value.view(np.int64)
    np.negative(value, out=value, where=negative)
    return value, ok & fits


def parse_ints(chunk: Chunk, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decimal integers [+-]digits (at most 18 digits) -> (int64 values, ok); empty -> (MISSING, ok).

    Any shape in, the same shape out; [columns, rows] is the fast layout.
    """
    shape = start.shape
    start, length = _as_2d(start), _as_2d(length)
    values, ok = _signed_digits(chunk, start, length, strip_point_zero=False)
    slow = np.nonzero(~ok & (length > 0))
    if len(slow[0]):
        values[slow], ok[slow] = _parse_ints_general(chunk, start[slow], length[slow])
    empty = length == 0
    values[empty], ok[empty] = MISSING, True
    return values.reshape(shape), ok.reshape(shape)


def _parse_ints_general(chunk: Chunk, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    width = int(min(length.max(), MAX_INT_DIGITS + 1))
    chars = char_matrix(chunk, start, length, width)
    pos = np.arange(width)
    signed = (chars[:, 0] == ord("-")) | (chars[:, 0] == ord("+"))
    body = (pos < length[:, None]) & ~((pos == 0) & signed[:, None])
    digit = body & (chars >= ord("0")) & (chars <= ord("9"))
    ok = (length - signed <= MAX_INT_DIGITS) & digit.any(axis=1) & ~(body & ~digit).any(axis=1)
    values = np.zeros(len(start), dtype=np.int64)
    for p in range(width):
        values = np.where(digit[:, p], values * 10 + (chars[:, p].astype(np.int64) - ord("0")), values)
    values[chars[:, 0] == ord("-")] *= -1
    return values, ok


def parse_numbers(chunk: Chunk, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decimal numbers [+-]digits[.digits] -> (float64 values, ok). Empty tokens are not ok.

    Integers of up to 15 digits come out exact (every digit term is exact, and so is their sum).
    Any shape in, the same shape out; [columns, rows] is the fast layout.
    """
    shape = start.shape
    start, length = _as_2d(start), _as_2d(length)
    ints, ok = _signed_digits(chunk, start, length, strip_point_zero=True)
    values = ints.astype(np.float64)
    slow = np.nonzero(~ok & (length > 0))
    if len(slow[0]):
        values[slow], ok[slow] = _parse_numbers_general(chunk, start[slow], length[slow])
    return values.reshape(shape), ok.reshape(shape)


def _parse_numbers_general(chunk: Chunk, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    width = int(min(length.max(), MAX_NUMBER_WIDTH))
    chars = char_matrix(chunk, start, length, width)
    pos = np.arange(width)
    inside = pos < length[:, None]
    signed = (chars[:, 0] == ord("-")) | (chars[:, 0] == ord("+"))
    body = inside & ~((pos == 0) & signed[:, None])
    digit = body & (chars >= ord("0")) & (chars <= ord("9"))
    point = body & (chars == ord("."))
    ok = ((length <= MAX_NUMBER_WIDTH) & digit.any(axis=1) & (point.sum(axis=1) <= 1)
          & ~(body & ~digit & ~point).any(axis=1))
    point_at = np.where(point.any(axis=1), point.argmax(axis=1), length)
    exponent = point_at[:, None] - pos - 1
    exponent += pos > point_at[:, None]  # digits after the point: 10^-1, 10^-2, ...
    terms = (chars - ord("0")) * _POW10[np.clip(exponent, -MAX_NUMBER_WIDTH, MAX_NUMBER_WIDTH)
                                        + MAX_NUMBER_WIDTH]
    values = np.where(digit, terms, 0.0).sum(axis=1)
    values[chars[:, 0] == ord("-")] *= -1
    return values, ok


def hex_keys(chunk: Chunk, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hex tokens (at most 14 digits, either case) -> ((digits << 56) | value, ok); empty -> key 0.

    Any shape in, the same shape out; [columns, rows] is the fast layout.
    """
    shape = start.shape
    start, length = _as_2d(start), _as_2d(length)
    keys = np.zeros(start.shape, dtype=np.int64)
    ok = np.empty(start.shape, dtype=bool)
    eight, empty = length == 8, length == 0
    _hex8(chunk, start + 8, keys, ok)  # every token as if it had 8 digits; the others are redone
    keys[empty], ok[empty] = 0, True
    other = np.nonzero(~eight & ~empty)
    if len(other[0]):
        keys[other], ok[other] = _hex_general(chunk, start[other], length[other])
    return keys.reshape(shape), ok.reshape(shape)


def _hex8(chunk: Chunk, end: np.ndarray, keys: np.ndarray, ok: np.ndarray) -> None:
    """8-char hex tokens ending at `end` -> key and ok, in place, by SWAR on the 8-byte word.

    Per byte: its digit value (low nibble, +9 for letters, which have bit 6 set); a byte is valid when
    that value is < 16 and spells the byte back (letters compared lower-case). Then byte pairs, quads
    and the octet are combined, first character most significant. Arrays are [columns, rows].
    """
    out = keys.view(np.uint64)
    for rows in _row_blocks(end.shape):
        w = chunk.words_ending_at(end[:, rows])
        nib = w & _BYTES_0X0F
        letter = w >> _U64(6)
        letter &= _U64(0x0101010101010101)
        nib += letter * _U64(9)
        spelled = nib + _U64(0x0606060606060606)
        spelled >>= _U64(4)
        spelled &= _U64(0x0101010101010101)
        spelled *= _U64(39)
        spelled += nib
        spelled += _BYTES_0X30
        letter <<= _U64(5)
        letter |= w
        valid = spelled == letter
        np.bitwise_and(nib, _BYTES_0XF0, out=spelled)
        valid &= spelled == 0
        ok[:, rows] = valid
        v = nib << _U64(4)
        nib >>= _U64(8)
        v |= nib
        v &= _U64(0x00FF00FF00FF00FF)
        t = v >> _U64(16)
        v <<= _U64(8)
        v |= t
        v &= _U64(0x0000FFFF0000FFFF)
        t = v >> _U64(32)
        v <<= _U64(16)
        v |= t
        v &= _U64(0xFFFFFFFF)
        v |= _U64(8 << 56)
        out[:, rows] = v


def _hex_general(chunk: Chunk, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    width = int(min(length.max(), MAX_HEX_DIGITS))
    digits = _HEX_VALUE[char_matrix(chunk, start, length, width)]
    inside = np.arange(width) < length[:, None]
    ok = (length <= MAX_HEX_DIGITS) & ~(inside & (digits < 0)).any(axis=1)
    keys = np.zeros(len(start), dtype=np.int64)
    for p in range(width):
        keys = np.where(inside[:, p], (keys << 4) | np.maximum(digits[:, p], 0), keys)
    return keys | (np.minimum(length, MAX_HEX_DIGITS).astype(np.int64) << 56), ok


def hex_text(key: int) -> str:
    """The token a hex key came from ('' for the empty token)."""
    width = int(key) >> 56
    return format(int(key) & ((1 << 56) - 1), f"0{width}x") if width else ""


def hash_keys(chunk: Chunk, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """64-bit FNV-1a of each token's bytes, as int64 (the empty token hashes to FNV_OFFSET).

    FNV is sequential over a token's bytes, so tokens are hashed in groups of equal length: a group
    takes one xor-multiply pass per byte position, reading 8 bytes at a time, with no masking.
    Any shape in, the same shape out.
    """
    shape = start.shape
    start, length = start.ravel(), length.ravel()
    h = np.full(len(start), FNV_OFFSET, dtype=np.uint64)
    order = np.argsort(length, kind="stable")
    sizes, group_starts = np.unique(length[order], return_index=True)
    for n, lo, hi in zip(sizes.tolist(), group_starts, np.append(group_starts[1:], len(order))):
        rows = order[lo:hi]
        hr, s = h[rows], start[rows]
        for p in range(n):
            if p % 8 == 0:
                word = chunk.words_ending_at(s + p + 8)
            hr = (hr ^ ((word >> _U64(8 * (p % 8))) & _U64(0xFF))) * FNV_PRIME
        h[rows] = hr
    return h.view(np.int64).reshape(shape)


def hash_text(text: str) -> int:
    """hash_keys of one string (to rebuild str keys from a vocabulary's text)."""
    h = int(FNV_OFFSET)
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * int(FNV_PRIME)) & 0xFFFFFFFFFFFFFFFF
    return h - (1 << 64) if h >= 1 << 63 else h


def log2_buckets(values: np.ndarray) -> np.ndarray:
    """Criteo's integer-feature buckets: v > 2 -> floor(ln(v)^2), else int(v) (toward zero)."""
    out = np.trunc(values)
    big = values > 2
    out[big] = np.floor(np.log(values[big]) ** 2)
    return out.astype(np.int64)


def split_spans(chunk: Chunk, start: np.ndarray, length: np.ndarray, separator: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut spans at a separator byte: (span index, start, length) of every non-empty piece, in order.

    The spans must be disjoint and in ascending order (one column of consecutive lines is).
    """
    spans = np.flatnonzero(length > 0)
    lo, hi = start[spans], start[spans] + length[spans]
    seps = np.flatnonzero(chunk.buf == separator)
    owner = np.searchsorted(lo, seps, side="right") - 1
    inside = owner >= 0
    inside[inside] = seps[inside] < hi[owner[inside]]
    seps, owner = seps[inside], owner[inside]
    # Pieces begin at span starts and after separators, and end at separators and span ends; both
    # lists sorted by position pair up piece by piece.
    begins = np.concatenate([lo, seps + 1])
    order = np.argsort(begins, kind="stable")
    begins = begins[order]
    piece_owner = np.concatenate([np.arange(len(spans)), owner])[order]
    ends = np.sort(np.concatenate([seps, hi]))
    nonempty = ends > begins
    return spans[piece_owner[nonempty]], begins[nonempty], (ends - begins)[nonempty]


def utf8_spans(chunk: Chunk, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """bool, shaped like start: whether each span is valid UTF-8. Only chunks holding non-ASCII bytes
    cost more than one scan, and then only per invalid sequence (each found by a C decode)."""
    ok = np.ones(start.shape, dtype=bool)
    data = chunk._data if chunk._data is not None else bytes(chunk.buf)
    if data.isascii():
        return ok
    bad, at = [], 0
    while at < len(data):
        try:
            data[at:].decode("utf-8")
            break
        except UnicodeDecodeError as e:
            bad.append(at + e.start)
            at += e.end
    if bad:
        bad = np.asarray(bad, dtype=np.int64)
        # a span [s, s + l) is bad when an invalid byte lies inside it
        first = np.searchsorted(bad, start, side="left")
        inside = first < len(bad)
        ok[inside] = bad[first[inside]] >= (start + length)[inside]
    return ok
