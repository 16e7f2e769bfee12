"""Model downloads from the Hugging Face Hub: what to fetch, where it goes, and getting it there intact.

One module per job: `hub` (the pasted text, listing a branch through `HfApi`, the Hub's errors as Corral's),
`choose` (which files to fetch; the GGUF quant by `loaders.files.gguf_choice`), `record` (the destination folder
and its `.corral-source.json`, with the GGUF pick remembered), `verify` (hashes, offline `check`), `progress`
(snapshots for the UI), `transfer` (resumable, verified, parallel streaming), `jobs` (background downloads) and
`cli` (`python -m webui.download`). The names below are the package's public face; import them from here.
"""

from webui.download.choose import SMALL_FILE_LIMIT, DownloadPlan, SkippedFile, choose_files
from webui.download.hub import (
    REPO_FORM,
    RemoteFile,
    RepoListing,
    RepoRef,
    hub_endpoint,
    hub_errors_as_corral,
    list_files,
    parse_repo,
    safe_name,
)
from webui.download.jobs import DownloadJob, DownloadManager, plan_download
from webui.download.progress import DownloadProgress, FileProgress, FileState, JobState, ProgressTracker
from webui.download.record import METADATA_NAME, SourceRecord, destination, remembered_gguf
from webui.download.transfer import (
    DEFAULT_RETRIES,
    DEFAULT_STALL_S,
    DEFAULT_THREADS,
    DISK_MARGIN,
    PARTIAL_DIR,
    run_plan,
)
from webui.download.verify import HASH_CHUNK, CheckReport, FileCheck, check

__all__ = [
    "DEFAULT_RETRIES",
    "DEFAULT_STALL_S",
    "DEFAULT_THREADS",
    "DISK_MARGIN",
    "HASH_CHUNK",
    "METADATA_NAME",
    "PARTIAL_DIR",
    "REPO_FORM",
    "SMALL_FILE_LIMIT",
    "CheckReport",
    "DownloadJob",
    "DownloadManager",
    "DownloadPlan",
    "DownloadProgress",
    "FileCheck",
    "FileProgress",
    "FileState",
    "JobState",
    "ProgressTracker",
    "RemoteFile",
    "RepoListing",
    "RepoRef",
    "SkippedFile",
    "SourceRecord",
    "check",
    "choose_files",
    "destination",
    "hub_endpoint",
    "hub_errors_as_corral",
    "list_files",
    "parse_repo",
    "plan_download",
    "remembered_gguf",
    "run_plan",
    "safe_name",
]
