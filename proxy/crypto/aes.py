"""AES-ECB block encryption on pycryptodome with the per-call overhead taken out.

FF1 spends its time in one-block AES calls. pycryptodome's public ``encrypt`` costs about
4 us a call, of which about 1 us is the cipher. When pycryptodome runs on its cffi backend
we call its raw ECB entry point directly with preallocated buffers (about 3x faster), and
fall back to the public API otherwise. Both paths are tested to agree.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from Crypto.Cipher import AES

BLOCK = 16


def _raw_ecb() -> tuple[Any, Any] | None:
    """pycryptodome's cffi handle and ECB_encrypt function, or None if not on cffi."""
    try:
        from Crypto.Cipher import _mode_ecb
        from Crypto.Util import _raw_api
    except ImportError:  # pragma: no cover - depends on the pycryptodome build
        return None
    ffi = getattr(_raw_api, "ffi", None)
    ecb = getattr(getattr(_mode_ecb, "raw_ecb_lib", None), "ECB_encrypt", None)
    if getattr(_raw_api, "backend", None) != "cffi" or ffi is None or ecb is None:
        return None  # pragma: no cover
    return ffi, ecb


class BlockCipher:
    """AES in ECB mode: ``encrypt`` for whole blocks, ``encrypt_int`` for one block as an int.

    The fast path reuses one output buffer; it is used only from the thread that built the
    object, any other thread takes the allocating path, so an instance is safe to share.
    """

    __slots__ = ("_cipher", "_owner", "encrypt", "encrypt_int")

    def __init__(self, key: bytes, *, fast: bool = True) -> None:
        if len(key) not in (16, 24, 32):
            raise ValueError("an AES key is 16, 24 or 32 bytes")
        self._cipher = AES.new(key, AES.MODE_ECB)
        self._owner = threading.get_ident()
        self.encrypt: Callable[[bytes], bytes] = self._cipher.encrypt
        self.encrypt_int: Callable[[int], int] = self._encrypt_int_public
        raw = _raw_ecb() if fast else None
        state = getattr(getattr(self._cipher, "_state", None), "get", None)
        if raw is not None and state is not None:
            self.encrypt_int = self._fast_encrypt_int(raw[0], raw[1], state())

    def _encrypt_int_public(self, block: int) -> int:
        return int.from_bytes(self._cipher.encrypt(block.to_bytes(BLOCK, "big")), "big")

    def _fast_encrypt_int(self, ffi: Any, ecb: Any, handle: Any) -> Callable[[int], int]:
        out = ffi.new("uint8_t[]", BLOCK)
        view = ffi.buffer(out)
        owner = self._owner
        slow = self._encrypt_int_public
        get_ident = threading.get_ident
        from_bytes = int.from_bytes

        def encrypt_int(block: int) -> int:
            if get_ident() != owner:
                return slow(block)
            if ecb(handle, block.to_bytes(BLOCK, "big"), out, BLOCK):  # pragma: no cover
                raise ValueError("AES-ECB failed")
            return from_bytes(view[:], "big")

        return encrypt_int
