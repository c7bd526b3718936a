"""Result objects: where a job's outputs go in the results bucket, and what is recorded on them.

Layout: one folder per source key, named by the whole key relative to the upload prefix,
extension included, and Backdrop's own file names inside it::

    uploads/shoes/red.jpg  →  results/shoes/red.jpg/result.png          (the run's first output)
                              results/shoes/red.jpg/result-2.png        (its second, third… output)
                              results/shoes/red.jpg/rendition-<name>.jpg (a channel rendition)

The mapping from (source key, file name) to result key is injective: a result key splits at its
last ``/`` into the folder and the file name (file names never hold a ``/``), and the folder is
an injective function of the source key:

- a key under the upload prefix: ``<results prefix><relative key, escaped>/``;
- a key outside it: ``<results prefix>_outside-prefix/<key, escaped>/``;
- a key whose folder would leave too little room for a file name under S3's 1024-byte key limit:
  ``<results prefix>_long-keys/<sha256 of the key>/``.

Escaping adds one ``_`` in front of every path segment that could be taken for a name Backdrop
reserves: a segment starting with ``_long-keys`` or ``_outside-prefix`` after one or more ``_``,
or a segment spelled like a file name Backdrop writes (``result.png``, ``result-2.jpg``,
``rendition-x.webp``, with any leading ``_``). Both rules still hold once a ``_`` is added, so
escaping is injective, and no escaped folder ever equals a reserved folder or file name. Keys are
never normalised: NFC and NFD spellings of one name are different keys, as they are to S3.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from urllib.parse import quote

from backdrop.uploads import ImageType

MAX_KEY_BYTES = 1024  # S3's limit on an object key
# Room kept after every folder for the longest file name Backdrop writes there, so that all of
# one source's results stay in one folder whatever the name.
MAX_NAME_BYTES = 96
LONG_KEYS = "_long-keys"
OUTSIDE_PREFIX = "_outside-prefix"
RESULT_STEM = "result"
RENDITION_STEM = "rendition"
MAX_RENDITION_NAME = 64

_EXTENSIONS = {ImageType.PNG: "png", ImageType.JPEG: "jpg", ImageType.WEBP: "webp"}
_RESERVED_FOLDER = re.compile(r"_+(?:long-keys|outside-prefix)")  # matched at a segment's start
_RESERVED_FILE = re.compile(r"_*(?:result(?:-[0-9]+)?|rendition-.*)\.[^/]*")  # a whole segment
_RENDITION_NAME = re.compile(rf"[a-z0-9][a-z0-9_-]{{0,{MAX_RENDITION_NAME - 1}}}")
_EXTENSION = re.compile(r"[a-z0-9]{1,8}")


def extension_of(kind: ImageType) -> str:
    """File extension (no dot) of an image type, as the result keys spell it."""
    return _EXTENSIONS[kind]


def _escape_segment(segment: str) -> str:
    if _RESERVED_FOLDER.match(segment) or _RESERVED_FILE.fullmatch(segment):
        return "_" + segment
    return segment


def _escape(path: str) -> str:
    return "/".join(_escape_segment(segment) for segment in path.split("/"))


def result_folder(source_key: str, upload_prefix: str, results_prefix: str) -> str:
    """The folder (ending in ``/``) holding every result of ``source_key``."""
    if source_key.startswith(upload_prefix):
        folder = f"{results_prefix}{_escape(source_key[len(upload_prefix) :])}/"
    else:
        folder = f"{results_prefix}{OUTSIDE_PREFIX}/{_escape(source_key)}/"
    if len(folder.encode("utf-8")) + MAX_NAME_BYTES > MAX_KEY_BYTES:
        digest = hashlib.sha256(source_key.encode("utf-8")).hexdigest()
        folder = f"{results_prefix}{LONG_KEYS}/{digest}/"
    return folder


def _checked_extension(extension: str) -> str:
    if not _EXTENSION.fullmatch(extension):
        raise ValueError(f"not a file extension: {extension!r} (lowercase letters and digits, no dot)")
    return extension


def result_name(index: int, extension: str) -> str:
    """File name of a run's output: ``result.png`` for the first, ``result-2.png`` for the second…"""
    if index < 0:
        raise ValueError(f"output index must be 0 or more, got {index}")
    suffix = "" if index == 0 else f"-{index + 1}"
    return f"{RESULT_STEM}{suffix}.{_checked_extension(extension)}"


def rendition_name(name: str, extension: str) -> str:
    """File name of a channel rendition: ``rendition-<name>.<ext>``. Names are lowercase letters,
    digits, ``-`` and ``_`` (at most 64), so every such file name fits the room kept for it."""
    if not _RENDITION_NAME.fullmatch(name):
        raise ValueError(
            f"rendition name {name!r} must be 1 to {MAX_RENDITION_NAME} lowercase letters, digits, - or _,"
            " starting with a letter or digit"
        )
    return f"{RENDITION_STEM}-{name}.{_checked_extension(extension)}"


def result_key(
    source_key: str, upload_prefix: str, results_prefix: str, extension: str, index: int = 0
) -> str:
    """Where output ``index`` (0-based) of a run for ``source_key`` is stored."""
    return result_folder(source_key, upload_prefix, results_prefix) + result_name(index, extension)


def is_rendition(key: str) -> bool:
    """Whether a result key is a rendition's file (``rendition-<name>.<ext>``), not a run's output."""
    return key.rpartition("/")[2].startswith(RENDITION_STEM + "-")


def rendition_key(source_key: str, upload_prefix: str, results_prefix: str, name: str, extension: str) -> str:
    """Where the rendition ``name`` of ``source_key``'s result is stored."""
    return result_folder(source_key, upload_prefix, results_prefix) + rendition_name(name, extension)


def result_metadata(
    *, job_id: str, run_id: str, source_bucket: str, source_key: str, source_version: str, colour: str
) -> Mapping[str, str]:
    """User metadata on every result object: which job, run and source version wrote it."""
    return {
        "job-id": job_id,
        "run-id": run_id,
        "source-bucket": source_bucket,
        # Keys may be any unicode; S3 metadata must be ASCII.
        "source-key": quote(source_key, safe="/"),
        "source-version": source_version,
        "background-color": colour,
    }


def names_source(metadata: Mapping[str, str], source_bucket: str, source_key: str) -> bool:
    """Whether a result object's user metadata says it was written for this very source object.

    Compared in the quoted form the copy writes, byte for byte (no unicode normalisation)."""
    lowered = {k.lower(): v for k, v in metadata.items()}
    return lowered.get("source-bucket") == source_bucket and lowered.get("source-key") == quote(
        source_key, safe="/"
    )
