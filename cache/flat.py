"""The derived flat points file: a zarr cache's points decoded once, shared by every reader via the page cache.

Why: a zarr read costs about a millisecond per image and decoding the delta codes a few tens of
microseconds, and holding a decoded copy per DataLoader worker costs gigabytes at ImageNet scale. The
flat file holds each image's absolute quantised positions (uint16: its x codes, then its y codes), so
``points(i)`` is one 32-byte record lookup, one ``pread`` of those bytes, a crc32c check and one
multiply-add per column, the same cost at any N; the small arrays are memory-mapped; the OS page cache
holds the file once for all workers.

Layout (one file, written to a unique temp name and renamed into place, so a reader never sees a
partial file and two builders cannot corrupt each other): a 4 KiB header (magic, JSON, crc32c of the
JSON), then 4 KiB-aligned sections ``offsets`` int64 [N+1], ``status`` uint8 [N], ``records`` [N] and
``points`` uint16 [2M]. A record is 32 bytes, one CPU cache line: a crc32c (uint32), the image's point
count (uint32), its first row (int64) and its detect scale (sx, sy float64). The crc covers the image's
codes and the rest of its record, so a read checks every byte it uses, the scale too. A sample needs only
its record and its codes, so it touches one page of the small sections, not three: at 1.28 M images every
such lookup is a cold miss in a loader worker (bench/scale.py).

Trust: the header records a key hashed from the manifest, the zarr metadata and the names, sizes and
mtimes of the store's files; any change to the store makes the file stale and it is rebuilt. Opening
checks the header, the file size and the crc32c of the small sections (milliseconds at 1.28 M images);
every read checks the crc32c of the image's own codes and record (about 1 us for 1,400 points, and it
touches only the pages the sample needs). A mismatch at open rebuilds the file; one found later deletes it
and rebuilds it.

Where: ``$KAMIM_DERIVED_DIR/<name>-<hash>.flat`` if set, else ``<cache dir>.flat`` beside the cache
when its parent is writable, else ``~/.cache/kamim/derived/<name>-<hash>.flat``. It is built by a
child process (``python -m kamim.cache.flat CACHE DEST``) under a lock file, so the calling process
never starts zarr's I/O thread (fork-safe) and concurrent workers build it once. Building reads and
verifies the whole zarr store (kamim.cache.zarr_store.verified_store).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import mmap
import os
import secrets
import struct
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import google_crc32c
import numpy as np

from kamim.errors import UserError

FLAT_VERSION = 4  # 4: the record is (crc, count, start, scale) and its crc covers the record too
MAGIC = b"KAMIMFLAT1\n"
HEADER_BYTES = 4096
ARRAYS = ("offsets", "points", "scale", "status")
RECORD = np.dtype([("crc", "<u4"), ("count", "<u4"), ("start", "<i8"), ("scale", "<f8", (2,))])
_RECORD = struct.Struct("<IIqdd")  # RECORD, unpacked without numpy


class StaleFlat(Exception):
    """The derived file is missing, stale or damaged: rebuild it (never use it)."""


def flat_path(cache_dir: str | os.PathLike) -> Path:
    """Where this process builds the flat file (see the module docstring)."""
    real = Path(cache_dir).resolve()
    tag = f"{real.name}-{hashlib.sha1(str(real).encode()).hexdigest()[:12]}.flat"
    if os.environ.get("KAMIM_DERIVED_DIR"):
        return Path(os.environ["KAMIM_DERIVED_DIR"]) / tag
    if os.access(real.parent, os.W_OK):
        return _beside(real)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kamim" / "derived" / tag


def _beside(cache_dir: Path) -> Path:
    """``<cache dir>.flat``: also read when it lies elsewhere than ``flat_path`` (a shared, read-only cache
    whose owner built it there), so each user does not rebuild gigabytes of it."""
    real = cache_dir.resolve()
    return real.parent / f"{real.name}.flat"


def store_key(cache_dir: str | os.PathLike, manifest: dict) -> str:
    """Identity of the store as it is now: manifest, zarr metadata, every file's name, size, mtime."""
    cache_dir = Path(cache_dir)
    digest = hashlib.sha256(f"flat {FLAT_VERSION}\n".encode())
    digest.update(json.dumps(manifest, sort_keys=True).encode())
    files = [cache_dir / "zarr.json"]
    for name in ARRAYS:
        folder = cache_dir / name
        files += sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else [folder]
    for file in files:
        try:
            stat = file.stat()
        except OSError:
            digest.update(f"{file.relative_to(cache_dir)} missing\n".encode())
            continue
        digest.update(f"{file.relative_to(cache_dir)} {stat.st_size} {stat.st_mtime_ns}\n".encode())
        if file.name == "zarr.json":
            digest.update(file.read_bytes())
    return digest.hexdigest()


def _layout(images: int, rows: int) -> tuple[dict[str, tuple[int, str, tuple]], int]:
    """{section: (byte offset, dtype, shape)} and the total file size."""
    shapes = {"offsets": ("<i8", (images + 1,)), "status": ("|u1", (images,)), "records": (RECORD, (images,)),
              "points": ("<u2", (2 * rows,))}
    sections, at = {}, HEADER_BYTES
    for name, (dtype, shape) in shapes.items():
        sections[name] = (at, dtype, shape)
        at += -(-int(np.dtype(dtype).itemsize * np.prod(shape)) // 4096) * 4096
    return sections, at


def _crc(array: np.ndarray) -> int:
    return google_crc32c.value(np.ascontiguousarray(array).view(np.uint8).tobytes())


def _section(mm: np.memmap, where: tuple[int, str, tuple]) -> np.ndarray:
    at, dtype, shape = where
    size = int(np.dtype(dtype).itemsize * np.prod(shape))
    return mm[at : at + size].view(dtype).reshape(shape)


class FlatPoints:
    """An open, checked flat file (read-only memory map). ``samples(indices)``: each image's codes and scale."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDONLY)  # one descriptor for the checks and the reads: one file
        except FileNotFoundError:
            raise StaleFlat(f"{path}: missing") from None
        head = os.pread(self._fd, HEADER_BYTES, 0)
        stat = os.fstat(self._fd)
        self.inode, size = stat.st_ino, stat.st_size
        if len(head) < HEADER_BYTES or not head.startswith(MAGIC):
            raise StaleFlat(f"{path}: not a flat points file")
        length, crc = struct.unpack_from("<II", head, len(MAGIC))
        text = head[len(MAGIC) + 8 : len(MAGIC) + 8 + length]
        if length > HEADER_BYTES or google_crc32c.value(text) != crc:
            raise StaleFlat(f"{path}: header checksum mismatch")
        try:
            header = json.loads(text)
        except ValueError:
            raise StaleFlat(f"{path}: unreadable header") from None
        if not isinstance(header, dict) or header.get("version") != FLAT_VERSION or header.get("key") != key:
            raise StaleFlat(f"{path}: built from another store or version")
        self.header = header
        self.sections, total = _layout(header["images"], header["rows"])
        if size != total:
            raise StaleFlat(f"{path}: {size} bytes, expected {total}")
        self._map = mmap.mmap(self._fd, total, access=mmap.ACCESS_READ)
        mm = np.frombuffer(self._map, dtype=np.uint8)
        for name in ("offsets", "status", "records"):
            if _crc(_section(mm, self.sections[name])) != header["crc"][name]:
                raise StaleFlat(f"{path}: section {name} checksum mismatch")
        # Views of the mapping for bulk readers (plain ndarrays: indexing a np.memmap costs ~1 us more per
        # element, its subclass hooks).
        self.offsets = _section(mm, self.sections["offsets"])
        self.status = _section(mm, self.sections["status"])
        self.records = _section(mm, self.sections["records"])
        self.scale = self.records["scale"]
        self.points = _section(mm, self.sections["points"])
        self.checksummed_store = bool(header["checksummed_store"])
        self.images = int(header["images"])
        # A sample reads its record with struct from the mapping (a numpy lookup costs several times more
        # in a busy loader worker) and its codes with pread, not through the mapping: the kernel maps
        # whole page-cache folios on a fault (hundreds of KiB per sample), which made every worker's RSS
        # and PSS grow with the pages it had touched; pread copies 5.6 KB and leaves the file to the page
        # cache.
        self._records_at, self._points_at = self.sections["records"][0], self.sections["points"][0]

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def samples(self, indices: Iterable[int]) -> list[tuple[np.ndarray, float, float]]:
        """(codes, sx, sy) for each index: the image's codes (uint16 [2n], x codes then y codes, read-only)
        and its detect scale, both checked (with the rest of the record) against the record's crc32c, in one
        loop (a loader batch's lookups run back to back)."""
        unpack, pread, frombuffer = _RECORD.unpack_from, os.pread, np.frombuffer
        crc, extend = google_crc32c.value, google_crc32c.extend
        mapping, fd, images, records_at, points_at = self._map, self._fd, self.images, self._records_at, self._points_at
        out = []
        for index in indices:
            if not 0 <= index < images:
                raise IndexError(f"image {index} out of range for {images} images")
            at = records_at + 32 * index
            expected, count, start, sx, sy = unpack(mapping, at)
            data = pread(fd, 4 * count, points_at + 4 * start)
            if len(data) != 4 * count or extend(crc(data), mapping[at + 4 : at + 32]) != expected:
                raise StaleFlat(f"{self.path}: points of image {index} fail their checksum")
            out.append((frombuffer(data, dtype="<u2"), sx, sy))
        return out


def build_flat(cache_dir: Path, dest: Path) -> None:
    """Read and verify the zarr store, write the flat file to a unique temp name, rename it into place."""
    from kamim.cache.manifest import read_manifest
    from kamim.cache.zarr_store import verified_store

    manifest = read_manifest(cache_dir)
    key = store_key(cache_dir, manifest)
    store = verified_store(cache_dir, manifest)
    images, rows = len(store.status), int(store.offsets[-1])
    sections, total = _layout(images, rows)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as handle:
            os.posix_fallocate(handle.fileno(), 0, total)  # disk full fails here, not as SIGBUS in a memmap
        mm = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=(total,))
        crcs = {}
        for name, array in (("offsets", store.offsets), ("status", store.status)):
            _section(mm, sections[name])[:] = array
            crcs[name] = _crc(array.astype(sections[name][1]))
        points = _section(mm, sections["points"])
        for first, end, q in store.point_batches():
            _transpose_into(points, store.offsets[first : end + 1], q)
        bounds = 2 * store.offsets
        records = np.zeros(images, RECORD)
        records["start"], records["count"], records["scale"] = store.offsets[:-1], np.diff(store.offsets), store.scale
        tails = records.view(np.uint8).reshape(images, 32)[:, 4:]  # what each crc covers beside the codes
        records["crc"] = np.fromiter((google_crc32c.extend(google_crc32c.value(points[a:b]), tail.tobytes())
                                      for a, b, tail in zip(bounds[:-1], bounds[1:], tails, strict=True)),
                                     np.uint32, images)
        _section(mm, sections["records"])[:] = records
        crcs["records"] = _crc(records)
        header = {"version": FLAT_VERSION, "key": key, "images": images, "rows": rows, "crc": crcs,
                  "steps": int(manifest["subpixel_steps"]), "checksummed_store": store.checksummed,
                  "store": str(Path(cache_dir).resolve())}
        text = json.dumps(header, sort_keys=True).encode()
        mm[:HEADER_BYTES] = 0
        mm[: len(MAGIC) + 8 + len(text)] = np.frombuffer(
            MAGIC + struct.pack("<II", len(text), google_crc32c.value(text)) + text, np.uint8)
        mm.flush()
        del mm, points
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except OSError as error:
        raise UserError(f"{dest}: cannot write the derived points file ({error.strerror or error}); free "
                        f"space there or point $KAMIM_DERIVED_DIR at a disk with {total / 2**30:.1f} GiB free") from None
    finally:
        tmp.unlink(missing_ok=True)
    if not store.checksummed:
        print(f"note: {cache_dir} was written before kamim's cache checksums: it is readable but damage to it "
              f"cannot always be detected; rebuild it with `kamim cache` to protect it", file=sys.stderr)


def _transpose_into(points: np.ndarray, offsets: np.ndarray, q: np.ndarray) -> None:
    """Write rows ``q`` [m,2] of images with ``offsets`` as each image's x codes, then its y codes."""
    base = int(offsets[0])
    counts = np.diff(offsets)
    local = offsets[:-1] - base
    owner = np.repeat(np.arange(len(counts)), counts)
    x_at = 2 * local[owner] + (np.arange(len(q)) - local[owner])
    segment = points[2 * base : 2 * (base + len(q))]
    segment[x_at] = q[:, 0]
    segment[x_at + counts[owner]] = q[:, 1]


@contextlib.contextmanager
def _locked(dest: Path):
    with open(dest.with_name(dest.name + ".lock"), "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the process dies, too
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def open_flat(cache_dir: str | os.PathLike, manifest: dict, discard: FlatPoints | None = None) -> FlatPoints:
    """The checked flat file for this cache, building it first (once, under a lock) when needed.
    ``discard``: a file found damaged after opening; it is deleted (if still in place) and rebuilt."""
    cache_dir = Path(cache_dir)
    dest = flat_path(cache_dir)
    key = store_key(cache_dir, manifest)
    if discard is None:
        for candidate in dict.fromkeys((dest, _beside(cache_dir))):
            with contextlib.suppress(StaleFlat):
                return FlatPoints(candidate, key)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        lock = _locked(dest)
        lock.__enter__()
    except OSError as error:
        raise UserError(f"{dest.parent}: cannot create the derived points file there ({error.strerror}); "
                        f"set $KAMIM_DERIVED_DIR to a writable directory") from None
    try:
        if discard is not None:
            try:
                if os.stat(dest).st_ino == discard.inode:
                    dest.unlink()
            except FileNotFoundError:
                pass
            except OSError as error:  # e.g. another user's file in a shared $KAMIM_DERIVED_DIR
                raise UserError(f"{dest}: the derived points file is damaged and cannot be removed "
                                f"({error.strerror}); delete it, or set $KAMIM_DERIVED_DIR to a directory of "
                                f"your own") from None
        with contextlib.suppress(StaleFlat):
            return FlatPoints(dest, key)  # another process built it while this one waited
        for stale in dest.parent.glob(f"{dest.name}.*.tmp"):  # left by a builder that was killed
            stale.unlink(missing_ok=True)
        _build_in_child(cache_dir, dest)
        try:
            return FlatPoints(dest, key)
        except StaleFlat as error:
            raise UserError(f"{error}: the derived points file fails its checks right after being "
                            f"built; check the disk, or set $KAMIM_DERIVED_DIR to another one") from None
    finally:
        lock.__exit__(None, None, None)


def _build_in_child(cache_dir: Path, dest: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "kamim.cache.flat", str(cache_dir), str(dest)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if done.returncode == 2 and lines:
        raise UserError(lines[-1].removeprefix("Error: "))
    if done.returncode != 0:  # killed (out of memory?) or crashed: one line, the child's last words
        how = f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
        raise UserError(f"building the derived points file {dest} failed ({how}{': ' + lines[-1] if lines else ''}); "
                        f"check free memory and disk, or set $KAMIM_DERIVED_DIR to another directory")
    for line in lines:
        print(line, file=sys.stderr)


def main(argv: list[str]) -> int:
    cache_dir, dest = Path(argv[0]), Path(argv[1])
    try:
        build_flat(cache_dir, dest)
    except UserError as error:
        print(f"Error: {error.format_message()}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
