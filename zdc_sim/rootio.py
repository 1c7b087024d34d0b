"""ROOT I/O: the dataset schema, chunked validated reading and atomic chunked writing.

Everything in the project that touches a ROOT file goes through here, so every bad file ends in a
`RootFileError` that names the file, tree and branch, and every written file appears whole or not
at all (`atomic.atomic_output`: temporary file in the same folder, renamed when complete).
"""

from __future__ import annotations

import json
import zlib
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import awkward as ak
import numpy as np
import uproot
from uproot.deserialization import DeserializationError

from . import features as feat
from .atomic import atomic_output
from .errors import ConfigError, FeatureError, RootFileError, ZdcError
from . import geometry

TREE = "zdc"
FEATURES, PDG, PARTICLE_ID = "features", "pdg", "particle_id"
# One response branch per detector; files written before the ZP existed hold the ZN's as "response".
RESPONSES = {name: f"response_{name}" for name in geometry.DETECTORS}
RESPONSE_ZN, RESPONSE_ZP = RESPONSES["zn"], RESPONSES["zp"]
RESPONSE = RESPONSE_ZN  # the default detector's
LEGACY_RESPONSE = "response"
PARTS = (FEATURES, PDG, PARTICLE_ID, *RESPONSES.values())
ZN_PARTS = (FEATURES, PDG, PARTICLE_ID, RESPONSE_ZN)
COLUMNS = feat.NAMES + (PDG, PARTICLE_ID, *RESPONSES.values())  # logical names of every branch
READ_STEP_ENTRIES = 4096  # entries per chunk when reading: about 32 MB of responses
WRITE_BASKET_ENTRIES = 16384  # entries per basket when writing (>= 64 kB for scalar branches)
COMPRESSIONS = {"zlib": uproot.ZLIB, "lzma": uproot.LZMA, "lz4": uproot.LZ4, "zstd": uproot.ZSTD}
DATASET_COMPRESSION = "zlib:1"  # uproot's default; reference-MC counts (integers) shrink 5.8x


@dataclass(frozen=True)
class Schema:
    """Tree name and the branch that holds each logical column, so files that use other names can
    be read: `Schema.from_branch_map({"tree": "events", "branches": {"energy": "E"}})`."""

    tree: str = TREE
    branches: Mapping[str, str] = field(default_factory=lambda: {c: c for c in COLUMNS})

    @classmethod
    def from_branch_map(cls, mapping: Mapping) -> "Schema":
        unknown = set(mapping) - {"tree", "branches"}
        renames = dict(mapping.get("branches", {}))
        if LEGACY_RESPONSE in renames:  # branch maps written before the ZP: "response" is the ZN's
            renames.setdefault(RESPONSE_ZN, renames.pop(LEGACY_RESPONSE))
        unknown |= {f"branches.{k}" for k in set(renames) - set(COLUMNS)}
        if unknown:
            raise ConfigError(
                f"branch map: unknown keys {sorted(unknown)}; expected 'tree' and 'branches' "
                f"mapping any of {list(COLUMNS)} to branch names"
            )
        return cls(mapping.get("tree", TREE), {c: renames.get(c, c) for c in COLUMNS})

    @classmethod
    def from_file(cls, path) -> "Schema":
        try:
            return cls.from_branch_map(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"branch map '{path}': cannot read it as JSON ({exc})") from None

    def branch(self, column: str) -> str:
        return self.branches[column]

    def resolved(self, tree) -> "Schema":
        """This schema for one tree: a file that has no `response_zn` but a `response` branch (the
        format before the ZP) has its ZN responses read from `response`."""
        present = set(tree.keys())
        if self.branches[RESPONSE_ZN] == RESPONSE_ZN and RESPONSE_ZN not in present and LEGACY_RESPONSE in present:
            return Schema(self.tree, {**self.branches, RESPONSE_ZN: LEGACY_RESPONSE})
        return self


def response_part(detector) -> str:
    """The part (and default branch) holding `detector`'s responses: 'response_zn' or 'response_zp'."""
    return RESPONSES[geometry.detector(detector).name]


def response_type(detector) -> np.dtype:
    """float32[rows][columns] of `detector`."""
    return np.dtype((np.float32, geometry.detector(detector).shape))


def _columns_of(parts) -> list[str]:
    columns = []
    for part in parts:
        if part not in PARTS:
            raise ConfigError(f"unknown part '{part}'; expected one of {PARTS}")
        columns.extend(feat.NAMES if part == FEATURES else (part,))
    return columns


@contextmanager
def open_tree(path, schema: Schema = Schema()) -> Iterator[uproot.TTree]:
    """The dataset tree of a ROOT file, open while the block runs (the file is closed after it), or
    RootFileError saying why it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise RootFileError("no such file", file=path)
    try:
        file = uproot.open(path)
    except (ValueError, OSError, DeserializationError, zlib.error) as exc:
        raise RootFileError("not a readable ROOT file", file=path, expected="a ROOT file", found=_short(exc)) from None
    with file:
        try:
            tree = file[schema.tree]
        except KeyError:
            available = [k.split(";")[0] for k, v in file.classnames().items() if v == "TTree"]
            raise RootFileError(
                "missing tree", file=path, tree=schema.tree, expected=f"a TTree named '{schema.tree}'",
                found=f"trees {available}" if available else "no TTree",
            ) from None
        except (OSError, DeserializationError, zlib.error, ValueError) as exc:
            raise RootFileError("truncated or corrupt file", file=path, tree=schema.tree, found=_short(exc)) from None
        if not isinstance(tree, uproot.TTree):
            raise RootFileError("not a tree", file=path, tree=schema.tree, expected="a TTree", found=type(tree).__name__)
        yield tree


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = "zlib.error" if isinstance(exc, zlib.error) else type(exc).__name__
    return f"{name}: {text[:200]}"


def _check_branches(tree, path, schema: Schema, columns) -> None:
    present = set(tree.keys())
    for column in columns:
        name = schema.branch(column)
        if name not in present:
            close = sorted(present, key=lambda k: _distance(k, name))[:3]
            raise RootFileError(
                "missing branch", file=path, tree=schema.tree, branch=name,
                expected=f"the '{column}' column", found=f"branches {close} (closest by name)",
            )
    for name, part in RESPONSES.items():
        if part not in columns:
            continue
        det = geometry.detector(name)
        branch = tree[schema.branch(part)]
        interp = branch.interpretation
        fixed = getattr(interp, "to_dtype", None)
        content = getattr(interp, "content", None)  # jagged branches: float[] or vector<float>
        ok_fixed = fixed is not None and fixed.base == np.float32 and fixed.shape in (det.shape, (det.n_pixels,))
        ok_jagged = content is not None and getattr(content, "to_dtype", None) == np.float32
        if not (ok_fixed or ok_jagged):
            raise RootFileError(
                "wrong response type", file=path, tree=schema.tree, branch=branch.name,
                expected=f"float[{det.shape[0]}][{det.shape[1]}] (or {det.n_pixels} float32 values per entry, "
                         f"the {det.name.upper()}'s image)",
                found=branch.typename,
            )


def _distance(a: str, b: str) -> int:
    """Levenshtein distance, to suggest the branch the user probably meant."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def num_entries(path, schema: Schema = Schema()) -> int:
    with open_tree(path, schema) as tree:
        return int(tree.num_entries)


def iterate(path, schema: Schema = Schema(), parts=ZN_PARTS, step_size: int = READ_STEP_ENTRIES,
            entry_start: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Yield validated chunks {part: array} of at most `step_size` entries: features (n, 9)
    float32, pdg (n,) int32, particle_id (n,) int64, response_zn / response_zp (n, rows, columns)
    float32 (by default the ZN's only)."""
    with open_tree(path, schema) as tree:
        schema = schema.resolved(tree)
        columns = _columns_of(parts)
        _check_branches(tree, path, schema, columns)
        names = {schema.branch(c): c for c in columns}
        start = entry_start
        try:
            for arrays in tree.iterate(list(names), step_size=step_size, library="ak", entry_start=entry_start):
                n = len(arrays)
                yield _to_parts(arrays, names, parts, path, schema, start)
                start += n
        except (OSError, DeserializationError, zlib.error) as exc:
            raise RootFileError(
                "truncated or corrupt file", file=path, tree=schema.tree,
                expected=f"{tree.num_entries} readable entries", found=f"a failure after entry {start}: {_short(exc)}",
            ) from None


def _to_parts(arrays, names, parts, path, schema, start) -> dict[str, np.ndarray]:
    columns = {logical: arrays[branch] for branch, logical in names.items()}
    where = f"file '{path}', tree '{schema.tree}', entries {start}-{start + len(arrays) - 1}"
    out = {}
    if FEATURES in parts:
        stacked = np.stack([ak.to_numpy(columns[n]).astype(np.float64) for n in feat.NAMES], axis=1)
        try:
            out[FEATURES] = feat.validate(stacked, source=where)
        except FeatureError as exc:
            # Rows are numbered within the chunk by validate; point at the branch too.
            raise RootFileError("invalid particle features", file=path, tree=schema.tree, found=str(exc)) from None
    for part, dtype in ((PDG, np.int32), (PARTICLE_ID, np.int64)):
        if part in parts:
            values = ak.to_numpy(columns[part])
            if not np.issubdtype(values.dtype, np.integer):
                raise RootFileError(f"wrong {part} type", file=path, tree=schema.tree,
                                    branch=schema.branch(part), expected="an integer branch", found=str(values.dtype))
            out[part] = values.astype(dtype)
    for name, part in RESPONSES.items():
        if part in parts:
            out[part] = _response(columns[part], geometry.detector(name), path, schema.branch(part), schema, start)
    return out


def _response(values, det, path, branch, schema, start) -> np.ndarray:
    if values.ndim == 2 and not isinstance(values.type.content, ak.types.RegularType):
        counts = ak.to_numpy(ak.num(values))
        bad = np.flatnonzero(counts != det.n_pixels)
        if len(bad):
            raise RootFileError("wrong response shape", file=path, tree=schema.tree, branch=branch,
                                expected=f"{det.n_pixels} values per entry",
                                found=f"{counts[bad[0]]} values at entry {start + bad[0]}")
        values = ak.flatten(values)
    array = np.asarray(ak.to_numpy(values), dtype=np.float32).reshape(-1, *det.shape)
    bad = ~np.isfinite(array)
    if bad.any():
        entry, i, j = np.argwhere(bad)[0]
        raise RootFileError("non-finite response", file=path, tree=schema.tree, branch=branch,
                            expected="finite photon counts",
                            found=f"{array[entry, i, j]} at entry {start + entry}, pixel ({i}, {j})")
    if (array < 0).any():
        entry, i, j = np.argwhere(array < 0)[0]
        raise RootFileError("negative response", file=path, tree=schema.tree, branch=branch,
                            expected="photon counts >= 0",
                            found=f"{array[entry, i, j]} at entry {start + entry}, pixel ({i}, {j})")
    return array


def dataset_branch_types(schema: Schema = Schema(), detectors=tuple(geometry.DETECTORS)) -> dict[str, np.dtype]:
    """Branch types of the dataset tree: 9 float32 features, pdg, particle_id, one response per detector."""
    types = {schema.branch(n): np.dtype(np.float32) for n in feat.NAMES}
    types[schema.branch(PDG)] = np.dtype(np.int32)
    types[schema.branch(PARTICLE_ID)] = np.dtype(np.int64)
    for det in detectors:
        types[schema.branch(response_part(det))] = response_type(det)
    return types


def flatten_parts(parts: Mapping[str, np.ndarray], schema: Schema = Schema()) -> dict[str, np.ndarray]:
    """{features, pdg, particle_id, response} -> {branch: array}, the form RootWriter takes."""
    out = {}
    for part, values in parts.items():
        if part == FEATURES:
            out.update({schema.branch(n): values[:, i] for i, n in enumerate(feat.NAMES)})
        else:
            out[schema.branch(part)] = values
    return out


def parse_compression(spec: str):
    """uproot's compression for 'none' or 'ALGORITHM:LEVEL' (zlib, lzma, lz4, zstd; ROOT 6 reads all four)."""
    name, _, level = spec.lower().partition(":")
    if name == "none" and not level:
        return None
    allowed = "'none' or ALGORITHM:LEVEL with ALGORITHM one of " + ", ".join(COMPRESSIONS) + " and LEVEL 1-9"
    if name not in COMPRESSIONS or not level.isdigit() or not 1 <= int(level) <= 9:
        raise ZdcError(f"compression '{spec}' is not understood; expected {allowed}")
    return COMPRESSIONS[name](int(level))


class RootWriter:
    """Write one TTree chunk by chunk into a temporary file that replaces `path` only on success.

    Chunks are validated (branches, lengths, shapes, finite values) and buffered into baskets of
    `basket_entries`, since every `extend` writes one basket per branch. If anything fails, or the
    block is left by an exception, the temporary file is removed and `path` is untouched. With
    `partial` (a fixed temporary path) the file is kept when the block is left by KeyboardInterrupt,
    so that a job can resume from it: uproot leaves it readable after every basket.
    `compression` is a spec for `parse_compression()`.
    """

    def __init__(self, path, branch_types: Mapping[str, np.dtype], tree: str = TREE,
                 objects: Mapping[str, str] | None = None, basket_entries: int = WRITE_BASKET_ENTRIES,
                 partial: Path | None = None, compression: str = DATASET_COMPRESSION):
        self.path = Path(path)
        self.compression = parse_compression(compression)
        self.types = {name: np.dtype(t) for name, t in branch_types.items()}
        self.tree_name, self.objects, self.basket_entries = tree, dict(objects or {}), basket_entries
        self.partial = None if partial is None else Path(partial)
        self.entries = 0
        self._buffer: list[dict[str, np.ndarray]] = []
        self._buffered = 0
        self._file = self._tree = self._open = None

    def __enter__(self) -> "RootWriter":
        keep_on = (KeyboardInterrupt,) if self.partial is not None else ()
        with ExitStack() as stack:
            self.tmp = stack.enter_context(atomic_output(self.path, self.partial, keep_on=keep_on))
            self._file = stack.enter_context(uproot.recreate(self.tmp, compression=self.compression))
            self._tree = self._file.mktree(self.tree_name, self.types)
            self._open = stack.pop_all()  # the file, then the atomic output: closed by __exit__
        return self

    def write(self, chunk: Mapping[str, np.ndarray]) -> None:
        self._buffer.append(self._checked(chunk))
        self._buffered += len(next(iter(self._buffer[-1].values())))
        if self._buffered >= self.basket_entries:
            self._flush()

    def _checked(self, chunk) -> dict[str, np.ndarray]:
        if set(chunk) != set(self.types):
            raise RootFileError("wrong branches in chunk", file=self.path, tree=self.tree_name,
                                expected=sorted(self.types), found=sorted(chunk))
        out, length = {}, None
        for name, dtype in self.types.items():
            values = np.asarray(chunk[name])
            if values.ndim == 0 or values.shape[1:] != dtype.shape or (length is not None and len(values) != length):
                raise RootFileError("wrong shape", file=self.path, tree=self.tree_name, branch=name,
                                    expected=f"{length if length is not None else 'n'} entries of shape {dtype.shape}",
                                    found=values.shape)
            length = len(values)
            if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
                raise RootFileError("non-finite values", file=self.path, tree=self.tree_name, branch=name,
                                    expected="finite numbers", found="NaN or inf")
            out[name] = values.astype(dtype.base, copy=False)
        return out

    def _flush(self) -> None:
        if not self._buffer:
            return
        merged = {name: np.concatenate([c[name] for c in self._buffer]) for name in self.types}
        self._tree.extend(merged)
        self.entries += self._buffered
        self._buffer, self._buffered = [], 0

    def __exit__(self, exc_type, exc, tb) -> None:
        """Write what is buffered, close the file and rename it over `path`; when the block (or that
        last write) failed, the file is removed instead (or kept as the partial file)."""
        with self._open:
            if exc is not None:
                raise exc  # so that the atomic output sees the failure
            self._flush()
            for name, text in self.objects.items():
                self._file[name] = text


def write_dataset(path, chunks: Iterable[Mapping[str, np.ndarray]], schema: Schema = Schema(),
                  provenance: Mapping | None = None) -> int:
    """Write {features, pdg, particle_id, response_zn and/or response_zp} chunks as the dataset
    tree (the response branches are those of the first chunk); returns entries."""
    objects = {"provenance": json.dumps(provenance, sort_keys=True)} if provenance else None
    chunks = iter(chunks)
    first = next(chunks, None)
    if first is None:
        raise ZdcError(f"nothing to write to '{path}': no chunks")
    detectors = [name for name, part in RESPONSES.items() if part in first]
    with RootWriter(path, dataset_branch_types(schema, detectors), tree=schema.tree, objects=objects) as writer:
        writer.write(flatten_parts(first, schema))
        for chunk in chunks:
            writer.write(flatten_parts(chunk, schema))
    return writer.entries


def read_partial(path, tree: str, entries: int) -> dict[str, np.ndarray]:
    """The first `entries` entries of every branch of an output an interrupted job left (uproot
    leaves it readable after every basket), as written: {branch: array}."""
    try:
        with uproot.open(path) as file:
            arrays = file[tree].arrays(library="np", entry_stop=entries)
    except (OSError, KeyError, DeserializationError, zlib.error, ValueError) as exc:
        raise RootFileError("unreadable partial output", file=path, tree=tree,
                            expected=f"{entries} complete entries", found=_short(exc)) from None
    return {name: np.asarray(values) for name, values in arrays.items()}


def partial_entries(path, tree: str) -> int:
    """Complete entries in an output an interrupted job left."""
    try:
        with uproot.open(path) as file:
            return int(file[tree].num_entries)
    except (OSError, KeyError, DeserializationError, zlib.error, ValueError) as exc:
        raise RootFileError("unreadable partial output", file=path, tree=tree, found=_short(exc)) from None


def read_provenance(path) -> dict | None:
    """The JSON provenance stored beside the tree, or None when the file has none."""
    with uproot.open(path) as file:
        if "provenance" not in file:
            return None
        return json.loads(str(file["provenance"]))
