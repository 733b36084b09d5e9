"""PyTorch module paths of ONNX tensors, read from what PyTorch's exporters leave in the graph.

The dynamo exporter (`torch.onnx.export(..., dynamo=True)`) records, per node, the module scopes the node was
traced in: metadata_props `pkg.torch.onnx.name_scopes` is a Python list literal holding '' (the root), each
enclosing module's full path ('layer4', 'layer4.1', 'layer4.1.relu') and last the FX node's own name;
`pkg.torch.onnx.class_hierarchy` holds the matching classes. The TorchScript exporter (`dynamo=False`) names the
nodes after their scope instead: `/layer4/layer4.1/relu_1/Relu` has one segment per enclosing module, each the
module's path from its nearest non-numeric name on (`layer4.1`, `downsample.0`), and a module called again in the
same parent gets `_1`, `_2`, ... appended (`relu_1` is the second call of `relu`).

A module's output is the last tensor produced inside its scope that something outside the scope reads (or that
is a graph output): for a torchvision ResNet, `layer4.1` and `layer4` both give the final ReLU of the last block,
which is the tensor pytorch-grad-cam hooks for `model.layer4[-1]`.
"""

from __future__ import annotations

import ast
import difflib
import re
from dataclasses import dataclass, field

from onnxcam.errors import LayerError
from onnxcam.graph.load import FLOAT_TYPES
from onnxcam.graph.protos import ModelProto, NodeProto, TensorProto
from onnxcam.graph.topo import elem_types

NAME_SCOPES = "pkg.torch.onnx.name_scopes"
CLASS_HIERARCHY = "pkg.torch.onnx.class_hierarchy"

_INSPECT = "; run 'onnxcam inspect' to list layers"
Chain = tuple[str, ...]  # full module paths enclosing a node, outermost first


@dataclass
class ModuleMap:
    """Where each tensor comes from, in module terms; `exporter` is None when the model carries no module names."""

    exporter: str | None                                         # "dynamo" or "torchscript"
    chains: dict[str, Chain] = field(default_factory=dict)       # tensor -> modules enclosing its producer
    outputs: dict[str, str] = field(default_factory=dict)        # module path -> its output tensor
    classes: dict[str, str] = field(default_factory=dict)        # module path -> class (dynamo exports only)
    paths: list[str] = field(default_factory=list)               # every module path, in graph order

    def children(self, path: str) -> list[str]:
        """The direct children of `path` ('' for the root) that appear in the graph, in graph order."""
        prefix = path + "." if path else ""
        return [p for p in self.paths if p.startswith(prefix) and "." not in p[len(prefix):]]


def module_map(model: ModelProto) -> ModuleMap:
    """The module paths of a model exported from PyTorch (empty when it carries none)."""
    nodes = list(model.graph.node)
    exporter, chains, classes = _dynamo_chains(nodes)
    if exporter is None:
        exporter, chains = _torchscript_chains(nodes)
    result = ModuleMap(exporter, classes=classes)
    if exporter is None:
        return result
    complete = _inherit_chains(nodes, chains)
    for node, chain in zip(nodes, complete):
        for out in node.output:
            if out:
                result.chains[out] = chain
        for path in chain:
            if path not in result.outputs:
                result.paths.append(path)
                result.outputs[path] = ""
    result.outputs.update(_module_outputs(model, nodes, complete))
    result.outputs = {p: t for p, t in result.outputs.items() if t}
    result.paths = [p for p in result.paths if p in result.outputs]
    return result


def resolve_module(model: ModelProto, path: str, modules: ModuleMap | None = None) -> str:
    """The output tensor of the module at `path`: 'layer4.1', pytorch-grad-cam's 'layer4[-1]' or
    'model.layer4[-1]', 'features[3].block.0'. Raises LayerError naming the closest paths when there is none."""
    modules = module_map(model) if modules is None else modules
    if modules.exporter is None:
        raise LayerError(f"'{path}' is not a tensor of the model, and the model carries no PyTorch module names "
                         "(neither the dynamo exporter's name_scopes metadata nor TorchScript's '/module/...' node "
                         f"names) to resolve it as a module path"
                         f"{_close_tensors(model, path, _INSPECT)}")
    steps = _steps(path, modules)
    try:
        resolved = _walk(modules, steps, path)
    except LayerError as exc:
        # pytorch-grad-cam's examples name the network `model` (model.layer4[-1]); Ultralytics has a real
        # child called `model` (model.15), so the prefix is dropped only when the path does not resolve as given
        if len(steps) < 2 or steps[0] != "model":
            raise LayerError(f"{exc}{_close_tensors(model, path)}") from None
        try:
            resolved = _walk(modules, steps[1:], path)
        except LayerError:
            raise LayerError(f"{exc}{_close_tensors(model, path)}") from None
    return modules.outputs[resolved]


def resolve_layer(model: ModelProto, name: str, modules: ModuleMap | None = None) -> str:
    """`name` itself when it is a tensor of the model, else the output tensor of the module it names."""
    if name in _tensor_names(model):
        return name
    return resolve_module(model, name, modules)


def module_path(model: ModelProto, tensor: str, modules: ModuleMap | None = None) -> str | None:
    """The outermost module whose output `tensor` is (resolve_module of it gives the tensor back), or None."""
    modules = module_map(model) if modules is None else modules
    return next((p for p in modules.chains.get(tensor, ()) if modules.outputs.get(p) == tensor), None)


def enclosing_module(model: ModelProto, tensor: str, modules: ModuleMap | None = None) -> str | None:
    """The innermost module in which `tensor` is computed (its output or not), or None."""
    modules = module_map(model) if modules is None else modules
    chain = modules.chains.get(tensor, ())
    return chain[-1] if chain else None


# -- reading the exporters' conventions ------------------------------------------------------------------------

def _dynamo_chains(nodes: list[NodeProto]) -> tuple[str | None, list[Chain | None], dict[str, str]]:
    chains: list[Chain | None] = []
    classes: dict[str, str] = {}
    for node in nodes:
        props = {p.key: p.value for p in node.metadata_props}
        scopes = _literal_list(props.get(NAME_SCOPES))
        if scopes is None:
            chains.append(None)
            continue
        # [root '', the enclosing modules' paths..., the FX node's own name]
        start = 1 if scopes[0] == "" else 0
        chains.append(tuple(s for s in scopes[start:-1] if s))
        hierarchy = _literal_list(props.get(CLASS_HIERARCHY)) or []
        if len(hierarchy) == len(scopes):
            for path, cls in zip(scopes[start:-1], hierarchy[start:-1]):
                classes.setdefault(path, cls)
    if all(c is None for c in chains):
        return None, chains, {}
    return "dynamo", chains, classes


def _literal_list(text: str | None) -> list[str] | None:
    if not text:
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None  # hand-edited or from another tool: this node simply has no scope
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        return None
    return value


_REPEATED_CALL = re.compile(r"(.+)_(\d+)")


def _torchscript_chains(nodes: list[NodeProto]) -> tuple[str | None, list[Chain | None]]:
    raw = [tuple(node.name.split("/")[1:-1]) if node.name.startswith("/") else None for node in nodes]
    if not any(raw):
        return None, [None] * len(nodes)
    siblings = {(segments[:i], segments[i]) for segments in raw if segments for i in range(len(segments))}

    def full_paths(segments: tuple[str, ...]) -> Chain:
        chain: list[str] = []
        for i, segment in enumerate(segments):
            repeated = _REPEATED_CALL.fullmatch(segment)
            if repeated and (segments[:i], repeated.group(1)) in siblings:
                segment = repeated.group(1)  # a later call of the same module
            chain.append(_join(chain[-1] if chain else "", segment))
        return tuple(chain)

    return "torchscript", [full_paths(s) if s is not None else None for s in raw]


def _join(parent: str, segment: str) -> str:
    """Full path of a TorchScript scope segment: 'layer4' + 'layer4.1' -> 'layer4.1', 'layer4.1' + 'conv1' ->
    'layer4.1.conv1'. A segment with numeric parts starts at its nearest non-numeric ancestor, whose name ends
    the parent's path."""
    atoms, parent_atoms = segment.split("."), parent.split(".") if parent else []
    if len(atoms) > 1:
        for overlap in range(min(len(atoms) - 1, len(parent_atoms)), 0, -1):
            if parent_atoms[-overlap:] == atoms[:overlap]:
                return ".".join(parent_atoms + atoms[overlap:])
    return f"{parent}.{segment}" if parent else segment


def _inherit_chains(nodes: list[NodeProto], chains: list[Chain | None]) -> list[Chain]:
    """Every node's chain: nodes the exporter or an optimiser added without a scope sit in the deepest scope
    shared by the nodes that feed them (the root when none does)."""
    by_tensor: dict[str, Chain] = {}
    complete: list[Chain] = []
    for node, known in zip(nodes, chains):
        chain = known
        if chain is None:
            feeding = [by_tensor[name] for name in node.input if name in by_tensor]
            chain = _common_prefix(feeding) if feeding else ()
        complete.append(chain)
        for out in node.output:
            by_tensor[out] = chain
    return complete


def _common_prefix(chains: list[Chain]) -> Chain:
    common = chains[0]
    for chain in chains[1:]:
        size = 0
        while size < min(len(common), len(chain)) and common[size] == chain[size]:
            size += 1
        common = common[:size]
    return common


def _module_outputs(model: ModelProto, nodes: list[NodeProto], chains: list[Chain]) -> dict[str, str]:
    """Per module, the last float tensor made inside it that a node outside it (or the graph's output) reads."""
    readers: dict[str, list[Chain]] = {}
    for node, chain in zip(nodes, chains):
        for name in node.input:
            readers.setdefault(name, []).append(chain)
    graph_outputs = {o.name for o in model.graph.output}
    types = elem_types(model.graph)
    outputs: dict[str, str] = {}
    for node, chain in zip(nodes, chains):
        for out in node.output:
            if not out or types.get(out, TensorProto.FLOAT) not in FLOAT_TYPES:
                continue  # shapes and indices leave modules too, but are never their output
            for path in chain:
                if out in graph_outputs or any(path not in reader for reader in readers.get(out, [])):
                    outputs[path] = out
    return outputs


# -- parsing a user's spelling -------------------------------------------------------------------------------

_STEP = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_]*|\d+)|\[\s*(-?\d+)\s*\]")


def _steps(path: str, modules: ModuleMap) -> list[str | int]:
    """'model.layer4[-1].conv1' -> ['layer4', -1, 'conv1']: names, and indices into numbered children."""
    text = path.strip()
    steps: list[str | int] = []
    position = 0
    while position < len(text):
        match = _STEP.match(text, position) if not text.startswith(".") else None
        if match is None:
            raise LayerError(f"cannot read '{path}' as a module path (expected names and indices such as "
                             f"'layer4.1' or 'layer4[-1]'){_close_paths(path, modules)}")
        steps.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        position = match.end()
    return steps


def _walk(modules: ModuleMap, steps: list[str | int], spelled: str) -> str:
    current = ""
    for step in steps:
        if isinstance(step, int):
            numbered = sorted((p for p in modules.children(current) if p.rsplit(".", 1)[-1].isdigit()),
                              key=lambda p: int(p.rsplit(".", 1)[-1]))
            if not numbered:
                raise LayerError(f"'{spelled}': module '{current}' has no numbered children to index with [{step}]"
                                 f"{_close_paths(spelled, modules)}")
            if not -len(numbered) <= step < len(numbered):
                raise LayerError(f"'{spelled}': index [{step}] is out of range, '{current}' has {len(numbered)} "
                                 f"numbered children in the graph ({numbered[0]} .. {numbered[-1]})")
            current = numbered[step]
        else:
            current = f"{current}.{step}" if current else step
    if current not in modules.outputs:
        parent = current.rsplit(".", 1)[0] if "." in current else ""
        fused = (f" ('{parent}' is there: a module the exporter fused away, such as a Conv folded into the "
                 "BatchNorm after it, has no tensor of its own)") if parent in modules.outputs else ""
        raise LayerError(f"no module '{spelled}' in the model{fused}{_close_paths(current, modules)}")
    return current


def _close_paths(path: str, modules: ModuleMap) -> str:
    close = difflib.get_close_matches(path, modules.paths, n=5, cutoff=0.5)
    if not close:
        close = [p for p in modules.paths if "." not in p][:8]
    return f"; closest module paths: {', '.join(close)}" if close else ""


def _tensor_names(model: ModelProto) -> set[str]:
    return {i.name for i in model.graph.input} | {o for n in model.graph.node for o in n.output if o}


def _close_tensors(model: ModelProto, name: str, otherwise: str = "") -> str:
    close = difflib.get_close_matches(name, sorted(_tensor_names(model)), n=3, cutoff=0.5)
    return f"; closest tensor names: {', '.join(close)}" if close else otherwise
