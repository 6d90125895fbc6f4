"""Read enums and struct member offsets from BTF, the kernel's own type information.

Why BTF: the drop-reason enum is renumbered between kernels (a static table broke five
peer projects) and ``struct sk_buff`` moves between releases (``head`` is at byte 200 in
Debian's 6.1 headers and at 192 on 6.18), while bcc compiles against whatever headers are
installed. The running kernel describes itself in /sys/kernel/btf/vmlinux, so names and
offsets are taken from there.

This is a small pure-Python reader of the documented format
(https://docs.kernel.org/bpf/btf.html): a header, a type section of ``struct btf_type``
records each followed by kind-specific data, and a string section. It indexes every type
in one pass and decodes only what is asked for (ENUM, ENUM64, STRUCT, UNION and the
modifiers between a member and its size). Split BTF (kernel modules, /sys/kernel/btf/<mod>)
is read on top of its base. Nothing here touches the kernel beyond reading a file.
"""

from __future__ import annotations

import functools
import lzma
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from retinad.errors import KernelError

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

MAGIC = 0xEB9F

KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19
_MAX_KIND = KIND_ENUM64

_MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)
"""Kinds that only qualify another type: followed to reach a member's real type."""


class BtfError(KernelError):
    """A BTF blob is missing, unreadable, malformed or lacks a type retinad needs."""


def _extra_len(kind: int, vlen: int) -> int:
    """Bytes of kind-specific data after a 12-byte ``struct btf_type``."""
    if kind in (KIND_INT, KIND_VAR, KIND_DECL_TAG):
        return 4
    if kind == KIND_ARRAY:
        return 12
    if kind in (KIND_STRUCT, KIND_UNION, KIND_DATASEC, KIND_ENUM64):
        return 12 * vlen
    if kind in (KIND_ENUM, KIND_FUNC_PROTO):
        return 8 * vlen
    return 0


@dataclass(frozen=True)
class _Type:
    kind: int
    name_off: int
    vlen: int
    kind_flag: bool
    size_or_type: int
    data: int
    """Offset of the kind-specific data in the type section."""


@dataclass(frozen=True)
class Member:
    """A struct/union member found by name, with its offset from the outer struct."""

    name: str
    offset: int
    """Byte offset from the start of the struct searched (anonymous members flattened)."""
    size: int
    """Size in bytes of the member's type (modifiers followed)."""


class Btf:
    """One parsed BTF blob (vmlinux, or a module's split BTF on top of ``base``)."""

    def __init__(self, data: bytes, *, source: str, base: Btf | None = None) -> None:
        self.source = source
        self.base = base
        if len(data) < 24:
            raise BtfError(f"{source}: not BTF: {len(data)} bytes is shorter than a BTF header")
        magic_le = struct.unpack_from("<H", data, 0)[0]
        if magic_le == MAGIC:
            self._endian = "<"
        elif struct.unpack_from(">H", data, 0)[0] == MAGIC:
            self._endian = ">"
        else:
            raise BtfError(f"{source}: not BTF: bad magic {data[:2].hex()} (want 9feb)")
        e = self._endian
        _m, version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            e + "HBBIIIII", data, 0
        )
        if version != 1:
            raise BtfError(f"{source}: unsupported BTF version {version} (this reader knows 1)")
        t0, s0 = hdr_len + type_off, hdr_len + str_off
        if t0 + type_len > len(data) or s0 + str_len > len(data):
            raise BtfError(f"{source}: truncated BTF: sections end past the {len(data)} bytes")
        self._types_raw = data[t0 : t0 + type_len]
        self._strings = data[s0 : s0 + str_len]
        self._str_base: int = base._str_end if base is not None else 0
        self._str_end: int = self._str_base + str_len
        self._first_id: int = base._next_id if base is not None else 1
        self._types: list[_Type] = self._index()
        self._next_id: int = self._first_id + len(self._types)
        self._by_name: dict[str, list[int]] | None = None

    @classmethod
    def from_file(cls, path: str | Path, *, base: Btf | None = None) -> Btf:
        """Read raw BTF from ``path`` (``.xz``-compressed blobs are decompressed first)."""
        p = Path(path)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise BtfError(
                f"{p}: no such file: this kernel exposes no BTF (needs CONFIG_DEBUG_INFO_BTF=y)"
            ) from None
        except OSError as err:
            raise BtfError(f"{p}: cannot read BTF: {err}") from err
        if p.suffix == ".xz":
            try:
                data = lzma.decompress(data)
            except lzma.LZMAError as err:
                raise BtfError(f"{p}: cannot decompress: {err}") from err
        return cls(data, source=str(p), base=base)

    # --- indexing ------------------------------------------------------------------------

    def _index(self) -> list[_Type]:
        raw, fmt = self._types_raw, self._endian + "III"
        out: list[_Type] = []
        pos, end = 0, len(raw)
        while pos < end:
            if pos + 12 > end:
                raise BtfError(f"{self.source}: truncated type record at type offset {pos}")
            name_off, info, size_or_type = struct.unpack_from(fmt, raw, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            if not 0 < kind <= _MAX_KIND:
                raise BtfError(
                    f"{self.source}: unknown BTF kind {kind} at type id {self._first_id + len(out)}"
                )
            out.append(_Type(kind, name_off, vlen, bool(info >> 31), size_or_type, pos + 12))
            pos += 12 + _extra_len(kind, vlen)
        if pos != end:
            raise BtfError(f"{self.source}: type section overruns its declared length")
        return out

    def _string(self, off: int) -> str:
        if off < self._str_base:
            assert self.base is not None
            return self.base._string(off)
        rel = off - self._str_base
        nul = self._strings.find(b"\0", rel)
        if rel >= len(self._strings) or nul < 0:
            raise BtfError(f"{self.source}: string offset {off} outside the string section")
        return self._strings[rel:nul].decode("utf-8", "replace")

    def _type(self, type_id: int) -> tuple[Btf, _Type]:
        if type_id < self._first_id:
            if self.base is None:
                raise BtfError(f"{self.source}: type id {type_id} does not exist (0 is void)")
            return self.base._type(type_id)
        i = type_id - self._first_id
        if i >= len(self._types):
            raise BtfError(f"{self.source}: type id {type_id} does not exist")
        return self, self._types[i]

    def find(self, name: str, kinds: tuple[int, ...]) -> list[int]:
        """Ids of this blob's own types called ``name`` whose kind is one of ``kinds``."""
        if self._by_name is None:
            index: dict[str, list[int]] = {}
            for i, t in enumerate(self._types):
                if t.name_off:
                    index.setdefault(self._string(t.name_off), []).append(self._first_id + i)
            self._by_name = index
        return [i for i in self._by_name.get(name, []) if self._type(i)[1].kind in kinds]

    def __len__(self) -> int:
        """Number of types in this blob (not counting its base or void)."""
        return len(self._types)

    # --- enums ---------------------------------------------------------------------------

    def enum(self, name: str) -> dict[int, str] | None:
        """``{value: constant name}`` of ``enum name`` (ENUM or ENUM64), or None if absent.

        A declaration without values (vlen 0, a forward reference) is skipped in favour
        of the full definition.
        """
        for type_id in self.find(name, (KIND_ENUM, KIND_ENUM64)):
            _, t = self._type(type_id)
            if t.vlen:
                return self._enum_values(t)
        return None

    def _enum_values(self, t: _Type) -> dict[int, str]:
        e, raw = self._endian, self._types_raw
        out: dict[int, str] = {}
        for i in range(t.vlen):
            if t.kind == KIND_ENUM:
                name_off, val = struct.unpack_from(
                    e + ("Ii" if t.kind_flag else "II"), raw, t.data + 8 * i
                )
            else:
                name_off, lo, hi = struct.unpack_from(e + "III", raw, t.data + 12 * i)
                val = (hi << 32) | lo
                if t.kind_flag and val >= 1 << 63:
                    val -= 1 << 64
            out.setdefault(val, self._string(name_off))
        return out

    # --- structs -------------------------------------------------------------------------

    def member(self, struct_name: str, member: str) -> Member | None:
        """Find ``member`` of ``struct struct_name``, looking inside anonymous members.

        Returns None if the struct or member is absent. Raises BtfError for a bitfield
        member, whose value cannot be read as whole bytes.
        """
        for type_id in self.find(struct_name, (KIND_STRUCT,)):
            found = self._find_member(type_id, member, 0)
            if found is not None:
                bit_off, bits, mtype = found
                if bits or bit_off % 8:
                    raise BtfError(
                        f"{self.source}: struct {struct_name}.{member} is a bitfield "
                        f"(bit offset {bit_off}, {bits} bits)"
                    )
                return Member(member, bit_off // 8, self.size_of(mtype))
        return None

    def _find_member(
        self, type_id: int, member: str, base_bits: int
    ) -> tuple[int, int, int] | None:
        btf, t = self._type(type_id)
        e, raw = btf._endian, btf._types_raw
        anonymous: list[tuple[int, int]] = []
        for i in range(t.vlen):
            name_off, mtype, off = struct.unpack_from(e + "III", raw, t.data + 12 * i)
            bits, bit_off = (off >> 24, off & 0xFFFFFF) if t.kind_flag else (0, off)
            if name_off == 0:
                anonymous.append((mtype, base_bits + bit_off))
            elif btf._string(name_off) == member:
                return base_bits + bit_off, bits, mtype
        for mtype, bit_off in anonymous:
            inner_id = self._strip_modifiers(mtype)
            if self._type(inner_id)[1].kind in (KIND_STRUCT, KIND_UNION):
                found = self._find_member(inner_id, member, bit_off)
                if found is not None:
                    return found
        return None

    def _strip_modifiers(self, type_id: int) -> int:
        for _ in range(64):
            if type_id == 0:
                return 0
            _, t = self._type(type_id)
            if t.kind not in _MODIFIERS:
                return type_id
            type_id = t.size_or_type
        raise BtfError(f"{self.source}: modifier chain too long at type id {type_id}")

    def size_of(self, type_id: int) -> int:
        """Size in bytes of a type (typedefs and qualifiers followed; pointers are 8)."""
        type_id = self._strip_modifiers(type_id)
        if type_id == 0:
            return 0
        btf, t = self._type(type_id)
        if t.kind == KIND_PTR:
            return 8
        if t.kind == KIND_ARRAY:
            elem, _index, nelems = struct.unpack_from(btf._endian + "III", btf._types_raw, t.data)
            return int(nelems) * self.size_of(elem)
        if t.kind in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FLOAT):
            return t.size_or_type
        raise BtfError(f"{self.source}: type id {type_id} (kind {t.kind}) has no size")


# --- drop reasons --------------------------------------------------------------------------

DROP_REASON_ENUM = "skb_drop_reason"
DROP_REASON_SUBSYS_ENUM = "skb_drop_reason_subsys"


_SENTINELS = ("SKB_DROP_REASON_MAX", "SKB_DROP_REASON_SUBSYS_MASK")
"""Enum constants that are bounds or masks, not reasons: left out of the name table."""


def strip_reason_prefix(name: str) -> str:
    """SKB_DROP_REASON_NO_SOCKET -> NO_SOCKET, SKB_CONSUMED -> CONSUMED: the names the
    tracepoint itself prints."""
    for prefix in ("SKB_DROP_REASON_", "SKB_"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def drop_reasons(btf: Btf) -> dict[int, str]:
    """``{value: name}`` of ``enum skb_drop_reason``, prefixes stripped, sentinels left out.

    Raises BtfError when the enum is absent (kernels before 5.17 have no drop reasons).
    """
    values = btf.enum(DROP_REASON_ENUM)
    if values is None:
        raise BtfError(
            f"{btf.source}: has no enum {DROP_REASON_ENUM} (kernel drop reasons need 5.17+)"
        )
    return {v: strip_reason_prefix(n) for v, n in values.items() if n not in _SENTINELS}


def drop_reason_subsystems(btf: Btf) -> dict[int, str]:
    """``{value: name}`` of ``enum skb_drop_reason_subsys`` (6.4+; {} before), with
    SKB_DROP_REASON_SUBSYS_ stripped (MAC80211_UNUSABLE, OPENVSWITCH) and NUM left out."""
    prefix = "SKB_DROP_REASON_SUBSYS_"
    values = btf.enum(DROP_REASON_SUBSYS_ENUM) or {}
    return {
        v: n.removeprefix(prefix) for v, n in values.items() if n != "SKB_DROP_REASON_SUBSYS_NUM"
    }


@functools.lru_cache(maxsize=8)
def _parsed(path: str, size: int, mtime_ns: int) -> Btf:
    return Btf.from_file(path)


def load(path: str | Path) -> Btf:
    """``Btf.from_file``, parsed once per process while the file is unchanged (same size and
    mtime). The running kernel's BTF never changes, and parsing its ~5 MB in Python takes
    seconds natively and about a minute under emulation (make test-kernels), once per
    plugin start and per feature probe without this."""
    try:
        st = os.stat(path)
    except OSError:
        return Btf.from_file(path)  # raises the BtfError that names the problem
    return _parsed(str(path), st.st_size, st.st_mtime_ns)


def read_drop_reasons(path: str | Path = VMLINUX_BTF) -> dict[int, str]:
    """``enum skb_drop_reason`` of the BTF blob at ``path`` as ``{value: name}``."""
    return drop_reasons(Btf.from_file(path))


def enum_has_member(path: str | Path, enum_name: str, member: str) -> bool:
    """Whether ``enum enum_name`` in the BTF at ``path`` has the constant ``member``
    (e.g. bpf_attach_type / BPF_TCX_INGRESS for tcx). Raises BtfError if unreadable."""
    values = load(path).enum(enum_name)
    return values is not None and member in values.values()


def struct_has_member(path: str | Path, struct_name: str, member: str) -> bool:
    """Whether ``struct struct_name`` has ``member`` (anonymous members searched), e.g.
    trace_event_raw_kfree_skb / reason: the skb:kfree_skb tracepoint reports drop reasons."""
    return Btf.from_file(path).member(struct_name, member) is not None
