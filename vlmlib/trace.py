"""The trace primitive: record, and optionally edit, named sites during a forward pass.

    with Trace(lm, ["resid.3", "attn.3"]) as tr:
        lm.model(**inputs)
    tr["resid.3"]            # (batch, seq, hidden), as it left decoder layer 3

A site is "<kind>.<layer>" (kinds in `vlmlib.families`); the family's site table says which module
that is. `edit(site, value)` returns the value that flows on; it sees and returns plain tensors:
tuple outputs are split and rebuilt here, in one place. Hooks are removed on exit, also after an
exception. With `stop=True` the forward pass ends as soon as every site has been seen (features
of early layers without paying for the rest of the model); the trace swallows that stop.

`read(site, value)` is called with each site's value as the pass reaches it, instead of keeping the
value: a pass that reduces what it reads (the observation engine) holds one layer's tensors at a
time, whatever the depth. Sites arrive in forward order; within a layer, sublayer sites before the
layer's output.

Besides the family's kinds, two input kinds are hooked before a block runs: `embed.l` is the input of
decoder layer l (H^(0) for l = 0) and `vision_embed.l` the input of vision-tower layer l (the patch
embeddings for l = 0).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

Edit = Callable[[str, torch.Tensor], torch.Tensor]
Read = Callable[[str, torch.Tensor], None]

# Kinds read from a block's input (a pre-hook), not its output.
INPUT_KINDS = ("embed", "vision_embed")
# vision_embed is the trace's own kind: the family's table knows its block as that of "vision".
_BLOCK_KIND = {"vision_embed": "vision"}


def site(kind: str, layer: int = 0) -> str:
    return f"{kind}.{layer}"


def parse_site(name: str) -> tuple[str, int]:
    kind, _, layer = name.partition(".")
    if not layer.lstrip("-").isdigit():
        raise ValueError(f"site {name!r} should look like 'resid.3' (kind.layer)")
    return kind, int(layer)


def _site_module(lm, name: str) -> torch.nn.Module:
    """The module whose output (or, for an input kind, whose input) a site is."""
    kind, layer = parse_site(name)
    return lm.family.site_module(lm.model, _BLOCK_KIND.get(kind, kind), layer)


class StopForward(Exception):
    """Raised inside the model to end a forward pass early; caught by `Trace`."""


def _split(output):
    """(tensor, rebuild): the tensor a site carries, and how to put an edited one back."""
    if isinstance(output, torch.Tensor):
        return output, lambda t: t
    if isinstance(output, tuple):
        return output[0], lambda t: (t, *output[1:])
    raise TypeError(f"cannot trace a module output of type {type(output).__name__}")


class Trace:
    def __init__(
        self,
        lm,
        sites: Iterable[str],
        edit: Edit | None = None,
        stop: bool = False,
        clone: bool = True,
        read: Read | None = None,
    ):
        """`lm` is a `LoadedModel` (anything with `.model` and `.family`). With `read`, values go to it
        and are not kept (`tr[site]` then has nothing)."""
        self.lm = lm
        self.sites = list(dict.fromkeys(sites))
        self.edit = edit
        self.stop = stop
        self.clone = clone
        self.read = read
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []
        self._seen: set[str] = set()
        # Resolve every site before any hook is added: a bad site fails here, not mid-forward.
        self._modules = {name: _site_module(lm, name) for name in self.sites}
        if edit is not None and any(parse_site(s)[0] == "attn_weights" for s in self.sites):
            raise ValueError(
                "attention weights can be recorded but not edited (they are computed inside attention)"
            )

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.outputs:
            if self.read is not None:
                raise KeyError(
                    f"site {name!r} was given to `read`, not kept: a trace with `read` keeps no values"
                )
            raise KeyError(f"site {name!r} was not reached in the traced forward pass (traced: {self.sites})")
        return self.outputs[name]

    def __enter__(self):
        try:
            for name, module in self._modules.items():
                kind, _ = parse_site(name)
                if kind in INPUT_KINDS:
                    self._handles.append(
                        module.register_forward_pre_hook(self._pre_hook(name), with_kwargs=True)
                    )
                else:
                    self._handles.append(module.register_forward_hook(self._hook(name, kind)))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return exc_type is StopForward  # swallow only our own early stop

    def close(self):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # ------------------------------------------------------------ hooks

    def _record(self, name: str, value: torch.Tensor):
        if self.read is not None:
            self.read(name, value)
        else:
            self.outputs[name] = value.detach().clone() if self.clone else value.detach()
        self._seen.add(name)
        if self.stop and len(self._seen) == len(self.sites):
            raise StopForward

    def _hook(self, name: str, kind: str):
        def hook(module, args, output):
            if kind == "attn_weights":
                weights = output[1]
                if weights is None:
                    raise RuntimeError(
                        "attention weights were not computed: load the model with "
                        "attn_implementation='eager' (sdpa and flash attention return none)"
                    )
                self._record(name, weights)
                return None
            value, rebuild = _split(output)
            if self.edit is not None:
                value = self.edit(name, value)
                output = rebuild(value)
            self._record(name, value)
            return output if self.edit is not None else None

        return hook

    def _pre_hook(self, name: str):
        def hook(module, args, kwargs):
            positional = len(args) > 0
            value = args[0] if positional else kwargs["hidden_states"]
            if self.edit is not None:
                value = self.edit(name, value)
            self._record(name, value)
            if self.edit is None:
                return None
            if positional:
                return (value, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": value}

        return hook
