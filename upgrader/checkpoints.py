"""Checkpoint overlays on disk: how they are named and how a domain's checkpoints are read from
its backing chains. Shared by the libvirt adapter and the fake so that both lay disks out alike.

Each disk's checkpoint NAME is an overlay DOMAIN.TARGET.ckpt-NAME.qcow2 created next to the image
it covers; that image is the checkpoint's frozen one. A revert puts a new empty overlay over the
same frozen image, named DOMAIN.TARGET.ckpt-NAME.rN.qcow2 (N = 1, 2, ...: it needs a name of its
own, the one it replaces is deleted only after the domain has switched to it). Names are
deterministic, so a caller killed halfway can find what it made, and a file of the pattern that
no domain and no image uses is a leftover that may go.
"""

from __future__ import annotations

import os
import re
from typing import Callable

from upgrader.errors import InputError, UnsafeOperation
from upgrader.ports import Checkpoint

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+@=\[\]-]{0,63}\Z")


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise InputError(f"bad checkpoint name {name!r}",
                         hint="1-64 characters: letters, digits and _ + @ = [ ] - (no dots, slashes or spaces), "
                              "a letter or digit first")
    return name


def overlay_path(directory: str, domain: str, target: str, name: str, generation: int = 0) -> str:
    suffix = f".r{generation}" if generation else ""
    return os.path.join(directory, f"{domain}.{target}.ckpt-{check_name(name)}{suffix}.qcow2")


def parse(path: str, domain: str) -> tuple[str, str, int] | None:
    """(target, checkpoint name, generation) if `path` is one of `domain`'s checkpoint overlays."""
    found = re.fullmatch(re.escape(domain) + r"\.([a-z][a-z0-9]*)\.ckpt-([^./]+?)(?:\.r([1-9][0-9]*))?\.qcow2",
                         os.path.basename(path))
    if found is None or not NAME.match(found.group(2)):
        return None
    return found.group(1), found.group(2), int(found.group(3) or 0)


def in_chains(domain: str, chains: dict[str, list[str]], size: Callable[[str], int]) -> list[Checkpoint]:
    """The checkpoints in `chains` (disk target -> images, active first), oldest first: a name
    counts when every disk has its overlay above some image. `bytes` adds up the sizes of the
    images above the frozen ones."""
    found: dict[str, dict[str, int]] = {}  # name -> target -> index of its overlay in the chain
    order: list[str] = []
    for target, chain in chains.items():
        for index in range(len(chain) - 2, -1, -1):  # oldest first; an overlay needs an image below
            parsed = parse(chain[index], domain)
            if parsed is not None and parsed[0] == target:
                if parsed[1] not in found:
                    order.append(parsed[1])
                found.setdefault(parsed[1], {})[target] = index
    sizes: dict[str, int] = {}

    def cached(path: str) -> int:
        if path not in sizes:
            sizes[path] = size(path)
        return sizes[path]

    result = []
    for name in order:
        where = found[name]
        if set(where) != set(chains):
            continue  # not on every disk: not a checkpoint of the domain
        result.append(Checkpoint(
            name=name,
            disks={t: chains[t][i + 1] for t, i in where.items()},
            bytes=sum(cached(p) for t, i in where.items() for p in chains[t][: i + 1]),
        ))
    return result


def above(domain: str, chain: list[str], frozen: str) -> list[str]:
    """The images above `frozen` in `chain`, refusing if one of them is not a checkpoint overlay
    of `domain` (something else put it there: reverting or merging would lose it)."""
    images = chain[: chain.index(frozen)]
    foreign = [p for p in images if parse(p, domain) is None]
    if foreign:
        raise UnsafeOperation(f"{domain}: {', '.join(foreign)} is above checkpoint image {frozen} but is not a checkpoint "
                              "overlay; refusing to drop or merge it")
    return images


def lowest(domain: str, chain: list[str]) -> int | None:
    """Index of the oldest checkpoint overlay in `chain` (its image below is the one clone
    made), or None if the chain has none."""
    indexes = [i for i, p in enumerate(chain[:-1]) if parse(p, domain) is not None]
    return max(indexes) if indexes else None
