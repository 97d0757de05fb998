"""Tokenizers: character-level (synthetic tasks), byte-level BPE (text, lossless on any bytes),
and a wrapper over Hugging Face tokenizers. All share one small interface:

    encode(text) -> list[int]        decode(ids) -> str
    encode_bytes(data) -> list[int]  decode_bytes(ids) -> bytes   (BPE: exact on arbitrary bytes)
    vocab_size, pad_id, bos_id, eos_id, mask_id (None where a tokenizer has no such token)
    save(folder)                     load_tokenizer(folder)

Special tokens are named here once (SPECIALS); no other file writes a special id inline.
Each tokenizer saves into a checkpoint folder as ``tokenizer_config.json`` (its type and special
tokens) plus its own files, and ``load_tokenizer`` reads it back without unpickling anything.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .errors import AdaptiveLMError
from .io import atomic_write_text

SPECIALS = ("[PAD]", "[BOS]", "[EOS]", "[MASK]")
_SURROGATES = re.compile("([\udc80-\udcff]+)")   # runs of undecodable bytes (surrogateescape)
CONFIG_FILE = "tokenizer_config.json"


class TokenizerError(AdaptiveLMError, ValueError):
    """Text or ids a tokenizer cannot handle (an unknown character, an id out of range)."""


class Tokenizer:
    """Base: the special-token ids and the byte-level defaults, shared by every tokenizer."""
    kind = "base"
    special_tokens: dict

    def token_id(self, token: str) -> Optional[int]:
        raise NotImplementedError

    @property
    def pad_id(self): return self.token_id(self.special_tokens.get("pad", "[PAD]"))
    @property
    def bos_id(self): return self.token_id(self.special_tokens.get("bos", "[BOS]"))
    @property
    def eos_id(self): return self.token_id(self.special_tokens.get("eos", "[EOS]"))
    @property
    def mask_id(self): return self.token_id(self.special_tokens.get("mask", "[MASK]"))

    def encode_bytes(self, data: bytes) -> list[int]:
        return self.encode(data.decode("utf-8"))

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def _write_config(self, folder, **extra):
        cfg = {"type": self.kind, "special_tokens": self.special_tokens, **extra}
        atomic_write_text(Path(folder) / CONFIG_FILE, json.dumps(cfg, indent=2, ensure_ascii=False))


class CharTokenizer(Tokenizer):
    """One id per character; ids 0..3 are [PAD] [BOS] [EOS] [MASK], then the alphabet in order."""
    kind = "char"

    def __init__(self, chars: Iterable[str]):
        chars = list(dict.fromkeys(chars))
        bad = [c for c in chars if len(c) != 1]
        if bad:
            raise TokenizerError(f"character tokenizer needs single characters, got {bad[:3]}")
        self.chars = chars
        self.itos = list(SPECIALS) + chars
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.special_tokens = {"pad": "[PAD]", "bos": "[BOS]", "eos": "[EOS]", "mask": "[MASK]"}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def token_id(self, token):
        return self.stoi.get(token) if token in SPECIALS else None

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise TokenizerError(f"character {e.args[0]!r} is not in this tokenizer's alphabet") from None

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        n = len(SPECIALS)
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.itos):
                raise TokenizerError(f"token id {i} outside vocabulary of {len(self.itos)}")
            if i >= n or not skip_special:
                out.append(self.itos[i])
        return "".join(out)

    def save(self, folder):
        self._write_config(folder, chars="".join(self.chars))

    @classmethod
    def _load(cls, folder, cfg):
        return cls(cfg["chars"])


@lru_cache(maxsize=1)
def _byte_alphabet() -> tuple[dict, dict]:
    """GPT-2's reversible byte -> printable-unicode map used by byte-level BPE, and its inverse."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            codes.append(256 + n)
            n += 1
    b2u = {b: chr(c) for b, c in zip(keep, codes)}
    return b2u, {u: b for b, u in b2u.items()}


class BPETokenizer(Tokenizer):
    """Byte-level BPE trained with the `tokenizers` library; lossless on ANY bytes.

    Valid UTF-8 runs go through the BPE; each byte of an invalid run becomes its own single-byte
    token (the byte alphabet is always in the vocabulary), and decoding maps tokens straight back
    to bytes. So ``decode_bytes(encode_bytes(b)) == b`` for every ``b`` — the compressor relies on it.
    """
    kind = "bpe"
    FILE = "tokenizer.json"

    def __init__(self, tok):
        self.tok = tok
        self.tok.encode_special_tokens = True     # "[EOS]" in the data is text, not the special id
        self.special_tokens = {"pad": "[PAD]", "bos": "[BOS]", "eos": "[EOS]", "mask": "[MASK]"}
        vocab = tok.get_vocab()
        self._id_to_bytes = {}
        _, u2b = _byte_alphabet()
        for t, i in vocab.items():
            if t not in SPECIALS:
                self._id_to_bytes[i] = bytes(u2b[c] for c in t)
        b2u, _ = _byte_alphabet()
        self._byte_id = [vocab[b2u[b]] for b in range(256)]

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTok, decoders, models, pre_tokenizers, trainers
        tok = HFTok(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=list(SPECIALS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def token_id(self, token):
        return self.tok.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_bytes(self, data: bytes) -> list[int]:
        """Decode once with surrogateescape: invalid bytes become lone surrogates U+DC80..U+DCFF,
        which split the text into valid runs (BPE) and invalid bytes (one token each). Linear time."""
        text = data.decode("utf-8", errors="surrogateescape")
        ids = []
        for part in _SURROGATES.split(text):
            if not part:
                continue
            if "\udc80" <= part[0] <= "\udcff":
                ids += [self._byte_id[ord(c) - 0xDC00] for c in part]
            else:
                ids += self.encode(part)
        return ids

    def decode_bytes(self, ids: Sequence[int], skip_special: bool = True) -> bytes:
        out = bytearray()
        for i in ids:
            b = self._id_to_bytes.get(int(i))
            if b is None:
                if int(i) < 0 or int(i) >= self.vocab_size:
                    raise TokenizerError(f"token id {int(i)} outside vocabulary of {self.vocab_size}")
                if skip_special:
                    continue
                b = self.tok.id_to_token(int(i)).encode()
            out += b
        return bytes(out)

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self.decode_bytes(ids, skip_special).decode("utf-8", errors="replace")

    def save(self, folder):
        atomic_write_text(Path(folder) / self.FILE, self.tok.to_str())
        self._write_config(folder)

    @classmethod
    def _load(cls, folder, cfg):
        from tokenizers import Tokenizer as HFTok
        return cls(HFTok.from_file(str(Path(folder) / cls.FILE)))


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer behind our interface.

    Wraps a `transformers` tokenizer object, or loads ``tokenizer.json`` (+ the special tokens of
    ``tokenizer_config.json`` / ``special_tokens_map.json``) from a folder with the `tokenizers`
    library alone, so `transformers` is optional.
    """
    kind = "hf"

    def __init__(self, tok, special_tokens: Optional[dict] = None):
        self.tok = tok
        self.special_tokens = dict(special_tokens or {})
        for key in ("pad", "bos", "eos", "mask"):
            t = getattr(tok, f"{key}_token", None)
            if isinstance(t, str) and key not in self.special_tokens:
                self.special_tokens[key] = t

    @classmethod
    def from_pretrained(cls, folder) -> "HFTokenizer":
        folder = Path(folder)
        try:
            from transformers import AutoTokenizer  # optional dependency
            return cls(AutoTokenizer.from_pretrained(str(folder)))
        except ImportError:
            pass
        from tokenizers import Tokenizer as HFTok
        if not (folder / "tokenizer.json").exists():
            raise TokenizerError(f"{folder}: no tokenizer.json (install `transformers` for other formats)")
        specials = {}
        for name in ("special_tokens_map.json", CONFIG_FILE):
            p = folder / name
            if p.exists():
                d = json.loads(p.read_text())
                for key in ("pad", "bos", "eos", "mask"):
                    v = d.get(f"{key}_token")
                    v = v.get("content") if isinstance(v, dict) else v
                    if isinstance(v, str):
                        specials[key] = v
        return cls(HFTok.from_file(str(folder / "tokenizer.json")), specials)

    @property
    def _is_fast_lib(self) -> bool:
        return type(self.tok).__module__.startswith("tokenizers")

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size() if self._is_fast_lib else len(self.tok)

    def token_id(self, token):
        if token is None:
            return None
        if self._is_fast_lib:
            return self.tok.token_to_id(token)
        i = self.tok.convert_tokens_to_ids(token)
        return None if i == getattr(self.tok, "unk_token_id", object()) and token != self.tok.unk_token else i

    def encode(self, text: str) -> list[int]:
        if self._is_fast_lib:
            return self.tok.encode(text, add_special_tokens=False).ids
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids, skip_special: bool = True) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def save(self, folder):
        if self._is_fast_lib:
            atomic_write_text(Path(folder) / "tokenizer.json", self.tok.to_str())
        else:
            self.tok.save_pretrained(str(folder))
            cfg_path = Path(folder) / CONFIG_FILE
            cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
            cfg.update({"type": self.kind, "special_tokens": self.special_tokens})
            atomic_write_text(cfg_path, json.dumps(cfg, indent=2))
            return
        self._write_config(folder)

    @classmethod
    def _load(cls, folder, cfg):
        t = cls.from_pretrained(folder)
        t.special_tokens.update(cfg.get("special_tokens", {}))
        return t


KINDS = {c.kind: c for c in (CharTokenizer, BPETokenizer, HFTokenizer)}


def load_tokenizer(folder) -> Tokenizer:
    """Read the tokenizer saved in a checkpoint folder (by its ``tokenizer_config.json`` type)."""
    folder = Path(folder)
    p = folder / CONFIG_FILE
    if not p.exists():
        raise TokenizerError(f"{folder}: no {CONFIG_FILE}")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise TokenizerError(f"{p}: expected a JSON object")
    kind = cfg.get("type", "hf")
    if kind not in KINDS:
        raise TokenizerError(f"{p}: unknown tokenizer type {kind!r}")
    try:
        return KINDS[kind]._load(folder, cfg)
    except TokenizerError:
        raise
    except Exception as e:  # a missing key, a corrupt tokenizer.json: one clear line
        raise TokenizerError(f"{folder}: cannot load the {kind} tokenizer ({type(e).__name__}: {e})") from None
