"""The Hub side of a download: the text a user pastes, listing a branch through `HfApi`, and the Hub's errors.

`parse_repo` turns `owner/repo`, `owner/repo:branch` or a Hub URL into a `RepoRef`; `list_files` lists a branch
(sizes, hashes, commit) without downloading, and refuses a repository of GGML files (read by their first bytes),
naming its GGUF sibling (`…-GGML` -> `…-GGUF`) when the Hub has one; `hub_errors_as_corral` is the one place
where huggingface_hub's exceptions become Corral errors; `safe_name` refuses server file names that would escape
the model folder.

Everything the Hub says about a file is checked here, where its `RemoteFile` is made: a name that stays in the
folder, a size, and a hash of the right form (sha256: 64 hex digits, git blob id: 40), because the hash names the
partial file on disk and is what the bytes are verified against. A file with no usable hash is refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

import httpx2
from huggingface_hub import HfApi, constants, hf_hub_url
from huggingface_hub import errors as hub_errors
from huggingface_hub.hf_api import RepoSibling
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status, validate_repo_id

from loaders.errors import (
    BranchNotFoundError,
    DownloadError,
    GatedRepoError,
    IntegrityError,
    RepoNameError,
    RepoNotFoundError,
    UnsafePathError,
)

REPO_FORM = "owner/repo, owner/repo:branch or https://huggingface.co/owner/repo/tree/branch"
_HUB_HOSTS = ("huggingface.co", "www.huggingface.co", "hf.co")
# git check-ref-format: no spaces, control characters, ~ ^ : ? * [ \ , "..", "@{", leading "/" or "-".
_BAD_BRANCH = re.compile(r"[\s~^:?*\[\\\x00-\x1f\x7f]|\.\.|@\{|^[/-]|/$|\.lock$|^$")
_HEX_DIGITS = {"sha256": 64, "blob id": 40}


@dataclass(frozen=True)
class RepoRef:
    """A repository and branch on the Hub."""

    repo_id: str
    branch: str = "main"

    def __str__(self) -> str:
        return self.repo_id if self.branch == "main" else f"{self.repo_id}:{self.branch}"


@dataclass(frozen=True)
class RemoteFile:
    """A file of a branch as the Hub lists it: `sha256` for LFS files, `blob_id` (git sha1) for the others.

    A hash that is given must be plain hex of its length (it becomes a file name: `.corral-partial/<hash>.part`);
    anything else raises `IntegrityError` here, so no malformed hash exists past this record."""

    path: str
    size: int
    sha256: str | None = None
    blob_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", checked_hex(self.sha256, "sha256", self.path))
        object.__setattr__(self, "blob_id", checked_hex(self.blob_id, "blob id", self.path))
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise IntegrityError(f"The server listed {self.path!r} with size {self.size!r}; refused.")


def checked_hex(value: object, kind: str, path: str) -> str | None:
    """`value` lower-cased if it is a hex digest of `kind`'s length, None if absent; `IntegrityError` otherwise."""
    if value is None:
        return None
    digits = _HEX_DIGITS[kind]
    if not isinstance(value, str) or not re.fullmatch(rf"[0-9a-fA-F]{{{digits}}}", value):
        raise IntegrityError(
            f"The server listed {path!r} with {kind} {value!r}, which is not {digits} hex digits; refused "
            "(the file cannot be verified, and the hash would name a file on disk)."
        )
    return value.lower()


@dataclass(frozen=True)
class RepoListing:
    ref: RepoRef
    commit: str
    files: tuple[RemoteFile, ...]
    endpoint: str


# --- parsing ------------------------------------------------------------------------------------------------------


def parse_repo(text: str) -> RepoRef:
    """`owner/repo`, `owner/repo:branch` or a Hub URL (`.../owner/repo[/tree/branch]`) -> RepoRef."""
    cleaned = text.strip()
    if cleaned.startswith(("http://", "https://")):
        repo_id, branch = _split_url(cleaned)
    else:
        repo_id, _, branch = cleaned.partition(":")
        branch = branch if ":" in cleaned else "main"
    _validate_ref(repo_id, branch, text)
    return RepoRef(repo_id, branch)


def _split_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if parts.hostname not in _HUB_HOSTS or len(segments) < 2:
        raise RepoNameError(f"Not a Hugging Face model URL: {url!r}. Expected {REPO_FORM}.")
    repo_id = "/".join(segments[:2])
    if len(segments) == 2:
        return repo_id, "main"
    if segments[2] in ("tree", "blob", "resolve") and len(segments) >= 4:
        return repo_id, segments[3]
    raise RepoNameError(f"Cannot read a repository and branch from {url!r}. Expected {REPO_FORM}.")


def _validate_ref(repo_id: str, branch: str, text: str) -> None:
    if repo_id.count("/") != 1:
        raise RepoNameError(f"{text.strip()!r} is not a model name. Expected {REPO_FORM}.")
    try:
        validate_repo_id(repo_id)
    except hub_errors.HFValidationError as error:
        raise RepoNameError(f"{repo_id!r} is not a valid repository name ({error}). Expected {REPO_FORM}.") from error
    if _BAD_BRANCH.search(branch):
        raise RepoNameError(f"{branch!r} is not a valid branch name. Expected {REPO_FORM}.")


def safe_name(name: str) -> str:
    """A file name from the server, refused if it could land outside the model folder."""
    pure = PurePosixPath(name)
    if (
        not name
        or "\\" in name
        or "\x00" in name
        or pure.is_absolute()
        or re.match(r"^[A-Za-z]:", name)
        or any(part in ("..", ".", "") for part in name.split("/"))
    ):
        raise UnsafePathError(f"The server listed a file named {name!r}, which would escape the model folder; refused.")
    return name


# --- talking to the Hub ---------------------------------------------------------------------------------------------


def hub_endpoint() -> str:
    """HF_ENDPOINT as it is now (huggingface_hub reads it once at import; a test server sets it later)."""
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


@contextmanager
def hub_errors_as_corral(ref: RepoRef, *, endpoint: str, token: str | None) -> Iterator[None]:
    """The one place where the Hub's exceptions become Corral's."""
    try:
        yield
    except hub_errors.GatedRepoError as error:  # subclass of RepositoryNotFoundError: first
        raise GatedRepoError(
            f"{ref.repo_id} is gated: accept its license on https://huggingface.co/{ref.repo_id} and set HF_TOKEN "
            "to a token of that account (or enter it in the token box)."
        ) from error
    except hub_errors.RepositoryNotFoundError as error:
        raise RepoNotFoundError(
            f"No repository {ref.repo_id} on {endpoint}. Check the name on its model card; if it is private, "
            "set HF_TOKEN to a token that can read it."
        ) from error
    except hub_errors.RevisionNotFoundError as error:
        branches = _branches(ref, endpoint=endpoint, token=token)
        raise BranchNotFoundError(
            f"{ref.repo_id} has no branch {ref.branch!r}. Branches: {', '.join(branches) or 'none found'}.",
            branches=branches,
        ) from error
    except hub_errors.RemoteEntryNotFoundError as error:
        raise DownloadError(
            f"A file of {ref} vanished from the Hub while downloading; list the files again."
        ) from error
    except hub_errors.HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise DownloadError(f"The Hub answered HTTP {status} for {ref}: {error.server_message or error}") from error
    except httpx2.TransportError as error:
        raise DownloadError(f"Cannot reach {endpoint} ({error}). Check the connection and try again.") from error


def _branches(ref: RepoRef, *, endpoint: str, token: str | None) -> list[str]:
    try:
        refs = HfApi(endpoint=endpoint, token=token).list_repo_refs(ref.repo_id)
    except (hub_errors.HfHubHTTPError, httpx2.TransportError):
        return []
    return sorted(b.name for b in refs.branches)


def list_files(ref: RepoRef, *, token: str | None = None) -> RepoListing:
    """The files of `ref`'s branch with sizes and hashes, and its commit; nothing is downloaded."""
    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors_as_corral(ref, endpoint=endpoint, token=token):
        info = api.model_info(ref.repo_id, revision=ref.branch, files_metadata=True)
        files = tuple(_remote_file(s) for s in info.siblings or [])
        if info.gated and files:
            _probe_access(ref, info.sha or ref.branch, files[0].path, endpoint=endpoint, token=token)
    listing = RepoListing(ref=ref, commit=info.sha or ref.branch, files=files, endpoint=endpoint)
    _refuse_ggml(listing, token=token)
    return listing


# --- GGML repositories --------------------------------------------------------------------------------------------

GGML_MAGICS = (b"lmgg", b"fmgg", b"tjgg", b"algg")  # ggml, ggmf, ggjt, ggla as they lie on disk (little-endian)


def _refuse_ggml(listing: RepoListing, *, token: str | None) -> None:
    """A branch whose weights are GGML `.bin` files (no config.json, no .gguf; the first bytes say GGML) is refused
    with the reason and, when the Hub has it, the GGUF repository to download instead."""
    names = [f.path for f in listing.files]
    if "config.json" in names or any(n.lower().endswith(".gguf") for n in names):
        return
    bins = [f for f in listing.files if f.path.lower().endswith(".bin") and "/" not in f.path and f.size >= 4]
    if not bins or _first_bytes(listing, bins[0].path, token=token) not in GGML_MAGICS:
        return
    sibling = gguf_sibling(listing.ref.repo_id, token=token)
    then = f"Its GGUF version is {sibling}: download that instead." if sibling else \
        "Look for a GGUF version of this model (usually the same name ending in -GGUF)."  # fmt: skip
    raise DownloadError(f"{listing.ref} holds GGML files ({bins[0].path}), a format llama.cpp stopped reading in "
                        f"August 2023 and Corral cannot load. {then}")  # fmt: skip


def _first_bytes(listing: RepoListing, path: str, *, token: str | None) -> bytes:
    url = hf_hub_url(listing.ref.repo_id, path, revision=listing.commit, endpoint=listing.endpoint)
    headers = {**build_hf_headers(token=token), "range": "bytes=0-3"}
    try:
        response = get_session().get(url, headers=headers, follow_redirects=True)
        hf_raise_for_status(response)
    except (hub_errors.HfHubHTTPError, httpx2.TransportError):
        return b""  # cannot tell: the download goes on and the loader says what the file is
    return response.content[:4]


def gguf_sibling(repo_id: str, *, token: str | None = None) -> str | None:
    """`owner/Name-GGUF` for `owner/Name-GGML` when the Hub has that repository, else None."""
    owner, _, name = repo_id.partition("/")
    if not name.lower().endswith("-ggml"):
        return None
    candidate = f"{owner}/{name[:-4]}GGUF"
    try:
        HfApi(endpoint=hub_endpoint(), token=token).model_info(candidate)
    except (hub_errors.HfHubHTTPError, httpx2.TransportError):
        return None
    return candidate


def _remote_file(sibling: RepoSibling) -> RemoteFile:
    """The checked record of one listed file: LFS files by sha256, the others by git blob id; none: refused."""
    lfs = sibling.lfs
    path = safe_name(sibling.rfilename)
    size = lfs.size if lfs else sibling.size
    item = RemoteFile(
        path=path,
        size=size if isinstance(size, int) else -1,  # a missing or non-integer size is refused by RemoteFile
        sha256=lfs.sha256 if lfs else None,
        blob_id=None if lfs else sibling.blob_id,
    )
    if item.sha256 is None and item.blob_id is None:
        kind = "an LFS file without a sha256" if lfs else "a file without a blob id"
        raise IntegrityError(f"The server listed {path!r} as {kind}: it cannot be verified after download; refused.")
    return item


def _probe_access(ref: RepoRef, revision: str, path: str, *, endpoint: str, token: str | None) -> None:
    """Model info of a gated repo is public; its files are not. A HEAD tells us before the user clicks Download."""
    url = hf_hub_url(ref.repo_id, path, revision=revision, endpoint=endpoint)
    response = get_session().head(url, headers=build_hf_headers(token=token), follow_redirects=False)
    hf_raise_for_status(response)
