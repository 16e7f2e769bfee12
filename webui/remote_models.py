"""Named remote engines: `models/remote.yaml`, listed in the Model tab next to the local models.

    cluster-llama:                     # the name shown in the Model tab
      url: http://10.0.0.5:8080        # an OpenAI-compatible server (vLLM, llama.cpp server, Corral --api) or TGI
      kind: openai                     # openai | tgi
      model: meta-llama/Llama-3.1-8B-Instruct   # the server's model id ("" = the first it lists)
      api_key_env: CLUSTER_KEY         # the key is read from this environment variable (or give api_key: ...)
      template: chatml                 # prompt template for Chat (default: the server's own if it is a Corral,
      preset: Default                  #   else picked by name); generation preset

The file is read on every call, so an edit shows at the next refresh. A malformed file or entry is reported as a
warning and skipped; the local models are listed regardless. Keys never reach the browser: the Model tab shows
an empty `api_key`, and an empty value from the UI keeps the one from the file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from loaders.detect import Detection
from loaders.errors import SettingsError
from loaders.remote import KINDS
from loaders.settings import RemoteSettings
from webui.fileio import read_yaml
from webui.settings import ResolvedSettings, Source

log = logging.getLogger(__name__)

REMOTE_FILE = "remote.yaml"
LOADER = "remote"
ENTRY_KEYS = {f.name for f in fields(RemoteSettings)} | {"api_key_env", "template", "preset"}


@dataclass(frozen=True)
class RemoteEndpoint:
    name: str
    settings: RemoteSettings  # with the real key
    template: str | None = None
    preset: str | None = None


class RemoteCatalog:
    def __init__(self, models_dir: Path) -> None:
        self.path = Path(models_dir) / REMOTE_FILE

    def endpoints(self) -> dict[str, RemoteEndpoint]:
        if not self.path.is_file():
            return {}
        try:
            data = read_yaml(self.path)
        except (OSError, yaml.YAMLError) as error:
            log.warning("%s cannot be read, no remote engines listed: %s", self.path, error)
            return {}
        if not isinstance(data, dict):
            log.warning("%s must map endpoint names to settings; no remote engines listed", self.path)
            return {}
        found = {}
        for name, entry in data.items():
            try:
                found[str(name)] = _endpoint(str(name), entry)
            except SettingsError as error:
                log.warning("%s: %s", self.path, error)
        return found

    def names(self) -> list[str]:
        return sorted(self.endpoints(), key=str.lower)

    def get(self, name: str) -> RemoteEndpoint | None:
        return self.endpoints().get(name)

    def detection(self, endpoint: RemoteEndpoint) -> Detection:
        reason = f"listed in {REMOTE_FILE}: a {endpoint.settings.kind} server at {endpoint.settings.url}"
        return Detection(path=self.path, loader=LOADER, reasons=[reason])

    def resolved(self, endpoint: RemoteEndpoint) -> ResolvedSettings:
        """What the Model tab shows: the endpoint's settings with the key left out."""
        shown = replace(endpoint.settings, api_key="")
        source = Source("user", f"from {REMOTE_FILE}")
        sources = {key: source for key in (*asdict(shown), "loader", "template", "preset")}
        return ResolvedSettings(
            model_name=endpoint.name, detection=self.detection(endpoint), loader=LOADER, loader_settings=shown,
            template=endpoint.template, preset=endpoint.preset, context_length=None, sources=sources,
        )

    @staticmethod
    def settings(endpoint: RemoteEndpoint, overrides: dict[str, Any] | None) -> RemoteSettings:
        """The endpoint's settings with the UI's values on top (an empty value keeps the file's)."""
        given = {k: v for k, v in (overrides or {}).items() if k in asdict(endpoint.settings) and v not in ("", None)}
        return replace(endpoint.settings, **given)


def _endpoint(name: str, entry: Any) -> RemoteEndpoint:
    if not isinstance(entry, dict):
        raise SettingsError(f"remote engine {name!r} needs a mapping with at least 'url'")
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        raise SettingsError(f"remote engine {name!r}: unknown key(s) {', '.join(sorted(unknown))}")
    url, kind = str(entry.get("url", "")), str(entry.get("kind", "openai"))
    if not url.startswith(("http://", "https://")):
        raise SettingsError(f"remote engine {name!r}: 'url' must start with http:// or https://")
    if kind not in KINDS:
        raise SettingsError(f"remote engine {name!r}: 'kind' must be one of {', '.join(KINDS)}")
    key = str(entry.get("api_key") or os.environ.get(str(entry.get("api_key_env", "")), ""))
    settings = RemoteSettings(url=url, api_key=key, model=str(entry.get("model") or ""), kind=kind)
    return RemoteEndpoint(name, settings, template=entry.get("template"), preset=entry.get("preset"))
