"""The kubelet's credential keyring, rebuilt so the operator can see what a pull will send.

The kubelet turns a pod's ``imagePullSecrets`` into a keyring (pkg/credentialprovider)
and sends every credential whose registry key matches the image, most specific
first.  Most "pull access denied" incidents are a key that silently does not match
(wrong port, ``registry-1.docker.io``, a glob with the wrong label count) or a
secret the kubelet skips.  This module applies the same rules (secret documents:
:mod:`dockerconfig`; key matching: :mod:`registrykeys`) and, unlike the kubelet, says
*why* a secret or entry was unusable -- without ever echoing secret material.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pullmedic.core.dockerconfig import (
    DOCKERCFG_KEY,
    DOCKERCFG_TYPE,
    DOCKERCONFIGJSON_KEY,
    DOCKERCONFIGJSON_TYPE,
    Entry,
    InvalidDocument,
    PullSecret,
    SecretProblem,
    empty_reason,
    expected_data_key,
    load_json,
    parse_config_json,
    parse_entries,
)
from pullmedic.core.reference import ImageReference
from pullmedic.core.registrykeys import (
    DEFAULT_REGISTRY_KEY,
    is_default_registry_match,
    key_matches,
    normalize_key,
    show_key,
)


@dataclass(frozen=True)
class Credential:
    """One username/password the kubelet would offer for an image; the password never prints."""

    username: str
    password: str = field(repr=False)
    source: str
    key: str
    secret: str | None = None

    def __repr__(self) -> str:
        return (
            f"Credential(username={self.username!r}, source={self.source!r}, "
            f"key={self.key!r}, password=<redacted>)"
        )

    __str__ = __repr__


@dataclass(frozen=True)
class NodeRegistries:
    """Registries whose pull credentials the nodes hold (kubelet credential provider
    plugins, a node config.json): patterns with the kubelet's own ``matchImages`` rules."""

    keys: tuple[str, ...] = ()

    @classmethod
    def parse(cls, patterns: Iterable[str]) -> tuple[NodeRegistries, list[str]]:
        keys, problems = [], []
        for p in patterns:
            try:
                keys.append(normalize_key(p))
            except ValueError as exc:
                problems.append(str(exc))
        return cls(tuple(keys)), problems

    def provide(self, image: ImageReference) -> bool:
        return any(key_matches(k, image) for k in self.keys)

    def __or__(self, other: NodeRegistries) -> NodeRegistries:
        return NodeRegistries(self.keys + other.keys)


class Keyring:
    """Credentials indexed by normalised registry key, looked up the kubelet's way."""

    def __init__(self) -> None:
        self._creds: dict[str, list[Credential]] = {}
        self._index: list[str] = []
        # A union's parts, looked up in order (the pod's secrets, then the node's providers).
        self._parts: tuple[Keyring, ...] = ()

    @classmethod
    def union(cls, *parts: Keyring) -> Keyring:
        """The kubelet's UnionDockerKeyring: every part's matches, parts in order.

        The kubelet looks up the pod's pull secrets first, then the node's credential
        providers; each part applies its own Docker Hub fallback.
        """
        keyring = cls()
        keyring._parts = tuple(p for p in parts if not p.is_empty())
        return keyring

    @classmethod
    def from_provider(
        cls, label: str, entries: Iterable[tuple[str, str, str]]
    ) -> tuple[Keyring, list[SecretProblem]]:
        """The keyring one credential provider response gives: (pattern, username,
        password) entries, named ``label`` (``credential provider NAME``)."""
        keyring = cls()
        problems: list[SecretProblem] = []
        keyring._add_entries(
            (Entry(loc, user, pw, not user and not pw) for loc, user, pw in entries),
            label,
            label,
            None,
            problems,
        )
        return keyring, problems

    def _add(self, credential: Credential) -> None:
        if credential.key not in self._creds:
            self._creds[credential.key] = []
            self._index.append(credential.key)
            # Reverse lexical order puts "quay.io/coreos" before "quay.io", as upstream does.
            self._index.sort(reverse=True)
        self._creds[credential.key].append(credential)

    def _add_entries(
        self,
        entries: Iterable[Entry],
        describe: str,
        problem_owner: str,
        secret_ref: str | None,
        problems: list[SecretProblem],
    ) -> None:
        for entry in entries:
            try:
                key = normalize_key(entry.loc)
            except ValueError as exc:
                problems.append(SecretProblem(problem_owner, f"{exc}; the kubelet ignores it"))
                continue
            if entry.empty:
                problems.append(
                    SecretProblem(
                        problem_owner,
                        f"entry {show_key(entry.loc)} has no username, password or auth "
                        "(identitytoken and registrytoken are ignored by the kubelet); "
                        "it sends empty credentials",
                    )
                )
            self._add(
                Credential(
                    username=entry.username,
                    password=entry.password,
                    source=f"{describe} key {show_key(entry.loc)}",
                    key=key,
                    secret=secret_ref,
                )
            )

    @classmethod
    def from_secrets(cls, secrets: Iterable[PullSecret]) -> tuple[Keyring, list[SecretProblem]]:
        """Build the keyring a pod's imagePullSecrets give, plus what is wrong with them.

        Secrets the kubelet skips (wrong type, missing or empty key) and secrets whose
        JSON it cannot decode are reported; the latter make the kubelet fail the pull.
        """
        keyring = cls()
        problems: list[SecretProblem] = []
        for secret in secrets:
            ref = f"{secret.namespace}/{secret.name}"
            data_key = expected_data_key(secret.type)
            if data_key is None:
                problems.append(
                    SecretProblem(
                        ref,
                        f"type is {json.dumps(str(secret.type))}; the kubelet only reads "
                        f"{DOCKERCONFIGJSON_TYPE} and {DOCKERCFG_TYPE} pull secrets",
                    )
                )
                continue
            data = secret.data if isinstance(secret.data, Mapping) else {}
            encoded = data.get(data_key)
            if encoded is None:
                problems.append(
                    SecretProblem(ref, f"type {secret.type} but no {data_key!r} key in data")
                )
                continue
            if not isinstance(encoded, str):
                problems.append(SecretProblem(ref, f"data[{data_key!r}] is not a string"))
                continue
            try:
                raw = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                problems.append(SecretProblem(ref, f"data[{data_key!r}] is not valid base64"))
                continue
            if not raw:
                problems.append(
                    SecretProblem(ref, f"data[{data_key!r}] is empty; the kubelet ignores it")
                )
                continue
            try:
                doc = load_json(raw)
                if data_key == DOCKERCONFIGJSON_KEY:
                    entries = parse_config_json(doc)
                else:
                    entries = parse_entries(doc, "the document")
            except InvalidDocument as exc:
                problems.append(
                    SecretProblem(
                        ref,
                        f"{data_key} {exc}; the kubelet fails every pull that uses this secret",
                        blocks_pull=True,
                    )
                )
                continue
            if not entries:
                problems.append(SecretProblem(ref, empty_reason(data_key, doc)))
            elif data_key == DOCKERCFG_KEY and any(e.loc.lower() == "auths" for e in entries):
                problems.append(
                    SecretProblem(
                        ref,
                        f"{data_key} looks like a .dockerconfigjson document "
                        '({"auths": ...}); with this type the kubelet reads "auths" as a '
                        "registry name, so none of its credentials are used",
                    )
                )
            keyring._add_entries(entries, f"pull secret {ref} ({data_key})", ref, ref, problems)
        return keyring, problems

    @classmethod
    def from_docker_config(
        cls, raw: bytes | str, source: str
    ) -> tuple[Keyring, list[SecretProblem]]:
        """Build a keyring from a docker config file (``{"auths": ...}``) or a bare dockercfg map.

        Meant for the CLI; problems are reported against ``source``.
        """
        keyring = cls()
        problems: list[SecretProblem] = []
        try:
            doc = load_json(raw)
            if isinstance(doc, dict) and any(k.lower() == "auths" for k in doc):
                entries = parse_config_json(doc)
                for helper in ("credsStore", "credHelpers"):
                    if helper in doc:
                        problems.append(
                            SecretProblem(
                                source,
                                f"{helper!r} is set; credential helpers are not consulted, "
                                "only inline 'auths' entries are used",
                            )
                        )
            else:
                entries = parse_entries(doc, "the document")
        except InvalidDocument as exc:
            problems.append(SecretProblem(source, f"config {exc}", blocks_pull=True))
            return keyring, problems
        if not entries:
            problems.append(SecretProblem(source, "config contains no registries"))
        keyring._add_entries(entries, source, source, None, problems)
        return keyring, problems

    def lookup(self, image: ImageReference) -> list[Credential]:
        """Every credential the kubelet would try for ``image``, in the order it tries them.

        The ``index.docker.io`` entry is used for Docker Hub images only when no key matched.
        """
        if self._parts:
            return [c for part in self._parts for c in part.lookup(image)]
        found: list[Credential] = []
        for key in self._index:
            if key_matches(key, image):
                found.extend(self._creds[key])
        if found:
            return found
        if DEFAULT_REGISTRY_KEY in self._creds and is_default_registry_match(image.name):
            return list(self._creds[DEFAULT_REGISTRY_KEY])
        return []

    def keys(self) -> list[str]:
        """Normalised keys, most specific first (the order lookups walk)."""
        if self._parts:
            return [k for part in self._parts for k in Keyring.keys(part)]
        return list(self._index)

    def __len__(self) -> int:
        return sum(len(creds) for creds in self._creds.values()) + sum(len(p) for p in self._parts)

    def is_empty(self) -> bool:
        """True when no credential at all was loaded (every pull would be anonymous)."""
        return not self._creds and all(p.is_empty() for p in self._parts)

    def __repr__(self) -> str:
        return f"Keyring(keys={self.keys()!r}, credentials={len(self)})"
