"""A small kustomize-compatible renderer for deploy/k8s (no kubectl, no kustomize binary).

It implements exactly the kustomization features deploy/k8s uses, with kustomize's
semantics, and refuses anything else (so a manifest change that needs more fails loudly here
instead of rendering differently from ``kubectl kustomize``):

- ``resources`` (files with one or more documents, or directories with a kustomization)
- ``components`` (``kind: Component``: their resources and patches apply to the parent's)
- ``namespace`` (set on every namespaced object)
- ``labels`` (``pairs``; ``includeSelectors`` / ``includeTemplates`` false: metadata only)
- ``images`` (``name`` → ``newName`` / ``newTag`` / ``digest``, matched on the image name)
- ``patches``: strategic-merge patches (``path`` or inline, target from the patch's own kind
  and name) and JSON 6902 patches (inline op lists with a ``target``)
- ``replacements`` (inline; a source field copied into target field paths, which may select
  list items with ``[key=value]``), run after the other transformers, as kustomize does
- ``config.kubernetes.io/local-config: "true"`` objects (parameters for replacements) are
  used while building and left out of the output

Strategic merge follows Kubernetes' merge keys for the lists deploy/k8s patches (containers,
env, volumes, volumeMounts by name / mountPath); other lists replace. Where ``kubectl`` is
installed, tests/deploy compares this renderer's output with ``kubectl kustomize``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
}
KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "namespace",
    "labels",
    "images",
    "patches",
    "replacements",
}
LOCAL_CONFIG = "config.kubernetes.io/local-config"
# strategic-merge keys of the lists we patch (k8s.io/api patchMergeKey)
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "topologySpreadConstraints": "topologyKey",
}


class KustomizeError(ValueError):
    pass


def load_docs(path: Path) -> list[Doc]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d:
            raise KustomizeError(f"{path}: not a Kubernetes object: {d!r:.80}")
    return docs


def _kustomization(directory: Path) -> Doc:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        f = directory / name
        if f.exists():
            doc = yaml.safe_load(f.read_text()) or {}
            unknown = set(doc) - KUSTOMIZATION_KEYS
            if unknown:
                raise KustomizeError(f"{f}: unsupported kustomization fields {sorted(unknown)}")
            return dict(doc)
    raise KustomizeError(f"no kustomization in {directory}")


def render(directory: Path) -> list[Doc]:
    """What ``kubectl kustomize <directory>`` prints, as a list of objects."""
    docs = _build(directory.resolve(), component=False)
    return [d for d in docs if not _is_local(d)]


def _is_local(d: Doc) -> bool:
    annotations = d["metadata"].get("annotations") or {}
    return str(annotations.get(LOCAL_CONFIG, "")).lower() == "true"


def _build(directory: Path, component: bool) -> list[Doc]:
    k = _kustomization(directory)
    want = "Component" if component else "Kustomization"
    if k.get("kind", "Kustomization") != want:
        raise KustomizeError(f"{directory}: expected kind {want}, got {k.get('kind')}")
    docs: list[Doc] = []
    for res in k.get("resources", []):
        p = (directory / res).resolve()
        docs += _build(p, component=False) if p.is_dir() else load_docs(p)
    _check_unique(docs, directory)
    for comp in k.get("components", []):
        docs = _apply_component((directory / comp).resolve(), docs)
    return _transform(directory, k, docs)


def _apply_component(directory: Path, docs: list[Doc]) -> list[Doc]:
    k = _kustomization(directory)
    if k.get("kind") != "Component":
        raise KustomizeError(f"{directory}: a component needs kind: Component")
    added: list[Doc] = []
    for res in k.get("resources", []):
        added += load_docs((directory / res).resolve())
    out = docs + added
    _check_unique(out, directory)
    return _transform(directory, k, out)


def _id(d: Doc) -> tuple[str, str, str]:
    return (d["kind"], d["metadata"]["name"], d["metadata"].get("namespace", ""))


def _check_unique(docs: list[Doc], where: Path) -> None:
    seen: set[tuple[str, str, str]] = set()
    for d in docs:
        if _id(d) in seen:
            raise KustomizeError(f"{where}: duplicate object {_id(d)}")
        seen.add(_id(d))


def _transform(directory: Path, k: Doc, docs: list[Doc]) -> list[Doc]:
    docs = copy.deepcopy(docs)
    for patch in k.get("patches", []):
        docs = _patch(directory, patch, docs)
    if "namespace" in k:
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                d["metadata"]["namespace"] = k["namespace"]
    for spec in k.get("labels", []):
        if spec.get("includeSelectors") or spec.get("includeTemplates"):
            raise KustomizeError("labels with includeSelectors / includeTemplates unsupported")
        for d in docs:
            d["metadata"].setdefault("labels", {}).update(spec["pairs"])
    for image in k.get("images", []):
        for d in docs:
            for container in _containers(d):
                container["image"] = _retag(container["image"], image)
    for rep in k.get("replacements", []):
        _replace(rep, docs, directory)
    return docs


def _replace(rep: Doc, docs: list[Doc], where: Path) -> None:
    """One inline replacement: the source's field value into every target field path."""
    unknown = set(rep) - {"source", "targets"}
    if unknown or "path" in rep:
        raise KustomizeError(f"{where}: unsupported replacement fields {sorted(unknown)}")
    src = rep["source"]
    if set(src) - {"kind", "name", "fieldPath"}:
        raise KustomizeError(f"{where}: unsupported replacement source {src}")
    sources = [d for d in docs if _matches(d, {k: src[k] for k in ("kind", "name") if k in src})]
    if len(sources) != 1:
        raise KustomizeError(f"{where}: replacement source {src} matches {len(sources)} objects")
    value = _field(sources[0], src.get("fieldPath", "metadata.name"), where)
    for target in rep["targets"]:
        if set(target) - {"select", "fieldPaths"}:
            raise KustomizeError(f"{where}: unsupported replacement target {target}")
        hits = [d for d in docs if _matches(d, target["select"])]
        if not hits:
            raise KustomizeError(f"{where}: replacement target {target['select']} matches nothing")
        for d in hits:
            for path in target["fieldPaths"]:
                *parents, last = _path_parts(path)
                parent = _field(d, ".".join(parents), where) if parents else d
                if not isinstance(parent, dict) or last not in parent:
                    raise KustomizeError(f"{where}: {path} missing in {_id(d)}")
                parent[last] = copy.deepcopy(value)


def _path_parts(path: str) -> list[str]:
    # a.b.[k=v].c: dots inside [k=v] do not split (they may be in the value)
    parts, depth, cur = [], 0, ""
    for ch in path:
        if ch == "." and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += (ch == "[") - (ch == "]")
        cur += ch
    return [*parts, cur]


def _field(doc: Any, path: str, where: Path) -> Any:
    node = doc
    for part in _path_parts(path):
        if part.startswith("[") and part.endswith("]") and isinstance(node, list):
            key, _, want = part[1:-1].partition("=")
            found = [x for x in node if isinstance(x, dict) and str(x.get(key)) == want]
            if len(found) != 1:
                raise KustomizeError(f"{where}: {path}: {part} selects {len(found)} items")
            node = found[0]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KustomizeError(f"{where}: field {path} not found ({part})")
    return node


def _containers(d: Doc) -> list[Doc]:
    spec = d.get("spec", {}).get("template", {}).get("spec", {})
    return list(spec.get("containers", [])) + list(spec.get("initContainers", []))


def split_image(ref: str) -> tuple[str, str, str]:
    """(name, tag, digest) of an image reference."""
    name, _, digest = ref.partition("@")
    tag = ""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, digest


def _retag(ref: str, image: Doc) -> str:
    name, tag, digest = split_image(ref)
    if name != image["name"]:
        return ref
    name = image.get("newName", name)
    if "digest" in image:
        return f"{name}@{image['digest']}"
    if "newTag" in image:
        return f"{name}:{image['newTag']}"
    return f"{name}:{tag}" if tag else (f"{name}@{digest}" if digest else name)


def _patch(directory: Path, spec: Doc, docs: list[Doc]) -> list[Doc]:
    if "path" in spec:
        patch_docs = load_docs((directory / spec["path"]).resolve())
    else:
        loaded = yaml.safe_load(spec["patch"])
        if isinstance(loaded, list):  # JSON 6902
            target = spec.get("target")
            if not target:
                raise KustomizeError("a JSON 6902 patch needs a target")
            hits = [d for d in docs if _matches(d, target)]
            if not hits:
                raise KustomizeError(f"patch target {target} matches nothing")
            for d in hits:
                _json6902(d, loaded)
            return docs
        patch_docs = [loaded]
    for p in patch_docs:
        target = spec.get("target") or {"kind": p["kind"], "name": p["metadata"]["name"]}
        hits = [d for d in docs if _matches(d, target)]
        if not hits:
            raise KustomizeError(f"patch for {target} matches nothing in {directory}")
        for d in hits:
            merged = strategic_merge(d, p)
            d.clear()
            d.update(merged)
    return docs


def _matches(d: Doc, target: Doc) -> bool:
    unknown = set(target) - {"kind", "name", "group", "version"}
    if unknown:
        raise KustomizeError(f"unsupported patch target fields {sorted(unknown)}")
    kind_ok = d["kind"] == target.get("kind", d["kind"])
    return bool(kind_ok and d["metadata"]["name"] == target.get("name", d["metadata"]["name"]))


def strategic_merge(base: Any, patch: Any, key: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = strategic_merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        # items the base has are merged in place; new ones go first, in patch order (as
        # kustomize's kyaml merge does)
        mk = MERGE_KEYS[key]
        out_list = [copy.deepcopy(x) for x in base]
        new = []
        for item in patch:
            idx = next((i for i, x in enumerate(out_list) if x.get(mk) == item.get(mk)), None)
            if idx is None:
                new.append(copy.deepcopy(item))
            else:
                out_list[idx] = strategic_merge(out_list[idx], item)
        return new + out_list
    return copy.deepcopy(patch)


def _json6902(doc: Doc, ops: list[Doc]) -> None:
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent: Any = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        kind = op["op"]
        if isinstance(parent, list):
            i = len(parent) if last == "-" else int(last)
            if kind == "add":
                parent.insert(i, op["value"])
            elif kind == "replace":
                parent[i] = op["value"]
            elif kind == "remove":
                del parent[i]
            else:
                raise KustomizeError(f"unsupported op {kind}")
        elif kind in ("add", "replace"):
            if kind == "replace" and last not in parent:
                raise KustomizeError(f"replace of missing path {op['path']}")
            parent[last] = op["value"]
        elif kind == "remove":
            del parent[last]
        else:
            raise KustomizeError(f"unsupported op {kind}")
