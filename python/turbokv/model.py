"""A loaded GGUF model (owns one ``tkv_model`` handle)."""
from __future__ import annotations

import ctypes
import re
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

from . import _args, _lib
from ._errors import Status, UnsupportedError
from ._handle import Handle
from ._lib import ModelParams, check, int32_p

TOKENIZE_ADD_BOS = 1
TOKENIZE_PARSE_SPECIAL = 2


class Model(Handle):
    """A GGUF model loaded for inference; immutable and shareable between threads.

    ``Model()`` loads the default real model (installing it on first use when
    ``install=True``); ``Model("path/to/file.gguf")`` or ``Model("smollm2-135m")``.

    Lifetime: ``close()`` refuses (InUseError) while a KVCache on the model is open;
    leaving the model's ``with`` block closes its caches (and their sessions) first.
    Methods of a closed model raise ClosedError.
    """

    _kind = "model"

    def __init__(self, path: Union[str, Path, None] = None, *, install: bool = False) -> None:
        from . import models

        file = models.path(str(path) if path is not None else None, install_missing=install)
        params = _lib.tkv_model_default_params()
        handle = ctypes.c_void_p()
        check(_lib.tkv_model_load(str(file).encode(), ctypes.byref(params), ctypes.byref(handle)))
        self._adopt(handle.value, None)
        self.path = Path(file)
        h = self._handle
        self.arch: str = _lib.tkv_model_arch(h).decode()
        self.name: str = _lib.tkv_model_name(h).decode()
        self.n_layer: int = _lib.tkv_model_n_layer(h)
        self.n_head: int = _lib.tkv_model_n_head(h)
        self.n_head_kv: int = _lib.tkv_model_n_head_kv(h)
        self.head_dim: int = _lib.tkv_model_head_dim(h)
        self.n_embd: int = _lib.tkv_model_n_embd(h)
        self.n_vocab: int = _lib.tkv_model_n_vocab(h)
        self.n_ctx_train: int = _lib.tkv_model_n_ctx_train(h)
        #: Bytes of the GGUF file, mapped read-only, and of the weight copies repacked at load
        #: for this CPU's matrix-vector kernels (0 where they read the file's layout).
        self.bytes_mapped: int = int(_lib.tkv_model_bytes_mapped(h))
        self.bytes_packed: int = int(_lib.tkv_model_bytes_packed(h))
        self.bos: int = _lib.tkv_model_token_bos(h)
        self.eos: int = _lib.tkv_model_token_eos(h)

    def _free(self, handle: int) -> None:
        _lib.tkv_model_free(handle)

    def __enter__(self) -> "Model":
        return self

    def __repr__(self) -> str:
        return (f"Model({self.name!r}, arch={self.arch}, layers={self.n_layer}, "
                f"heads={self.n_head}/{self.n_head_kv}, head_dim={self.head_dim})")

    def kv_bytes_per_token_fp32(self) -> int:
        """KV bytes per token of an fp32 cache: n_layer * n_head_kv * head_dim * 2 * 4."""
        return self.n_layer * self.n_head_kv * self.head_dim * 2 * 4

    def metadata(self, key: str) -> Optional[str]:
        """A string metadata value of the GGUF file, or None when absent / not a string."""
        n = ctypes.c_size_t()
        status = _lib.tkv_model_meta_string(self.handle, key.encode(), None, 0, ctypes.byref(n))
        if status == Status.INVALID_ARGUMENT:
            return None
        buf = ctypes.create_string_buffer(n.value + 1)
        check(_lib.tkv_model_meta_string(self.handle, key.encode(), buf, n.value + 1, ctypes.byref(n)))
        return buf.raw[: n.value].decode("utf-8", "replace")

    def token_id(self, text: str) -> int:
        """Id of the token whose text is exactly ``text``, -1 if none."""
        return int(_lib.tkv_model_token_find(self.handle, text.encode()))

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = False) -> npt.NDArray[np.int32]:
        """Token ids of ``text``; ``special`` matches control tokens like <|im_start|>."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        data = text.encode("utf-8")
        flags = (TOKENIZE_ADD_BOS if add_bos else 0) | (TOKENIZE_PARSE_SPECIAL if special else 0)
        n = ctypes.c_size_t()
        cap = len(data) + 8
        while True:
            out = np.empty(cap, dtype=np.int32)
            status = _lib.tkv_model_tokenize(self.handle, data, len(data), flags,
                                            out.ctypes.data_as(int32_p), cap, ctypes.byref(n))
            if status == Status.BUFFER_TOO_SMALL and n.value > cap:
                cap = n.value
                continue
            check(status)
            return out[: n.value].copy()

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> bytes:
        """The bytes of a token sequence (may end inside a UTF-8 character).  ``tokens``: ints
        or an integer NumPy array (floats, bools, ids outside int32 are rejected)."""
        arr = _args.tokens(tokens)
        n = ctypes.c_size_t()
        cap = max(16, arr.size * 8)
        while True:
            buf = ctypes.create_string_buffer(cap)
            status = _lib.tkv_model_detokenize(self.handle, arr.ctypes.data_as(int32_p), arr.size,
                                              int(special), buf, cap, ctypes.byref(n))
            if status == Status.BUFFER_TOO_SMALL and n.value > cap:
                cap = n.value
                continue
            check(status)
            return buf.raw[: n.value]

    def chat_segments(self, user: str, system: Optional[str] = None) -> list[tuple[str, bool]]:
        """One user turn in the model's chat template, as ``(text, is_marker)`` segments.

        Markers are the template's control tokens (``<|im_start|>``, ``<|im_end|>``,
        ``<|start_header_id|>``...), each a segment of its own; everything between them
        (role names, newlines, and the user's and system's text) is plain text, adjacent
        plain pieces merged.  ``chat_tokens`` tokenizes markers as control tokens and the
        text with special=False, so a user message containing ``<|im_end|>`` stays text.

        Supports the templates the supported models use: ChatML (SmolLM2, Qwen2) with the
        template's default system message, and Llama 3's header format.
        """
        if not isinstance(user, str) or not isinstance(system, (str, type(None))):
            raise TypeError("user (and system) must be str")
        template = self.metadata("tokenizer.chat_template") or ""
        M = lambda marker: (marker, True)  # noqa: E731
        T = lambda text: (text, False)  # noqa: E731
        if "<|im_start|>" in template:
            if system is None:
                m = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", template, re.S)
                system = m.group(1) if m else None
            head = ([M("<|im_start|>"), T(f"system\n{system}"), M("<|im_end|>"), T("\n")]
                    if system else [])
            parts = head + [M("<|im_start|>"), T(f"user\n{user}"), M("<|im_end|>"), T("\n"),
                            M("<|im_start|>"), T("assistant\n")]
        elif "<|start_header_id|>" in template:
            head = ([M("<|start_header_id|>"), T("system"), M("<|end_header_id|>"),
                     T(f"\n\n{system}"), M("<|eot_id|>")] if system else [])
            parts = ([M("<|begin_of_text|>")] + head
                     + [M("<|start_header_id|>"), T("user"), M("<|end_header_id|>"),
                        T(f"\n\n{user}"), M("<|eot_id|>"), M("<|start_header_id|>"),
                        T("assistant"), M("<|end_header_id|>"), T("\n\n")])
        else:
            raise UnsupportedError(Status.UNSUPPORTED, f"model {self.name!r}: no supported chat template "
                                       "(ChatML or Llama 3) in tokenizer.chat_template")
        return [(text, marker) for text, marker in parts if marker or text]

    def chat_prompt(self, user: str, system: Optional[str] = None) -> str:
        """The prompt text of one user turn in the model's chat template (for display:
        tokenize it with ``chat_tokens``, which keeps markers typed by the user as text)."""
        return "".join(text for text, _ in self.chat_segments(user, system))

    def chat_tokens(self, user: str, system: Optional[str] = None, *,
                    add_bos: bool = True) -> npt.NDArray[np.int32]:
        """Token ids of one user turn in the chat template: only the template's markers
        become control tokens; the user's and the system's text is tokenized as plain text
        (special=False), so control-token strings in it cannot forge turns.  For text
        without such strings the ids equal ``tokenize(chat_prompt(...), special=True)``
        (the tokenizer splits at control tokens either way)."""
        pieces = []
        for i, (text, marker) in enumerate(self.chat_segments(user, system)):
            pieces.append(self.tokenize(text, add_bos=add_bos and i == 0, special=marker))
        return np.concatenate(pieces).astype(np.int32) if pieces else np.empty(0, np.int32)

    def is_end_token(self, token: int) -> bool:
        """Whether generation ends at ``token`` (EOS or an end-of-turn marker): the
        library's one stop rule (``tkv_model_token_is_end``), which Session.generate and
        turbokv.generate both follow."""
        return bool(_lib.tkv_model_token_is_end(self.handle, int(token)))
